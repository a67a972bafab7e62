"""The training loop shared by fine-tuning and distillation, and ``fine_tune``.

One epoch: ``model.train()`` (which zeroes every BConv-Cell state, paper §3.2) → P×K or shuffled
batches → ``forward_reid`` → loss → step; then the scheduler steps, the query/gallery splits are
evaluated every ``eval_every`` epochs (eval mode: zero state), and rank 0 writes ``last/`` (and
``best/`` when the training set's mAP improved), ``metrics.jsonl`` and ``curves.png``.
Everything a resumed run needs is in ``last/train_state.pt``: the epoch, optimizer, scheduler,
gradient scaler, every rank's RNG states and the metric history. The samplers are deterministic per
seed and epoch, so a resumed run replays the interrupted epoch exactly.
"""
import json
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import timm
import torch
import torch.distributed as dist
import torch.nn as nn
from tqdm import tqdm

from ptl_timm.hub import DATASET_METADATA_KEY
from ptl_timm.layers import ddp_ignore_latent_states, restore_latent_states, snapshot_latent_states
from ptl_timm.losses import ReIDLoss
from ptl_timm.models.ptl_net import create_ptl
from ptl_timm.models.reid_output import ReIDOutput
from ptl_timm.utils import atomic_write
from .checkpoint import (
    CheckpointError, copy_weights, load_checkpoint_weights, load_train_state, read_checkpoint_info, recover_folder, rng_state, save_checkpoint,
    set_rng_state)
from .config import TrainConfig, config_to_dict
from .data import TrainData, build_train_data, load_dataset, spec_label
from .distributed import DistContext, setup_distributed, sync_buffers
from .evaluate import evaluate_split
from .plots import plot_curves

__all__ = ['ReIDTrainModule', 'TrainSession', 'build_model', 'run_training', 'fine_tune', 'DATASET_METADATA_KEY']

LossStep = Callable[[nn.Module, torch.Tensor, torch.Tensor], Tuple[torch.Tensor, Dict[str, torch.Tensor]]]
_GENERIC_MODELS = {'ptl_net': True, 'reid_net': False}


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
        args = dict(cfg.model_args)
        return create_ptl(args.pop('backbone'), pretrained=True, ptl=_GENERIC_MODELS[cfg.model],
                          num_classes=num_classes, **args)
    return timm.create_model(cfg.model, pretrained=cfg.pretrained, num_classes=num_classes, **cfg.model_args)


