"""Training configuration: one dataclass per task, resolved and checked by one constructor.

Every door (``TrainConfig(...)`` in Python, ``ptl-timm train|distill|transfer``, config files,
transfer steps, the distill section of a transfer) builds a config the same way, so the same
inputs give the same config. Resolution order (later wins): the dataclass defaults (the PTL
paper's recipe, §5.1) → the recipe chosen by ``recipe`` ('auto' picks 'mgn' for MGN models) → the
values given (a config file, then overrides). A resumed run (``resume=True``) starts from the
run's saved ``config.yaml`` instead, and a given value that contradicts it is an error unless it
only changes how the run proceeds (``RESUME_OVERRIDABLE``).

Values are coerced where that is unambiguous (``'5'`` → 5, ``'1e-3'`` → 0.001, lists → tuples)
and refused otherwise; choices and ranges are checked; an unknown key names the closest valid
one. A small validator over the dataclass fields does this rather than a library (pydantic,
OmegaConf): the configs stay plain dataclasses that every caller already uses, no dependency is
added, and each message names the file, transfer step or key the user has to fix.
"""
import dataclasses
import difflib
import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Type, TypeVar, Union, get_args, get_origin

import yaml

from ptl_timm.errors import ConfigError, InputError
from ptl_timm.eval.metrics import METRICS
from ptl_timm.hub import TRAIN_STATE_NAME
from ptl_timm.layers import STATE_MODES
from ptl_timm.models.registry import check_model_args
from ptl_timm.utils import atomic_write, default_workers
from .checkpoint import load_train_state
from .schedule import LR_SCHEDULES

__all__ = [
    'ConfigError', 'TrainConfig', 'DistillConfig', 'TransferConfig', 'RECIPES', 'TASKS', 'CHOICES', 'RANGES',
    'OPTIMIZERS', 'SAMPLERS', 'STATE_RESETS', 'RESET_CLASSIFIER', 'RECIPE_CHOICES', 'RESUME_OVERRIDABLE',
    'CONFIG_FILE_NAME', 'resolve_recipe', 'load_config', 'parse_overrides', 'build_config', 'check_config',
    'config_task', 'task_of', 'config_to_dict', 'config_to_yaml', 'run_config_yaml', 'save_run_config', 'saved_config',
]

_logger = logging.getLogger(__name__)

DatasetSpec = Union[str, Dict[str, Any]]  # a registered name, or {name, root, label, <dataset kwargs>}
DataRoot = Union[str, Dict[str, str]]
DatasetName = Union[DatasetSpec, List[DatasetSpec]]  # a list: the union of the training sets

CONFIG_FILE_NAME = 'config.yaml'  # the resolved config, saved in every run folder
OPTIMIZERS = ('sgd', 'adam', 'adamw')
SAMPLERS = ('random', 'pk')
STATE_RESETS = ('epoch', 'never')
RESET_CLASSIFIER = ('auto', 'yes', 'no')


def _config_class(cls):
    """``@dataclass(kw_only=True)`` whose ``__init__`` resolves and checks its values (``resolve_values``),
    so ``TrainConfig(model='ptl_mgn')`` is the config ``ptl-timm train --model ptl_mgn`` trains with.
    ``dataclasses.replace`` passes every field, so it re-checks values but applies no recipe."""
    cls = dataclass(kw_only=True)(cls)
    cls._init_fields = cls.__init__

    def __init__(self, **values: Any) -> None:
        self._init_fields(**resolve_values(type(self), values))
    __init__.__doc__ = 'Defaults → recipe (or the saved config of a resumed run) → ``values``, checked.'
    cls.__init__ = __init__
    return cls


