"""The training loop shared by fine-tuning and distillation, and ``fine_tune``.

A run (``run_training``): lock the output folder, make the start state (a resume loads ``last/``),
save the resolved ``config.yaml``, then ``_epoch_loop``. One epoch (``_train_one_epoch``):
``model.train()`` (which zeroes every BConv-Cell state, paper §3.2) → P×K or shuffled batches →
``forward_reid`` → loss → step; the scheduler steps; rank 0 saves ``last/`` (``_save_epoch``) before
the query/gallery splits are evaluated every ``eval_every`` epochs (``_evaluate_epoch``: eval mode,
zero state), so a failed evaluation never loses the epoch; ``best/`` follows the training set's mAP
(``_update_best``).
Everything a resumed run needs is in ``last/train_state.pt`` (``TrainState.to_dict``): the folder it
was started in (its config's relative paths mean files there), the epoch, optimizer, scheduler,
gradient scaler, every rank's RNG states, the metric history and the BConv-Cell states after the
epoch's last batch (``latent_states``, name → tensor: what ``state_reset='never'`` continues from, and
the warm state for evaluation). The samplers are
deterministic per seed and epoch, so a resumed run replays the interrupted epoch exactly.
"""
import contextlib
import json
import logging
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import numpy as np
import timm
import torch
import torch.distributed as dist
import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.utils import ModelEmaV3
from tqdm import tqdm

from ptl_timm.data.specs import load_dataset, spec_label
from ptl_timm.hub import DATASET_METADATA_KEY, set_preprocessing
from ptl_timm.layers import ddp_ignore_latent_states, restore_latent_states, snapshot_latent_states
from ptl_timm.eval.protocol import DESCRIPTIONS
from ptl_timm.losses import CenterLoss, ReIDLoss
from ptl_timm.models.ptl_net import create_ptl
from ptl_timm.models.reid_output import ReIDOutput
from ptl_timm.utils import atomic_write, readable_folder, recover_folder, require_free_space
from ptl_timm.utils.plots import plot_curves
from .checkpoint import (
    CheckpointError, copy_weights, load_checkpoint_weights, load_train_state, read_checkpoint_info, rng_state,
    save_checkpoint, set_rng_state, write_train_state)
from .config import TrainConfig, check_config, config_to_dict
from .data import TrainData, build_train_data
from .distributed import DistContext, setup_distributed, sync_buffers
from .evaluate import check_evaluable, evaluate_split
from .run_folder import check_started_here, remove_outputs, run_config, save_run_config
from .run_lock import run_lock
from .schedule import lr_factor
from .tensorboard_log import TENSORBOARD_DIR, TensorBoardLog, require_tensorboard

__all__ = [
    'ReIDTrainModule', 'TrainSession', 'TrainState', 'build_model', 'check_extras', 'prepare_session', 'run_training',
    'fine_tune']

_logger = logging.getLogger(__name__)
_CUBLAS_WORKSPACE = 'CUBLAS_WORKSPACE_CONFIG'  # cuBLAS needs it set for deterministic algorithms

LossStep = Callable[[nn.Module, torch.Tensor, torch.Tensor], Tuple[torch.Tensor, Dict[str, torch.Tensor]]]
_GENERIC_MODELS = {'ptl_net': True, 'reid_net': False}
# curves.png is redrawn after an epoch at most this often, and after the last: drawing takes ~0.25 s, a
# quarter of a miniature epoch, and a picture a few seconds old tells the same story
CURVES_EVERY_S = 30.0
# what a run writes into its folder besides config.yaml; ``overwrite`` removes an earlier run's in this order
RUN_OUTPUTS = ('best', 'metrics.jsonl', 'curves.png', TENSORBOARD_DIR, 'last')


class ReIDTrainModule(nn.Module):
    """What DDP wraps: ``forward`` is the model's ``forward_reid``, and an optional adapter maps the
    embedding (distillation with differing widths). Its latent states stay out of DDP's broadcast."""

    def __init__(self, model: nn.Module, adapter: Optional[nn.Module] = None):
        super().__init__()
        self.model = model
        self.adapter = adapter
        ddp_ignore_latent_states(self)

    def forward(self, x: torch.Tensor) -> ReIDOutput:
        out = self.model.forward_reid(x)
        if self.adapter is not None:
            out = out._replace(embedding=self.adapter(out.embedding))
        return out