def _lr_factor(cfg: TrainConfig) -> Callable[[int], float]:
    """Linear warm-up, then ×gamma every ``lr_step`` epochs (or at each of ``lr_milestones``)."""
    def factor(epoch: int) -> float:
        if epoch < cfg.warmup_epochs:
            return (epoch + 1) / (cfg.warmup_epochs + 1)
        decays = (sum(epoch >= m for m in cfg.lr_milestones) if cfg.lr_milestones
                  else epoch // max(1, cfg.lr_step))
        return cfg.lr_gamma ** decays
    return factor


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
    seed = cfg.seed + ctx.rank  # each rank augments differently
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
    adapter: Optional[nn.Module] = None  # extra trainable module (distillation)


def prepare_session(cfg: TrainConfig, ctx: DistContext, model_fn: Callable[[int, str], nn.Module]) -> TrainSession:
    """Validate everything that can be wrong (paths, splits, checkpoints) before anything is written."""
    output = Path(cfg.output)
    last = recover_folder(output / 'last')
    if not cfg.resume and not cfg.overwrite and last.exists():
        raise CheckpointError(
            f'{output} already holds the checkpoints of a run ({last}); pass --resume to continue it, '
            f'--overwrite to replace it, or choose another output')
    if cfg.resume and not last.exists():
        raise FileNotFoundError(f'nothing to resume: {last} does not exist (was the run started with output={output}?)')
    data = build_train_data(cfg, ctx)
    label = spec_label(cfg.dataset)
    eval_sets = {label: data.dataset}
    for spec in cfg.test_datasets:
        eval_sets.setdefault(spec_label(spec), load_dataset(spec, cfg.data_root, cfg.dataset_args))
    model = model_fn(data.num_classes, label)
    return TrainSession(cfg, ctx, model, data, eval_sets)


def _should_evaluate(cfg: TrainConfig, epoch: int) -> bool:
    done = epoch + 1
    return done == cfg.epochs or (cfg.eval_every > 0 and done % cfg.eval_every == 0)


def run_training(session: TrainSession, loss_step: LossStep) -> Dict[str, Any]:
    """Train ``session.model`` for ``cfg.epochs`` epochs (resuming from ``output/last`` if asked).

    Returns the output folder, the metric history, and the best and last evaluation results.
    ``deterministic`` switches torch to deterministic algorithms for the run only.
    """
    previous = torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark
    if session.cfg.deterministic:
        os.environ.setdefault('CUBLAS_WORKSPACE_CONFIG', ':4096:8')
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    try:
        return _train_epochs(session, loss_step)
    finally:
        torch.use_deterministic_algorithms(previous[0])
        torch.backends.cudnn.benchmark = previous[1]


def _train_epochs(session: TrainSession, loss_step: LossStep) -> Dict[str, Any]:
    cfg, ctx, model = session.cfg, session.ctx, session.model
    output = Path(cfg.output)
    model.to(ctx.device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    module = ReIDTrainModule(model, session.adapter).to(ctx.device)
    optimizer = _optimizer(cfg, _param_groups(cfg, module))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_factor(cfg))
    amp_dtype = torch.float16 if ctx.device.type == 'cuda' else torch.bfloat16
    scaler = torch.amp.GradScaler(ctx.device.type, enabled=cfg.amp and amp_dtype == torch.float16)
    _seed_everything(cfg, ctx)

    start_epoch, history, best = 0, [], None
    if cfg.resume:
        state = load_train_state(output / 'last')
        if len(state['rng']) != ctx.world_size:
            raise CheckpointError(
                f'{output / "last"} was written by a run of {len(state["rng"])} process(es); resume it with the same '
                f'number (this run has {ctx.world_size}) so that every rank continues its own random streams')
        load_checkpoint_weights(model, output / 'last')
        if session.adapter is not None:
            session.adapter.load_state_dict(state['adapter'])
        optimizer.load_state_dict(state['optimizer'])
        scheduler.load_state_dict(state['scheduler'])
        scaler.load_state_dict(state['scaler'])
        set_rng_state(state['rng'][ctx.rank])
        start_epoch, history, best = state['epoch'], state['history'], state['best']

    train_module = module
    if ctx.distributed:
        device_ids = [ctx.device.index] if ctx.device.type == 'cuda' else None
        train_module = nn.parallel.DistributedDataParallel(module, device_ids=device_ids)
    primary = next(iter(session.eval_sets))
    metadata = {DATASET_METADATA_KEY: primary}

    kept: Optional[Dict[str, torch.Tensor]] = None  # state_reset='never': the states at the end of the last epoch
    for epoch in range(start_epoch, cfg.epochs):
        started = time.time()
        session.data.sampler.set_epoch(epoch)
        train_module.train()  # zeroes every latent state: PTL resets at each epoch start
        if kept is not None:
            restore_latent_states(model, kept)
        totals: Dict[str, float] = {}
        steps = len(session.data.loader)
        if cfg.max_steps_per_epoch:
            steps = min(steps, cfg.max_steps_per_epoch)
        bar = tqdm(total=steps, desc=f'epoch {epoch + 1}/{cfg.epochs}', disable=not (cfg.progress and ctx.is_main),
                   leave=False, dynamic_ncols=True)
        for step, (images, pids, _, _) in enumerate(session.data.loader):
            if step >= steps:
                break
            images = images.to(ctx.device, non_blocking=True)
            if cfg.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            pids = pids.to(ctx.device, non_blocking=True)
            with torch.autocast(ctx.device.type, dtype=amp_dtype, enabled=cfg.amp):
                loss, parts = loss_step(train_module, images, pids)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            for name, value in {'loss': loss.detach(), **parts}.items():
                totals[name] = totals.get(name, 0.0) + float(value)
            bar.set_postfix(loss=f'{totals["loss"] / (step + 1):.4f}')
            bar.update()
        bar.close()
        record = {'epoch': epoch + 1, 'lr': optimizer.param_groups[0]['lr'],
                  **{name: value / max(1, steps) for name, value in totals.items()}}
        states = snapshot_latent_states(model)  # after the last batch, before evaluation's train()/eval() switches
        if cfg.state_reset == 'never':
            kept = states
        scheduler.step()
        sync_buffers(model, ctx)
        if _should_evaluate(cfg, epoch):
            record['eval'] = {name: evaluate_split(model, dataset, cfg, ctx)
                              for name, dataset in session.eval_sets.items()}
        record['time_s'] = round(time.time() - started, 3)
        history.append(record)
        improved = 'eval' in record and (best is None or record['eval'][primary]['mAP'] > best['eval'][primary]['mAP'])
        if improved:
            best = record
        rngs = _gather_objects(rng_state(), ctx)
        if ctx.is_main:
            _write_epoch(output, model, session.adapter, optimizer, scheduler, scaler, rngs, cfg, epoch + 1,
                         history, best, improved, metadata, states)
            _log(record)
        ctx.barrier()
    return dict(output=str(output), history=history, best=best,
                last=next((r for r in reversed(history) if 'eval' in r), None))


def _write_epoch(output, model, adapter, optimizer, scheduler, scaler, rngs, cfg, epoch, history, best, improved,
                 metadata, latent_states) -> None:
    """Rank 0's end of epoch: ``last/`` (and ``best/``), metrics.jsonl, curves.png, all atomically."""
    train_state = dict(
        latent_states=latent_states,  # BConv-Cell states after the epoch's last batch (warm-state evaluation)
        epoch=epoch, optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
        scaler=scaler.state_dict(), rng=rngs, history=history, best=best, config=config_to_dict(cfg),
        adapter=adapter.state_dict() if adapter is not None else {})
    save_checkpoint(output / 'last', model, train_state, metadata=metadata)
    if improved:
        copy_weights(output / 'last', output / 'best')
    with atomic_write(output / 'metrics.jsonl', 'w') as f:
        for record in history:
            f.write(json.dumps(record) + '\n')
    plot_curves(history, output / 'curves.png')


def _log(record: Dict[str, Any]) -> None:
    text = f'epoch {record["epoch"]}: loss {record["loss"]:.4f} lr {record["lr"]:.2e} ({record["time_s"]:.1f}s)'
    for name, metrics in record.get('eval', {}).items():
        text += f' | {name}: mAP {metrics["mAP"]:.2f} Rank-1 {metrics["rank1"]:.2f}'
    tqdm.write(text)


def fine_tune(cfg: TrainConfig) -> Dict[str, Any]:
    """Fine-tune ``cfg.model`` on ``cfg.dataset`` with ``ReIDLoss`` (CE, plus triplet for MGN).

    Works in one process or under torchrun (DDP). Returns ``run_training``'s summary.
    """
    ctx = setup_distributed(cfg.device)
    try:
        session = prepare_session(cfg, ctx, lambda num_classes, label: build_model(cfg, num_classes, label))
        criterion = ReIDLoss(cfg.ce_weight, cfg.triplet_weight, cfg.triplet_margin, cfg.label_smoothing)

        def loss_step(module: nn.Module, images: torch.Tensor, pids: torch.Tensor):
            return criterion(module(images), pids)

        return run_training(session, loss_step)
    finally:
        ctx.close()