@_config_class
class TrainConfig:
    """Fine-tuning (``ptl-timm train``). Defaults are the paper's ResNet-50/DenseNet-161 recipe:
    SGD momentum 0.9, lr 0.01 divided by 10 every 10 epochs, 50 epochs, batch 32, 256×128, CE."""
    # model
    model: str = 'ptl_resnet50'
    model_args: Dict[str, Any] = field(default_factory=dict)
    pretrained: bool = True  # ImageNet weights of the backbone (ignored when init_checkpoint is set)
    init_checkpoint: Optional[str] = None  # a ReID checkpoint folder to fine-tune from
    reset_classifier: str = 'auto'  # 'auto': new classifier unless trained on this very dataset; 'yes'/'no'
    # data: a spec, or a list of specs trained as their union (query/gallery of the first)
    dataset: DatasetName = 'market1501'
    data_root: DataRoot = 'data'  # a dataset's folder, or {name: folder}
    dataset_args: Dict[str, Any] = field(default_factory=dict)  # e.g. {variant: labeled} for cuhk03_np
    test_datasets: List[DatasetSpec] = field(default_factory=list)  # evaluated besides the training set's split
    img_size: Tuple[int, int] = (256, 128)
    sampler: str = 'random'  # 'random' or 'pk' (P identities × K images)
    batch_size: int = 32
    num_instances: int = 4  # K of the P×K sampler
    random_erasing: float = 0.0
    augment: str = ''  # a timm augmentation string: 'rand-m9-mstd0.5' (RandAugment), 'augmix-m5-w4-d2', 'original'
    color_jitter: float = 0.0  # brightness, contrast and saturation jitter (0: off)
    num_workers: int = field(default_factory=default_workers)  # data-loader processes: min(4, cores)
    # optimisation
    optimizer: str = 'sgd'  # 'sgd', 'adam', 'adamw'
    lr: float = 0.01
    side_lr_mult: float = 1.0  # lr factor of the PTL side network (cells + fuses), which starts untrained
    momentum: float = 0.9
    nesterov: bool = False
    amsgrad: bool = False
    weight_decay: float = 5e-4
    epochs: int = 50
    lr_step: int = 10  # StepLR period in epochs (used when lr_milestones is empty)
    lr_milestones: List[int] = field(default_factory=list)
    lr_gamma: float = 0.1
    lr_schedule: str = 'step'  # 'step' (lr_step / lr_milestones) or 'cosine' (to lr × min_lr_factor)
    min_lr_factor: float = 0.0  # the cosine's floor, a factor of lr
    warmup_epochs: int = 0
    warmup_factor: float = 0.1  # the warm-up starts at lr × warmup_factor and reaches lr at warmup_epochs
    freeze_epochs: int = 0  # the backbone stays frozen this many epochs: cells, fuses, neck and head train first
    clip_grad: float = 0.0  # max gradient norm (0: no clipping)
    ema_decay: float = 0.0  # evaluate and save an EMA of the weights (timm ModelEmaV3; e.g. 0.9998; 0: off)
    max_steps_per_epoch: Optional[int] = None  # cap for smoke tests
    # 'epoch': BConv-Cell states start at zero every epoch (the paper; what model.train() does);
    # 'never': carried over epochs and evaluations, and over a resume (an ablation)
    state_reset: str = 'epoch'
    # loss (ReIDLoss)
    ce_weight: float = 1.0
    triplet_weight: float = 0.0
    triplet_margin: float = 0.3
    label_smoothing: float = 0.0
    xbm_size: int = 0  # cross-batch memory of embeddings for the triplet term (0: off)
    xbm_weight: float = 1.0
    center_weight: float = 0.0  # centre loss on the metric feature (BoT: 5e-4)
    center_lr: float = 0.5  # SGD lr of the centres (BoT), on their unweighted gradient
    # evaluation
    eval_every: int = 10  # epochs; the last epoch is always evaluated; 0: only the last
    eval_batch_size: int = 128
    eval_flip: bool = False
    eval_metric: str = 'cosine'
    eval_aqe: bool = False  # average query expansion (fast-reid's αQE) before ranking
    aqe_k: int = 10
    aqe_alpha: float = 3.0
    aqe_times: int = 1
    eval_rerank: bool = False  # k-reciprocal re-ranking (`ptl-timm eval --rerank --k1 --k2 --lambda`)
    rerank_k1: int = 20
    rerank_k2: int = 6
    rerank_lambda: float = 0.3
    # run
    output: str = 'output/train'
    seed: int = 0
    deterministic: bool = False
    device: str = 'auto'
    amp: bool = False
    channels_last: bool = False
    resume: bool = False  # continue the run in output from its saved config and last/
    overwrite: bool = False  # replace the checkpoints of an earlier run in output (else an error)
    progress: bool = True
    tensorboard: bool = False  # also log to output/tensorboard (pip install "ptl_timm[tensorboard]")
    recipe: str = 'auto'  # 'auto', 'paper', 'mgn' or 'bot': the defaults under the given values