def _classifier_names(model: nn.Module) -> Tuple[str, ...]:
    names = model.pretrained_cfg.get('classifier') or ()
    return (names,) if isinstance(names, str) else tuple(names)


def build_model(cfg: TrainConfig, num_classes: int, dataset_label: str) -> nn.Module:
    """The model to fine-tune: from ``init_checkpoint`` (a ReID checkpoint; the classifier is
    re-initialised for the new identities, see ``reset_classifier``) or from the backbone's
    ImageNet weights (``pretrained``). Seeded, so every rank starts from the same weights."""
    torch.manual_seed(cfg.seed)
    if cfg.init_checkpoint:
        model = timm.create_model(cfg.model, pretrained=False, num_classes=num_classes, **cfg.model_args)
        info = read_checkpoint_info(cfg.init_checkpoint)
        same_task = (info['num_classes'] == num_classes
                     and info['metadata'].get(DATASET_METADATA_KEY) == dataset_label)
        reset = cfg.reset_classifier == 'yes' or (cfg.reset_classifier == 'auto' and not same_task)
        load_checkpoint_weights(model, cfg.init_checkpoint, skip=_classifier_names(model) if reset else ())
        return model
    if cfg.pretrained and cfg.model in _GENERIC_MODELS:
        return create_ptl(pretrained=True, ptl=_GENERIC_MODELS[cfg.model], num_classes=num_classes, **cfg.model_args)
    return timm.create_model(cfg.model, pretrained=cfg.pretrained, num_classes=num_classes, **cfg.model_args)


def _lr_factor(cfg: TrainConfig) -> Callable[[int], float]:
    """Warm-up from ``warmup_factor``, then step decay or a cosine (``engine.schedule``)."""
    return lr_factor(cfg.lr_schedule, cfg.epochs, cfg.warmup_epochs, cfg.warmup_factor, cfg.lr_step,
                     cfg.lr_milestones, cfg.lr_gamma, cfg.min_lr_factor)


def _param_groups(cfg: TrainConfig, module: nn.Module) -> List[Dict[str, Any]]:
    """Trainable parameters; with ``side_lr_mult != 1`` the PTL side network (every PTL model keeps
    it under ``side``) gets its own group at ``lr × side_lr_mult``. The group layout depends only on
    the config, so a resumed optimizer state always matches."""
    side, rest = [], []
    for name, param in module.named_parameters():
        if param.requires_grad:
            (side if cfg.side_lr_mult != 1.0 and '.side.' in f'.{name}' else rest).append(param)
    groups = [dict(params=rest)]
    if side:
        groups.append(dict(params=side, lr=cfg.lr * cfg.side_lr_mult))
    return groups


def _optimizer(cfg: TrainConfig, params) -> torch.optim.Optimizer:
    if cfg.optimizer == 'sgd':
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                               weight_decay=cfg.weight_decay)
    optim_cls = torch.optim.Adam if cfg.optimizer == 'adam' else torch.optim.AdamW
    return optim_cls(params, lr=cfg.lr, weight_decay=cfg.weight_decay, amsgrad=cfg.amsgrad)


def _seed_everything(cfg: TrainConfig, ctx: DistContext) -> None:
    seed = (cfg.seed + ctx.rank) % 2 ** 32  # each rank augments differently
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _gather_objects(obj: Any, ctx: DistContext) -> List[Any]:
    if not ctx.distributed:
        return [obj]
    out: List[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


@dataclass
class TrainSession:
    """A model with its training data and evaluation sets, ready for ``run_training``."""
    cfg: TrainConfig
    ctx: DistContext
    model: nn.Module
    data: TrainData
    eval_sets: Dict[str, Any]  # label → ReIDDataset; the first is the training set's own split
    protocols: Dict[str, str] = field(default_factory=dict)  # label → 'camera' or 'self' (no camera known)
    adapter: Optional[nn.Module] = None  # extra trainable module (distillation)
    center_loss: Optional[CenterLoss] = None  # its centres train with their own optimiser (BoT)
    curves_drawn_at: float = float('-inf')  # time.monotonic() when curves.png was last drawn

    @property
    def output(self) -> Path:
        return Path(self.cfg.output)

    @property
    def primary(self) -> str:
        """The training set's own split: its mAP picks the best epoch."""
        return next(iter(self.eval_sets))


@dataclass
class TrainState:
    """What a run changes as it trains; ``train_state.pt`` is its saved form (``to_dict``)."""
    module: ReIDTrainModule
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    epoch: int = 0  # epochs completed
    history: List[Dict[str, Any]] = field(default_factory=list)  # one record per epoch (metrics.jsonl)
    best: Optional[Dict[str, Any]] = None  # the record of the best evaluated epoch
    latent_states: Dict[str, torch.Tensor] = field(default_factory=dict)  # after the last epoch's last batch
    center_loss: Optional[CenterLoss] = None
    center_optimizer: Optional[torch.optim.Optimizer] = None  # SGD of the centres (BoT)
    ema: Optional[ModelEmaV3] = None  # the weights that are evaluated and saved when ema_decay > 0

    def evaluated_model(self) -> nn.Module:
        """What evaluation measures and ``last/`` / ``best/`` hold: the EMA weights when on, else the model."""
        return self.ema.module if self.ema is not None else self.module.model

    def to_dict(self, cfg: TrainConfig, rngs: List[Dict[str, Any]]) -> Dict[str, Any]:
        center = self.center_loss is not None
        return dict(
            epoch=self.epoch, optimizer=self.optimizer.state_dict(), scheduler=self.scheduler.state_dict(),
            scaler=self.scaler.state_dict(), rng=rngs, history=self.history, best=self.best,
            config=config_to_dict(cfg), working_dir=os.getcwd(), latent_states=self.latent_states,
            adapter=self.module.adapter.state_dict() if self.module.adapter is not None else {},
            # with EMA, last/ holds the EMA weights; the trained ones are kept here to resume from
            model=self.module.model.state_dict() if self.ema is not None else {},
            centers=self.center_loss.state_dict() if center else {},
            center_optimizer=self.center_optimizer.state_dict() if center else {})


def _check_output(cfg: TrainConfig) -> None:
    """An earlier run's checkpoints are replaced only when asked to, and resuming needs one."""
    output = Path(cfg.output)
    last = readable_folder(output / 'last')
    if not cfg.resume and not cfg.overwrite and last.exists():
        raise CheckpointError(
            f'{output} already holds the checkpoints of a run ({last}); pass --resume to continue it, '
            f'--overwrite to replace it, or choose another output')
    if cfg.resume and not last.exists():
        raise CheckpointError(f'nothing to resume: {last} does not exist (the run was stopped before its first '
                              f'epoch ended); start it again without --resume')


def check_extras(cfg: TrainConfig) -> None:
    """The optional packages ``cfg`` asks for are installed: a missing one found before a run writes (or an
    overwritten run is removed), not after its first epoch."""
    if cfg.tensorboard:
        require_tensorboard()


def prepare_session(cfg: TrainConfig, ctx: DistContext, model_fn: Callable[[int, str], nn.Module]) -> TrainSession:
    """Check everything that can be wrong (config, paths, splits, checkpoints) before anything is written;
    the model records the preprocessing it is trained with (``config.json``'s ``pretrained_cfg``)."""
    check_config(cfg)
    _check_output(cfg)
    check_extras(cfg)
    data = build_train_data(cfg, ctx)
    label = spec_label(cfg.dataset, cfg.data_root)
    eval_sets = {label: data.dataset}
    for spec in cfg.test_datasets:
        eval_sets.setdefault(spec_label(spec, cfg.data_root), load_dataset(spec, cfg.data_root, cfg.dataset_args))
    protocols = {name: check_evaluable(dataset, name) for name, dataset in eval_sets.items()}
    for name, protocol in protocols.items():
        if protocol != 'camera' and ctx.is_main:
            _logger.warning('%s has no camera ids, so it is evaluated under the %s', name, DESCRIPTIONS[protocol])
    model = model_fn(data.num_classes, label)
    # what data.loader.build_transforms does at evaluation: bilinear resize to img_size, ImageNet mean/std
    set_preprocessing(model, cfg.img_size, mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD)
    if ctx.is_main:  # a full disk found now, not after the first epoch
        require_free_space(cfg.output, _checkpoint_bytes(cfg, model), 'a checkpoint (weights and optimizer state)')
    return TrainSession(cfg, ctx, model, data, eval_sets, protocols=protocols)


_OPTIMIZER_SLOTS = {'sgd': 1, 'adam': 2, 'adamw': 2}  # state tensors per parameter (SGD: momentum; Adam: two moments)


def _checkpoint_bytes(cfg: TrainConfig, model: nn.Module) -> int:
    """About how large one checkpoint of ``model`` is: its weights, and in ``train_state.pt`` the
    optimizer state (and with EMA the trained weights besides the averaged ones)."""
    weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    slots = 0 if cfg.optimizer == 'sgd' and not cfg.momentum else _OPTIMIZER_SLOTS[cfg.optimizer]
    slots += int(cfg.amsgrad and cfg.optimizer != 'sgd')  # AMSGrad's running maximum
    return weights * (2 if cfg.ema_decay else 1) + params * slots


def _should_evaluate(cfg: TrainConfig, epoch: int) -> bool:
    done = epoch + 1
    return done == cfg.epochs or (cfg.eval_every > 0 and done % cfg.eval_every == 0)


def run_training(session: TrainSession, loss_step: LossStep) -> Dict[str, Any]:
    """Train ``session.model`` for ``cfg.epochs`` epochs (resuming from ``output/last`` if asked),
    holding the run folder's lock; the resolved config is saved there (``config.yaml``) once the start
    state is ready, so a resume that fails to load leaves the run's config as it was.

    Returns the output folder, the metric history, the best and last evaluation results, and whether this
    process is the main one (``main_process``: rank 0, the one that writes and reports).
    """
    cfg = session.cfg
    with _deterministic(cfg.deterministic):
        with run_lock(session.output) if session.ctx.is_main else contextlib.nullcontext():
            if session.ctx.is_main:
                for name in ('last', 'best'):  # the writer finishes a swap its killed predecessor left
                    recover_folder(session.output / name)
                _check_output(cfg)  # again, now that no other run can write here
                if cfg.overwrite and not cfg.resume:
                    _remove_earlier_run(session.output)
            state = _start_state(session)
            if session.ctx.is_main:
                save_run_config(cfg)
            return _epoch_loop(session, state, loss_step)


def _remove_earlier_run(output: Path) -> None:
    """What an overwritten run wrote goes before the new run writes: its best/ or metrics.jsonl must never
    sit beside the new run's last/ (a new run stopped before its first evaluation would leave them).
    last/, the resume point, goes last with config.yaml still the old one: a stop midway leaves the earlier
    run resumable, never a mix of two."""
    remove_outputs(output / name for name in RUN_OUTPUTS)


@contextlib.contextmanager
def _deterministic(enabled: bool) -> Iterator[None]:
    """Deterministic algorithms for the block only: torch's switch, cuDNN benchmarking and
    ``CUBLAS_WORKSPACE_CONFIG`` (process-wide settings) are restored afterwards, also on an exception."""
    previous = torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark
    workspace = os.environ.get(_CUBLAS_WORKSPACE)
    if enabled:
        os.environ.setdefault(_CUBLAS_WORKSPACE, ':4096:8')
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0])
        torch.backends.cudnn.benchmark = previous[1]
        if workspace is None:
            os.environ.pop(_CUBLAS_WORKSPACE, None)