@_config_class
class DistillConfig(TrainConfig):
    """Student-Teacher Distillation (paper §4, Eq. 4): the student (``model``, a ``reid_*`` network
    starting from ``init_checkpoint``, its own fine-tuned weights) learns
    (1-λ)·CE + λ·L1(student embedding, teacher embedding) from a trained PTL ``teacher`` kept in
    eval mode. When the two embedding widths differ a linear adapter (student → teacher width,
    trained with the student, discarded afterwards) sits in front of the L1 term only."""
    model: str = 'reid_resnet50'
    teacher: str = ''  # checkpoint folder (or hub id) of the trained PTL model
    lam: float = 0.8
    output: str = 'output/distill'


@_config_class
class TransferConfig(TrainConfig):
    """Multi-step transfer (paper §5.7): ``steps`` fine-tuned in order, each from the previous
    step's weights; every step's model is evaluated on every dataset of ``test_datasets``.
    Each step is a mapping of ``TrainConfig`` values (at least ``dataset``) over the values given
    here; ``distill`` (optional) is a mapping of ``DistillConfig`` values run after the last step
    with its model as the teacher. Both are resolved like a config of their own (their model's
    recipe included) and stored as what differs from this config."""
    steps: List[Dict[str, Any]] = field(default_factory=list)
    distill: Optional[Dict[str, Any]] = None
    output: str = 'output/transfer'


TASKS: Dict[str, Type[TrainConfig]] = {'finetune': TrainConfig, 'distill': DistillConfig, 'transfer': TransferConfig}

# Recipes are values under the given ones.
RECIPES: Dict[str, Dict[str, Any]] = {
    # PTL paper §5.1 (ResNet-50 / DenseNet-161): the dataclass defaults
    'paper': {},
    # MGN (Wang et al. 2018) as the PTL paper followed it: 384×128, P=4 × K=4, triplet (margin 1.2)
    # + CE, random erasing 0.5, SGD momentum 0.9, wd 5e-4, lr 0.01 → ×0.1 at epochs 40 and 60, 80 epochs.
    # The released MGN_PTL code used Adam instead (configs/mgn/*_official_code.yaml).
    'mgn': dict(
        img_size=(384, 128), sampler='pk', batch_size=16, num_instances=4, random_erasing=0.5,
        triplet_weight=1.0, triplet_margin=1.2, epochs=80, lr_milestones=[40, 60]),
    # BoT (Luo et al., CVPR-W 2019; auto for bot_* models): Adam 3.5e-4 with wd 5e-4, linear warm-up from
    # 3.5e-5 over 10 epochs, ×0.1 at 40 and 70, 120 epochs, P16×K4 at 256×128, random erasing 0.5, label
    # smoothing 0.1, triplet (margin 0.3) + CE + centre loss 5e-4 (centres: SGD lr 0.5)
    'bot': dict(
        optimizer='adam', lr=3.5e-4, weight_decay=5e-4, warmup_epochs=10, warmup_factor=0.1, lr_milestones=[40, 70],
        epochs=120, sampler='pk', batch_size=64, num_instances=4, img_size=(256, 128), random_erasing=0.5,
        label_smoothing=0.1, triplet_weight=1.0, triplet_margin=0.3, center_weight=5e-4, center_lr=0.5),
}
RECIPE_CHOICES = ('auto', *RECIPES)

# each concept with choices, defined once (metrics and state modes where they live)
CHOICES: Dict[str, Sequence[str]] = dict(
    optimizer=OPTIMIZERS, sampler=SAMPLERS, state_reset=STATE_RESETS, reset_classifier=RESET_CLASSIFIER,
    eval_metric=METRICS, recipe=RECIPE_CHOICES, lr_schedule=LR_SCHEDULES)

_Rule = Tuple[Callable[[Any], bool], str]
_AT_LEAST_0: _Rule = (lambda v: v >= 0, '>= 0')
_AT_LEAST_1: _Rule = (lambda v: v >= 1, '>= 1')
_POSITIVE: _Rule = (lambda v: v > 0, '> 0')
_FRACTION: _Rule = (lambda v: 0 <= v <= 1, 'in [0, 1]')
RANGES: Dict[str, _Rule] = dict(
    batch_size=_AT_LEAST_1, num_instances=_AT_LEAST_1, random_erasing=_FRACTION, num_workers=_AT_LEAST_0,
    lr=_POSITIVE, side_lr_mult=_POSITIVE, momentum=(lambda v: 0 <= v < 1, 'in [0, 1)'), weight_decay=_AT_LEAST_0,
    epochs=_AT_LEAST_1, lr_step=_AT_LEAST_1, lr_gamma=_POSITIVE, warmup_epochs=_AT_LEAST_0,
    max_steps_per_epoch=_AT_LEAST_1, ce_weight=_AT_LEAST_0, triplet_weight=_AT_LEAST_0, triplet_margin=_AT_LEAST_0,
    label_smoothing=(lambda v: 0 <= v < 1, 'in [0, 1)'), xbm_size=_AT_LEAST_0, xbm_weight=_AT_LEAST_0,
    color_jitter=_AT_LEAST_0, min_lr_factor=_FRACTION, warmup_factor=_FRACTION, freeze_epochs=_AT_LEAST_0,
    clip_grad=_AT_LEAST_0, ema_decay=(lambda v: 0 <= v < 1, 'in [0, 1)'), center_weight=_AT_LEAST_0,
    center_lr=_POSITIVE, aqe_k=_AT_LEAST_1, aqe_alpha=_AT_LEAST_0, aqe_times=_AT_LEAST_1, rerank_k1=_AT_LEAST_1,
    rerank_k2=_AT_LEAST_1, rerank_lambda=_FRACTION,
    eval_every=_AT_LEAST_0, eval_batch_size=_AT_LEAST_1, lam=_FRACTION,
    img_size=(lambda v: min(v) >= 1, 'two positive sizes'),
    lr_milestones=(lambda v: all(m >= 1 for m in v) and list(v) == sorted(set(v)), 'increasing epochs >= 1'),
)

# Keys a resumed run may change, because they change how the run proceeds, not what it trains
# (epochs only upwards). Any other given value must match the saved config.
RESUME_OVERRIDABLE = ('epochs', 'eval_every', 'eval_batch_size', 'progress', 'num_workers', 'device')
_RUN_CONTROL = ('resume', 'overwrite')  # how this invocation treats the folder: never compared
# set by the transfer runner for each step / the distill section
_TRANSFER_OWNED = ('output', 'resume', 'init_checkpoint', 'test_datasets', 'teacher', 'steps', 'distill')


class _BadValue(Exception):
    """A value that does not fit its field's type (the caller's message names the type)."""


_NAMES = {bool: ('true or false', 'booleans'), int: ('an integer', 'integers'), float: ('a number', 'numbers'),
          str: ('a string', 'strings')}


def _describe(kind: Any, plural: bool = False) -> str:
    origin, args = get_origin(kind), get_args(kind)
    if origin is Union:
        return ' or '.join(_describe(a, plural) for a in args if a is not type(None)) + (
            ' or null' if type(None) in args else '')
    if origin in (tuple, list):
        what = 'lists of' if plural else 'a list of'
        return f'{what} {len(args) if origin is tuple else ""} {_describe(args[0], plural=True)}'.replace('  ', ' ')
    if origin is dict:
        return 'mappings' if plural else 'a mapping'
    return _NAMES[kind][plural] if kind in _NAMES else str(kind)


def _coerce_scalar(value: Any, kind: type) -> Any:
    """bool from true/false only; str from text or a path; numbers from numbers or numeric text, an
    integer only from a whole number (no bool is a number)."""
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ('true', 'false'):
            return value.lower() == 'true'
    elif kind is str:
        if isinstance(value, (str, os.PathLike)):
            return os.fspath(value)
    elif not isinstance(value, bool):
        number = value
        if isinstance(value, str):
            try:
                number = float(value.strip())
            except ValueError:
                raise _BadValue from None
        if isinstance(number, (int, float)) and math.isfinite(number):
            if kind is float:
                return float(number)
            if float(number).is_integer():
                return int(number)
    raise _BadValue