def _start_state(session: TrainSession) -> TrainState:
    """Optimizer, scheduler and gradient scaler of a new run, or of the run being resumed."""
    cfg, ctx, model = session.cfg, session.ctx, session.model
    model.to(ctx.device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    module = ReIDTrainModule(model, session.adapter).to(ctx.device)
    optimizer = _optimizer(cfg, _param_groups(cfg, module))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_factor(cfg))
    scaler = torch.amp.GradScaler(ctx.device.type, enabled=cfg.amp and _amp_dtype(ctx) == torch.float16)
    _seed_everything(cfg, ctx)
    state = TrainState(module, optimizer, scheduler, scaler)
    if session.center_loss is not None:
        state.center_loss = session.center_loss.to(ctx.device)
        state.center_optimizer = state.center_loss.center_optimizer(cfg.center_lr)
    if cfg.ema_decay:
        state.ema = ModelEmaV3(model, decay=cfg.ema_decay)
    if cfg.resume:
        _resume(state, session)
    return state


def _resume(state: TrainState, session: TrainSession) -> None:
    last = session.output / 'last'
    saved = load_train_state(last)
    if len(saved['rng']) != session.ctx.world_size:
        raise CheckpointError(
            f'{last} was written by a run of {len(saved["rng"])} process(es); resume it with the same '
            f'number (this run has {session.ctx.world_size}) so that every rank continues its own random streams')
    check_started_here(session.cfg, saved.get('working_dir'))
    load_checkpoint_weights(session.model, last)
    if state.ema is not None:  # last/ holds the EMA weights, train_state the trained ones
        state.ema.module.load_state_dict(session.model.state_dict())
        session.model.load_state_dict(saved['model'])
    if state.center_loss is not None:
        state.center_loss.load_state_dict(saved['centers'])
        state.center_optimizer.load_state_dict(saved['center_optimizer'])
    if state.module.adapter is not None:
        state.module.adapter.load_state_dict(saved['adapter'])
    state.optimizer.load_state_dict(saved['optimizer'])
    state.scheduler.load_state_dict(saved['scheduler'])
    _set_scheduled_lr(state.scheduler)
    state.scaler.load_state_dict(saved['scaler'])
    set_rng_state(saved['rng'][session.ctx.rank])
    state.epoch, state.history, state.best = saved['epoch'], saved['history'], saved['best']
    state.latent_states = saved.get('latent_states', {})