def _coerce(value: Any, kind: Any) -> Any:
    """``value`` as ``kind`` (a field's annotation) where that is unambiguous, else ``_BadValue``."""
    origin, args = get_origin(kind), get_args(kind)
    if kind is Any:
        return value
    if origin is Union:
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is not type(None):
                try:
                    return _coerce(value, arg)
                except _BadValue:
                    pass
        raise _BadValue
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)) or (origin is tuple and len(value) != len(args)):
            raise _BadValue
        items = [_coerce(v, args[i] if origin is tuple else args[0]) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise _BadValue
        return {_coerce(k, args[0]): _coerce(v, args[1]) for k, v in value.items()}
    return _coerce_scalar(value, kind)


def _field_types(cls: Type['TrainConfig']) -> Dict[str, Any]:
    return {f.name: f.type for f in dataclasses.fields(cls)}


def _defaults(cls: Type['TrainConfig']) -> Dict[str, Any]:
    return {f.name: f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
            for f in dataclasses.fields(cls)}


def _closest(name: str, valid: Sequence[str]) -> str:
    match = difflib.get_close_matches(name, list(valid), n=1)
    return f" (did you mean '{match[0]}'?)" if match else ''


def _check_keys(cls: Type['TrainConfig'], values: Dict[str, Any], where: str) -> None:
    names = [f.name for f in dataclasses.fields(cls)]
    for key in values:
        if key not in names:
            raise ConfigError(
                f'{where}: unknown key {key!r}{_closest(str(key), names)}; {cls.__name__} keys: {", ".join(names)}')


def _check_value(key: str, value: Any, kind: Any, where: str) -> Any:
    """One value, coerced to its field's type and checked against its choices and range."""
    try:
        value = _coerce(value, kind)
    except _BadValue:
        raise ConfigError(f'{where}: {key} must be {_describe(kind)}, got {value!r}') from None
    if key in CHOICES and value not in CHOICES[key]:
        raise ConfigError(f'{where}: {key} must be one of {", ".join(CHOICES[key])}, got {value!r}'
                          f'{_closest(str(value), CHOICES[key])}')
    rule = RANGES.get(key)
    if rule is not None and value is not None and not rule[0](value):
        raise ConfigError(f'{where}: {key} must be {rule[1]}, got {value!r}')
    return value


def _check_values(cls: Type['TrainConfig'], values: Dict[str, Any], where: str) -> Dict[str, Any]:
    """Known keys, each value coerced and checked (a transfer's sections: keys and values too)."""
    _check_keys(cls, values, where)
    types = _field_types(cls)
    checked = {key: _check_value(key, value, types[key], where) for key, value in values.items()}
    for i, step in enumerate(checked.get('steps') or (), 1):
        if 'dataset' not in step:
            raise ConfigError(f'{where}: transfer step {i} has no dataset; each step is a mapping with at least one')
        checked['steps'][i - 1] = _check_values(TrainConfig, step, f'{where}: transfer step {i}')
    if checked.get('distill') is not None:
        checked['distill'] = _check_values(DistillConfig, checked['distill'], f'{where}: the distill section')
    return checked


def _check_combinations(values: Dict[str, Any], where: str) -> None:
    dataset = values['dataset'] if isinstance(values['dataset'], list) else [values['dataset']]
    for spec in dataset + values['test_datasets'] or [None]:
        if spec is None or isinstance(spec, dict) and 'name' not in spec:
            raise ConfigError(f'{where}: a dataset is a name or a mapping with a name (and root, label, options), '
                              f'got {spec!r}')
    if values['sampler'] == 'pk' and values['batch_size'] % values['num_instances']:
        raise ConfigError(f'{where}: batch_size {values["batch_size"]} is not a multiple of num_instances '
                          f'{values["num_instances"]} (the P×K sampler draws K images of P identities)')
    try:  # the model's name, backbone and arguments, before any data is read
        check_model_args(values['model'], values['model_args'])
    except InputError as e:
        raise ConfigError(f'{where}: {e}') from None
    state_mode = values['model_args'].get('state_mode')
    if state_mode is not None and state_mode not in STATE_MODES:
        raise ConfigError(f'{where}: model_args.state_mode must be one of {", ".join(STATE_MODES)}, got {state_mode!r}')
    if values['ce_weight'] + values['triplet_weight'] == 0:
        raise ConfigError(f'{where}: ce_weight and triplet_weight are both 0: there is no loss to train with')


def resolve_recipe(recipe: str, model: str) -> str:
    """The recipe 'auto' stands for: 'mgn' for MGN models, 'bot' for BoT models, else 'paper'."""
    if recipe == 'auto':
        return 'mgn' if 'mgn' in model else 'bot' if model.startswith(('bot_', 'ptl_bot_')) else 'paper'
    return recipe


def task_of(cls: Type['TrainConfig']) -> str:
    return next(name for name, task_cls in TASKS.items() if task_cls is cls)


def resolve_values(cls: Type['TrainConfig'], values: Dict[str, Any], where: str = 'config') -> Dict[str, Any]:
    """Every field of ``cls``: defaults → recipe → ``values`` (or, resuming, the run's saved config with
    ``values`` checked against it), coerced and checked; a transfer's steps and distill section are
    resolved the same way with their own model's recipe."""
    values = _check_values(cls, values, where)
    if values.get('resume'):
        resolved = given = _resume_values(cls, values, where)
    else:
        defaults = _defaults(cls)
        recipe = resolve_recipe(values.get('recipe', defaults['recipe']), values.get('model', defaults['model']))
        resolved, given = _check_values(cls, {**defaults, **RECIPES[recipe], **values}, where), values
    _check_combinations(resolved, where)
    if cls is TransferConfig:
        shared = {k: v for k, v in given.items() if k not in _TRANSFER_OWNED}
        resolved['steps'] = [_resolve_section(TrainConfig, shared, step, resolved, f'{where}: transfer step {i}')
                             for i, step in enumerate(resolved['steps'], 1)]
        if resolved['distill'] is not None:
            resolved['distill'] = _resolve_section(
                DistillConfig, shared, resolved['distill'], resolved, f'{where}: the distill section')
    return resolved


def _resolve_section(cls, shared: Dict[str, Any], section: Dict[str, Any], parent: Dict[str, Any], where: str):
    """A transfer step or distill section resolved over the transfer's given values, kept as what
    differs from the transfer config (so a saved config resolves to the same sections again)."""
    names = {f.name for f in dataclasses.fields(cls)}
    full = resolve_values(cls, {**{k: v for k, v in shared.items() if k in names}, **section}, where)
    return {k: v for k, v in full.items()
            if k in section or (k not in _TRANSFER_OWNED and (k not in parent or parent[k] != v))}


def saved_config(output: Union[str, os.PathLike]) -> Optional[Dict[str, Any]]:
    """The config a run in ``output`` saved (``config.yaml``; older runs: ``last/train_state.pt``), or None."""
    output = Path(output)
    if (output / CONFIG_FILE_NAME).is_file():
        return load_config(output / CONFIG_FILE_NAME)
    if (output / 'last' / TRAIN_STATE_NAME).is_file():
        return load_train_state(output / 'last').get('config')
    return None


def _plain(value: Any) -> Any:
    """``value`` as it reads back from ``config.yaml`` (tuples as lists)."""
    return json.loads(json.dumps(value))


def _resume_values(cls: Type['TrainConfig'], values: Dict[str, Any], where: str) -> Dict[str, Any]:
    output = values.get('output', _defaults(cls)['output'])
    saved = saved_config(output)
    if saved is None:
        raise ConfigError(f'{where}: nothing to resume in {output}: it holds no {CONFIG_FILE_NAME} of a run '
                          f'(was the run started with output={output}?)')
    task = saved.pop('task', task_of(cls))
    if task != task_of(cls):
        raise ConfigError(f'{where}: {output} holds a {task!r} run; resume it with `ptl-timm {task} --resume`')
    saved = _check_values(cls, saved, f'{Path(output) / CONFIG_FILE_NAME}')
    contradictions = []
    for key, value in values.items():
        if key in _RUN_CONTROL or key == 'output' or _plain(value) == _plain(saved.get(key)):
            continue
        if key in RESUME_OVERRIDABLE and not (key == 'epochs' and value < saved['epochs']):
            _logger.warning('resuming %s with %s=%r instead of the saved %r', output, key, value, saved.get(key))
        else:
            contradictions.append(f'{key}={value!r} (saved: {saved.get(key)!r})')
    if contradictions:
        raise ConfigError(
            f'{where}: resuming {output}, which was started with other values: {"; ".join(contradictions)}. '
            f'Resume needs only the output folder: drop these values, or start a new run (another output, or '
            f'overwrite). Only {", ".join(RESUME_OVERRIDABLE)} may change (epochs only upwards)')
    return {**saved, **values}


def check_config(cfg: 'TrainConfig') -> 'TrainConfig':
    """Check a config again (its fields may have been assigned since construction): what every
    training entry point does first. Returns ``cfg`` with its values coerced."""
    values = _check_values(type(cfg), dataclasses.asdict(cfg), 'config')
    _check_combinations(values, 'config')
    for key, value in values.items():
        setattr(cfg, key, value)
    return cfg


def load_config(path: Union[str, os.PathLike]) -> Dict[str, Any]:
    """Read a YAML or JSON config file into a dict (checked by ``build_config``)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f'config file {path} does not exist')
    text = path.read_text()
    try:
        data = json.loads(text) if path.suffix == '.json' else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        kind = 'JSON' if path.suffix == '.json' else 'YAML'
        raise ConfigError(f'config file {path} is not valid {kind}: {_parse_error(e)}') from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f'config file {path} must hold a mapping of keys to values, not {type(data).__name__}')
    return data


def _parse_error(error: Exception) -> str:
    """A parser's error in one line with its position (YAML's own message spans several lines and
    quotes the text, which the error contract's one-line message cannot show)."""
    if isinstance(error, json.JSONDecodeError):
        return f'{error.msg} (line {error.lineno}, column {error.colno})'
    mark = getattr(error, 'problem_mark', None)
    problem = getattr(error, 'problem', None) or str(error).splitlines()[0]
    return f'{problem} (line {mark.line + 1}, column {mark.column + 1})' if mark else ' '.join(str(error).split())


def parse_overrides(items: Sequence[str]) -> Dict[str, Any]:
    """``['lr=0.02', 'img_size=[128, 64]']`` → dict; values are parsed as YAML (numbers, lists, bools)."""
    out = {}
    for item in items:
        key, sep, value = item.partition('=')
        if not sep or not key.strip():
            raise ConfigError(f'override {item!r} is not of the form key=value')
        try:
            out[key.strip()] = yaml.safe_load(value) if value.strip() else None
        except yaml.YAMLError as e:
            raise ConfigError(f'override {item!r}: the value is not valid YAML: {_parse_error(e)}') from e
    return out


def config_task(data: Dict[str, Any], default: str = 'finetune') -> str:
    task = data.get('task', default)
    if task not in TASKS:
        raise ConfigError(f'unknown task {task!r}; choose one of {", ".join(TASKS)}{_closest(str(task), list(TASKS))}')
    return task


T = TypeVar('T', bound=TrainConfig)


def build_config(
        cls: Type[T],
        file_data: Optional[Dict[str, Any]] = None,
        overrides: Optional[Dict[str, Any]] = None,
        source: Union[str, os.PathLike, None] = None,
) -> T:
    """The config of a config file's values (read from ``source``) and ``overrides`` (later wins):
    ``cls(**values)``, with each value's errors naming the file or the overrides it came from."""
    file_data = {k: v for k, v in (file_data or {}).items() if k != 'task'}
    overrides = {k: v for k, v in (overrides or {}).items() if k != 'task'}
    where = f'config file {source}' if source else 'config file'
    _check_values(cls, file_data, where)
    _check_values(cls, overrides, 'overrides')
    cfg = cls.__new__(cls)
    cfg._init_fields(**resolve_values(cls, {**file_data, **overrides}, where if file_data else 'overrides'))
    return cfg


def config_to_dict(cfg: TrainConfig) -> Dict[str, Any]:
    """JSON-friendly view (tuples as lists), stored with every checkpoint."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def run_config_yaml(cfg: TrainConfig) -> str:
    """``config.yaml`` of a run folder: the resolved config without how this invocation treated the
    folder (``resume``, ``overwrite``), so ``--config`` on it starts the same training afresh."""
    values = {k: v for k, v in config_to_dict(cfg).items() if k not in _RUN_CONTROL}
    return yaml.safe_dump({'task': task_of(type(cfg)), **values}, sort_keys=False)


def save_run_config(cfg: TrainConfig) -> None:
    """Write ``config.yaml`` into ``cfg.output``: what the run trains with, and what ``--resume``
    reads. A resumed run's allowed changes (``RESUME_OVERRIDABLE``, each logged) update it."""
    path = Path(cfg.output) / CONFIG_FILE_NAME
    text = run_config_yaml(cfg)
    if cfg.resume and path.is_file() and path.read_text() != text:
        _logger.warning('%s: recording the values this resumed run changed', path)
    with atomic_write(path, 'w') as f:
        f.write(text)


def config_to_yaml(cfg: TrainConfig) -> str:
    """The resolved config as a config file (``task`` first): what ``--print-config`` prints and every
    run saves as ``config.yaml``; ``ptl-timm <task> --config`` reads it back to the same config."""
    return yaml.safe_dump({'task': task_of(type(cfg)), **config_to_dict(cfg)}, sort_keys=False)