def _set_scheduled_lr(scheduler: torch.optim.lr_scheduler.LambdaLR) -> None:
    """Each group's lr at the resumed epoch under this run's schedule: the loaded optimizer holds the lr the
    saved run's schedule set, another one when the epochs grew (a finished cosine's is 0). The formula of
    ``LambdaLR``'s own step, so a resume with the same epochs continues with the very same lrs."""
    for group, base_lr, factor in zip(scheduler.optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
        group['lr'] = base_lr * factor(scheduler.last_epoch)


def _epoch_loop(session: TrainSession, state: TrainState, loss_step: LossStep) -> Dict[str, Any]:
    """Each epoch is trained, saved, then evaluated (when due), so a failed evaluation keeps the
    epoch, and ``--resume`` evaluates it before going on."""
    cfg, ctx = session.cfg, session.ctx
    train_module: nn.Module = state.module
    if ctx.distributed:
        device_ids = [ctx.device.index] if ctx.device.type == 'cuda' else None
        # a frozen backbone has no gradients for DDP to wait for
        train_module = nn.parallel.DistributedDataParallel(
            state.module, device_ids=device_ids, find_unused_parameters=cfg.freeze_epochs > 0)
    if state.history and 'eval' not in state.history[-1] and _should_evaluate(cfg, state.epoch - 1):
        _evaluate_epoch(session, state)
    board = TensorBoardLog(session.output / TENSORBOARD_DIR) if cfg.tensorboard and ctx.is_main else None
    try:
        for epoch in range(state.epoch, cfg.epochs):
            _train_one_epoch(session, state, train_module, loss_step)
            evaluating = _should_evaluate(cfg, epoch)
            _save_epoch(session, state, plot=not evaluating)  # an evaluated epoch is drawn once, with its mAP
            if evaluating:
                _evaluate_epoch(session, state)
            if ctx.is_main:
                _log(state.history[-1], session.protocols)
            if board is not None:
                board.log(state.history[-1])
            ctx.barrier()
    finally:
        if board is not None:
            board.close()
    return dict(output=str(session.output), history=state.history, best=state.best,
                last=next((r for r in reversed(state.history) if 'eval' in r), None), main_process=ctx.is_main)


def _amp_dtype(ctx: DistContext) -> torch.dtype:
    return torch.float16 if ctx.device.type == 'cuda' else torch.bfloat16


def _train_one_epoch(session: TrainSession, state: TrainState, train_module: nn.Module, loss_step: LossStep) -> None:
    """One pass over the training loader; appends the epoch's record to ``state.history``."""
    cfg, model = session.cfg, session.model
    started = time.time()
    session.data.sampler.set_epoch(state.epoch)
    train_module.train()  # zeroes every latent state: PTL resets at each epoch start
    if cfg.freeze_epochs:
        model.freeze_backbone(state.epoch < cfg.freeze_epochs)
    if cfg.state_reset == 'never' and state.latent_states:
        restore_latent_states(model, state.latent_states)
    lr = state.optimizer.param_groups[0]['lr']
    means = _train_steps(session, state, train_module, loss_step)
    state.latent_states = snapshot_latent_states(model)  # after the last batch, before evaluation's mode switches
    state.scheduler.step()
    sync_buffers(model, session.ctx)
    state.epoch += 1
    state.history.append({'epoch': state.epoch, 'lr': lr, **means, 'time_s': round(time.time() - started, 3)})


def _train_steps(session: TrainSession, state: TrainState, train_module: nn.Module,
                 loss_step: LossStep) -> Dict[str, float]:
    """The optimisation steps of one epoch; returns the mean of each loss term."""
    cfg, ctx = session.cfg, session.ctx
    steps = len(session.data.loader)
    if cfg.max_steps_per_epoch:
        steps = min(steps, cfg.max_steps_per_epoch)
    totals: Dict[str, float] = {}
    bar = tqdm(total=steps, desc=f'epoch {state.epoch + 1}/{cfg.epochs}', disable=not (cfg.progress and ctx.is_main),
               leave=False, dynamic_ncols=True)
    for step, (images, pids, _, _) in zip(range(steps), session.data.loader):
        images = images.to(ctx.device, non_blocking=True)
        if cfg.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        pids = pids.to(ctx.device, non_blocking=True)
        with torch.autocast(ctx.device.type, dtype=_amp_dtype(ctx), enabled=cfg.amp):
            loss, parts = loss_step(train_module, images, pids)
        state.optimizer.zero_grad(set_to_none=True)
        if state.center_loss is not None:
            state.center_optimizer.zero_grad(set_to_none=True)
        state.scaler.scale(loss).backward()
        if cfg.clip_grad:
            state.scaler.unscale_(state.optimizer)
            nn.utils.clip_grad_norm_(state.module.parameters(), cfg.clip_grad)
        state.scaler.step(state.optimizer)
        if state.center_loss is not None:
            _center_step(session, state)
        state.scaler.update()
        if state.ema is not None:
            state.ema.update(session.model)
        for name, value in {'loss': loss.detach(), **parts}.items():
            totals[name] = totals.get(name, 0.0) + float(value)
        bar.set_postfix(loss=f'{totals["loss"] / (step + 1):.4f}')
        bar.update()
    bar.close()
    return {name: value / max(1, steps) for name, value in totals.items()}


def _center_step(session: TrainSession, state: TrainState) -> None:
    """BoT's step of the centres: their own SGD on the unweighted gradient (averaged over the ranks,
    which DDP does not do for the loss's parameters)."""
    centers = state.center_loss.centers
    state.scaler.unscale_(state.center_optimizer)
    if centers.grad is not None and session.ctx.distributed:
        dist.all_reduce(centers.grad)
        centers.grad.div_(session.ctx.world_size)
    state.center_loss.unweight_center_grads(session.cfg.center_weight)
    state.scaler.step(state.center_optimizer)


def _evaluate_epoch(session: TrainSession, state: TrainState) -> None:
    """Evaluate the last trained epoch on every split, update the best epoch, save the results."""
    record = state.history[-1]
    record['eval'] = {name: evaluate_split(state.evaluated_model(), dataset, session.cfg, session.ctx)
                      for name, dataset in session.eval_sets.items()}
    improved = _update_best(state, record, session.primary)
    _save_epoch(session, state, weights=False, improved=improved)


def _update_best(state: TrainState, record: Dict[str, Any], primary: str) -> bool:
    """Whether ``record`` beats the best epoch so far on the training set's own split (mAP)."""
    if state.best is not None and record['eval'][primary]['mAP'] <= state.best['eval'][primary]['mAP']:
        return False
    state.best = record
    return True


def _save_epoch(session: TrainSession, state: TrainState, weights: bool = True, improved: bool = False,
                plot: bool = True) -> None:
    """Rank 0 writes ``last/`` (the weights, or with ``weights=False`` only its ``train_state.pt``),
    ``best/`` when ``improved``, metrics.jsonl and (with ``plot``, when due) curves.png, each atomically."""
    rngs = _gather_objects(rng_state(), session.ctx)  # a collective: every rank takes part
    if not session.ctx.is_main:
        return
    last = session.output / 'last'
    train_state = state.to_dict(session.cfg, rngs)
    if weights:
        save_checkpoint(last, state.evaluated_model(), train_state, metadata={DATASET_METADATA_KEY: session.primary})
    else:
        write_train_state(last, train_state)
    if improved:
        copy_weights(last, session.output / 'best')
    with atomic_write(session.output / 'metrics.jsonl', 'w') as f:
        for record in state.history:
            f.write(json.dumps(record) + '\n')
    if plot and (state.epoch >= session.cfg.epochs or time.monotonic() - session.curves_drawn_at >= CURVES_EVERY_S):
        plot_curves(state.history, session.output / 'curves.png')
        session.curves_drawn_at = time.monotonic()


def _log(record: Dict[str, Any], protocols: Dict[str, str]) -> None:
    """The epoch's line; a split without cameras is marked, as its numbers are not the camera protocol's."""
    text = f'epoch {record["epoch"]}: loss {record["loss"]:.4f} lr {record["lr"]:.2e} ({record["time_s"]:.1f}s)'
    for name, metrics in record.get('eval', {}).items():
        marked = name if protocols.get(name, 'camera') == 'camera' else f'{name} (no-camera protocol)'
        text += f' | {marked}: mAP {metrics["mAP"]:.2f} Rank-1 {metrics["rank1"]:.2f}'
    tqdm.write(text)


def fine_tune(cfg: TrainConfig) -> Dict[str, Any]:
    """Fine-tune ``cfg.model`` on ``cfg.dataset`` with ``ReIDLoss`` (CE, plus triplet for MGN, plus the
    cross-batch memory term with ``xbm_size > 0``).

    Works in one process or under torchrun (DDP). Returns ``run_training``'s summary.
    """
    cfg = run_config(cfg)
    ctx = setup_distributed(cfg.device)
    try:
        session = prepare_session(cfg, ctx, lambda num_classes, label: build_model(cfg, num_classes, label))
        if cfg.center_weight:
            session.center_loss = CenterLoss(session.data.num_classes, session.model.head_hidden_size)
        criterion = ReIDLoss(cfg.ce_weight, cfg.triplet_weight, cfg.triplet_margin, cfg.label_smoothing,
                             xbm_size=cfg.xbm_size, xbm_weight=cfg.xbm_weight, center_loss=session.center_loss,
                             center_weight=cfg.center_weight).to(ctx.device)

        def loss_step(module: nn.Module, images: torch.Tensor, pids: torch.Tensor):
            return criterion(module(images), pids)

        return run_training(session, loss_step)
    finally:
        ctx.close()
