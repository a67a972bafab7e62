"""Training configuration: one dataclass per task, resolved and checked by one constructor.

Every door (``TrainConfig(...)`` in Python, ``ptl-timm train|distill|transfer``, config files,
transfer steps, the distill section of a transfer) builds a config the same way, so the same
inputs give the same config. Resolution order (later wins): the dataclass defaults (the PTL
paper's recipe, §5.1) → the recipe chosen by ``recipe`` ('auto' picks 'mgn' for MGN models) → the
values given (a config file, then overrides).

A config is a value: building one reads no file and changes nothing. ``resume=True`` only records
the wish; the run layer (``ptl_timm.engine.run_folder.run_config``) reads the run's saved
``config.yaml`` and checks the given values (``given_keys``) against it.

Each field carries its own rules next to its default (:func:`setting`: ``choices`` and a ``Range``
in the field's metadata); values are coerced where that is unambiguous (``'5'`` → 5, ``'1e-3'`` →
0.001, lists → tuples) and refused otherwise; an unknown key names the closest valid one. A small
validator over the dataclass fields does this rather than a library (pydantic, OmegaConf): the
configs stay plain dataclasses that every caller already uses, no dependency is added, and each
message names the file, transfer step or key the user has to fix.

A transfer's steps and its distill section are their own small types (``TransferStep``,
``DistillSection``): the values of a ``TrainConfig`` / ``DistillConfig`` that differ from the
transfer's, less those the transfer sets itself (``set_by_transfer``).
"""
import collections.abc
import dataclasses
import difflib
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import (
    Any, Callable, ClassVar, Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple, Type, TypeVar, Union,
    get_args, get_origin)

import yaml

from ptl_timm.data.datasets import DATASETS
from ptl_timm.data.specs import DataRoot, DatasetName, DatasetSpec
from ptl_timm.errors import ConfigError, InputError
from ptl_timm.eval.aqe import AQE_ALPHA, AQE_K, AQE_TIMES
from ptl_timm.eval.metrics import METRICS
from ptl_timm.eval.rerank import RERANK_K1, RERANK_K2, RERANK_LAMBDA
from ptl_timm.layers import STATE_MODES
from ptl_timm.models.registry import check_arguments, check_model_args, model_class
from ptl_timm.utils import PathLike, default_workers
from .schedule import LR_SCHEDULES

__all__ = [
    'ConfigError', 'TrainConfig', 'DistillConfig', 'TransferConfig', 'TransferStep', 'DistillSection', 'Range',
    'setting', 'field_rules', 'RECIPES', 'TASKS', 'OPTIMIZERS', 'SAMPLERS', 'STATE_RESETS', 'RESET_CLASSIFIER',
    'RECIPE_CHOICES', 'RESUME_OVERRIDABLE', 'RUN_CONTROL', 'CONFIG_FILE_NAME', 'resolve_recipe', 'load_config',
    'parse_overrides', 'build_config', 'check_config', 'check_values', 'config_task', 'task_of', 'config_to_dict',
    'config_to_yaml', 'plain', 'COMMANDS',
]

CONFIG_FILE_NAME = 'config.yaml'  # the resolved config, saved in every run folder
OPTIMIZERS = ('sgd', 'adam', 'adamw')
SAMPLERS = ('random', 'pk')
STATE_RESETS = ('epoch', 'never')
RESET_CLASSIFIER = ('auto', 'yes', 'no')

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
# model_args the trainer passes to the model itself, with where their value comes from
SET_BY_TRAINER = {'num_classes': "the training set's identities", 'pretrained': 'the config key pretrained'}


class Range(NamedTuple):
    """The values a numeric field accepts: ``test(value)``, and ``text`` for the error message."""
    test: Callable[[Any], bool]
    text: str


AT_LEAST_0 = Range(lambda v: v >= 0, '>= 0')
AT_LEAST_1 = Range(lambda v: v >= 1, '>= 1')
POSITIVE = Range(lambda v: v > 0, '> 0')
FRACTION = Range(lambda v: 0 <= v <= 1, 'in [0, 1]')
BELOW_1 = Range(lambda v: 0 <= v < 1, 'in [0, 1)')
IMG_SIZE = Range(lambda v: min(v) >= 1, 'two positive sizes')
MILESTONES = Range(lambda v: all(m >= 1 for m in v) and list(v) == sorted(set(v)), 'increasing epochs >= 1')
SEED = Range(lambda v: 0 <= v < 2 ** 32, 'in [0, 2**32 - 1] (what numpy seeds with)')


def setting(default: Any = dataclasses.MISSING, *, factory: Any = dataclasses.MISSING,
            choices: Optional[Sequence[str]] = None, range: Optional[Range] = None) -> Any:
    """A config field with its rules beside its default: the allowed ``choices`` or a ``range``."""
    return field(default=default, default_factory=factory, metadata=dict(choices=choices, range=range))


def field_rules(cls: type) -> Dict[str, Tuple[Optional[Sequence[str]], Optional[Range]]]:
    """``{field: (choices, range)}`` of a config class, read from its fields' metadata."""
    return {f.name: (f.metadata.get('choices'), f.metadata.get('range')) for f in dataclasses.fields(cls)}


def _config_class(cls):
    """``@dataclass(kw_only=True)`` whose ``__init__`` resolves and checks its values (``resolve_values``),
    so ``TrainConfig(model='ptl_mgn')`` is the config ``ptl-timm train --model ptl_mgn`` trains with.
    ``dataclasses.replace`` passes every field, so it re-checks values but applies no recipe."""
    cls = dataclass(kw_only=True)(cls)
    cls._init_fields = cls.__init__

    def __init__(self, **values: Any) -> None:
        self._init_fields(**resolve_values(type(self), values))
        self.given_keys = frozenset(values)
    __init__.__doc__ = 'Defaults → recipe → ``values``, checked; ``given_keys`` records which were given.'

    def __setattr__(self, name: str, value: Any) -> None:
        """A field assigned after construction counts as given, as if passed to ``__init__``: a resume
        lays it over the saved config (or refuses it) rather than dropping it."""
        object.__setattr__(self, name, value)
        if name in self.__dataclass_fields__ and 'given_keys' in self.__dict__:
            object.__setattr__(self, 'given_keys', self.given_keys | {name})
    cls.__init__, cls.__setattr__ = __init__, __setattr__
    return cls


class _Section(Mapping):
    """Values of a ``config_cls`` that a transfer runs with: a read-only mapping of the keys that differ
    from the transfer config, checked as that config's values. ``set_by_transfer``: the keys the
    transfer gives every section itself, which a section may not set; ``own``: keys a section never
    takes from the transfer config; ``required``: keys every section states."""
    config_cls: ClassVar[type]
    set_by_transfer: ClassVar[Tuple[str, ...]]
    own: ClassVar[Tuple[str, ...]] = ()
    required: ClassVar[Tuple[str, ...]] = ()

    def __init__(self, values: Mapping) -> None:
        self._values = dict(values)

    def __getitem__(self, key: str) -> Any:
        return self._values[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f'{type(self).__name__}({self._values!r})'

    @classmethod
    def keys_allowed(cls) -> List[str]:
        return [f.name for f in dataclasses.fields(cls.config_cls) if f.name not in cls.set_by_transfer]

    @classmethod
    def inherited(cls) -> List[str]:
        """The keys a section takes from the transfer config (its ``TrainConfig`` values) unless it sets them."""
        shared = {f.name for f in dataclasses.fields(TrainConfig)}
        return [name for name in cls.keys_allowed() if name in shared and name not in cls.own]

    def config(self, transfer: 'TransferConfig', **given: Any):
        """The full config of this section: the transfer's values, then ``given`` by the transfer runner
        (its ``set_by_transfer`` keys and defaults such as the last step's dataset), then its own."""
        shared = {name: getattr(transfer, name) for name in self.inherited()}
        return self.config_cls(**{**shared, **given, **self._values})


@_config_class
class TrainConfig:
    """Fine-tuning (``ptl-timm train``). Defaults are the paper's ResNet-50/DenseNet-161 recipe:
    SGD momentum 0.9, lr 0.01 divided by 10 every 10 epochs, 50 epochs, batch 32, 256×128, CE."""
    # model
    model: str = 'ptl_resnet50'
    model_args: Dict[str, Any] = setting(factory=dict)
    pretrained: bool = True  # ImageNet weights of the backbone (ignored when init_checkpoint is set)
    init_checkpoint: Optional[str] = None  # a ReID checkpoint folder to fine-tune from
    # 'auto': new classifier unless trained on this very dataset; 'yes'/'no'
    reset_classifier: str = setting('auto', choices=RESET_CLASSIFIER)
    # data: a spec, or a list of specs trained as their union (query/gallery of the first)
    dataset: DatasetName = 'market1501'
    data_root: DataRoot = 'data'  # a dataset's folder, or {name: folder}
    dataset_args: Dict[str, Any] = setting(factory=dict)  # e.g. {variant: labeled} for cuhk03_np
    test_datasets: List[DatasetSpec] = setting(factory=list)  # evaluated besides the training set's split
    img_size: Tuple[int, int] = setting((256, 128), range=IMG_SIZE)
    sampler: str = setting('random', choices=SAMPLERS)  # 'random' or 'pk' (P identities × K images)
    batch_size: int = setting(32, range=AT_LEAST_1)
    num_instances: int = setting(4, range=AT_LEAST_1)  # K of the P×K sampler
    random_erasing: float = setting(0.0, range=FRACTION)
    augment: str = ''  # a timm augmentation string: 'rand-m9-mstd0.5' (RandAugment), 'augmix-m5-w4-d2', 'original'
    color_jitter: float = setting(0.0, range=AT_LEAST_0)  # brightness, contrast and saturation jitter (0: off)
    num_workers: int = setting(factory=default_workers, range=AT_LEAST_0)  # data-loader processes: min(4, cores)
    # optimisation
    optimizer: str = setting('sgd', choices=OPTIMIZERS)
    lr: float = setting(0.01, range=POSITIVE)
    # lr factor of the PTL side network (cells + fuses), which starts untrained
    side_lr_mult: float = setting(1.0, range=POSITIVE)
    momentum: float = setting(0.9, range=BELOW_1)
    nesterov: bool = False
    amsgrad: bool = False
    weight_decay: float = setting(5e-4, range=AT_LEAST_0)
    epochs: int = setting(50, range=AT_LEAST_1)
    lr_step: int = setting(10, range=AT_LEAST_1)  # StepLR period in epochs (used when lr_milestones is empty)
    lr_milestones: List[int] = setting(factory=list, range=MILESTONES)
    lr_gamma: float = setting(0.1, range=POSITIVE)
    # 'step' (lr_step / lr_milestones) or 'cosine' (to lr × min_lr_factor)
    lr_schedule: str = setting('step', choices=LR_SCHEDULES)
    min_lr_factor: float = setting(0.0, range=FRACTION)  # the cosine's floor, a factor of lr
    warmup_epochs: int = setting(0, range=AT_LEAST_0)
    # the warm-up starts at lr × warmup_factor and reaches lr at warmup_epochs
    warmup_factor: float = setting(0.1, range=FRACTION)
    # the backbone stays frozen this many epochs: cells, fuses, neck and head train first
    freeze_epochs: int = setting(0, range=AT_LEAST_0)
    clip_grad: float = setting(0.0, range=AT_LEAST_0)  # max gradient norm (0: no clipping)
    # evaluate and save an EMA of the weights (timm ModelEmaV3; e.g. 0.9998; 0: off)
    ema_decay: float = setting(0.0, range=BELOW_1)
    max_steps_per_epoch: Optional[int] = setting(None, range=AT_LEAST_1)  # cap for smoke tests
    # 'epoch': BConv-Cell states start at zero every epoch (the paper; what model.train() does);
    # 'never': carried over epochs and evaluations, and over a resume (an ablation)
    state_reset: str = setting('epoch', choices=STATE_RESETS)
    # loss (ReIDLoss)
    ce_weight: float = setting(1.0, range=AT_LEAST_0)
    triplet_weight: float = setting(0.0, range=AT_LEAST_0)
    triplet_margin: float = setting(0.3, range=AT_LEAST_0)
    label_smoothing: float = setting(0.0, range=BELOW_1)
    xbm_size: int = setting(0, range=AT_LEAST_0)  # cross-batch memory of embeddings for the triplet term (0: off)
    xbm_weight: float = setting(1.0, range=AT_LEAST_0)
    center_weight: float = setting(0.0, range=AT_LEAST_0)  # centre loss on the metric feature (BoT: 5e-4)
    center_lr: float = setting(0.5, range=POSITIVE)  # SGD lr of the centres (BoT), on their unweighted gradient
    # evaluation
    eval_every: int = setting(10, range=AT_LEAST_0)  # epochs; the last epoch is always evaluated; 0: only the last
    eval_batch_size: int = setting(128, range=AT_LEAST_1)
    eval_flip: bool = False
    eval_metric: str = setting('cosine', choices=METRICS)
    eval_aqe: bool = False  # average query expansion (fast-reid's αQE) before ranking
    aqe_k: int = setting(AQE_K, range=AT_LEAST_1)
    aqe_alpha: float = setting(AQE_ALPHA, range=AT_LEAST_0)
    aqe_times: int = setting(AQE_TIMES, range=AT_LEAST_1)
    eval_rerank: bool = False  # k-reciprocal re-ranking (`ptl-timm eval --rerank --k1 --k2 --lambda`)
    rerank_k1: int = setting(RERANK_K1, range=AT_LEAST_1)
    rerank_k2: int = setting(RERANK_K2, range=AT_LEAST_1)
    rerank_lambda: float = setting(RERANK_LAMBDA, range=FRACTION)
    # run
    output: str = 'output/train'
    seed: int = setting(0, range=SEED)
    deterministic: bool = False
    device: str = 'auto'
    amp: bool = False
    channels_last: bool = False
    resume: bool = False  # continue the run in output from its saved config and last/
    overwrite: bool = False  # replace an earlier run in output, all it wrote (else an error)
    progress: bool = True
    tensorboard: bool = False  # also log to output/tensorboard (pip install "ptl_timm[tensorboard]")
    # 'auto', 'paper', 'mgn' or 'bot': the defaults under the given values
    recipe: str = setting('auto', choices=RECIPE_CHOICES)


@_config_class
class DistillConfig(TrainConfig):
    """Student-Teacher Distillation (paper §4, Eq. 4): the student (``model``, a ``reid_*`` network
    starting from ``init_checkpoint``, its own fine-tuned weights) learns
    (1-λ)·CE + λ·L1(student embedding, teacher embedding) from a trained PTL ``teacher`` kept in
    eval mode. When the two embedding widths differ a linear adapter (student → teacher width,
    trained with the student, discarded afterwards) sits in front of the L1 term only."""
    model: str = 'reid_resnet50'
    teacher: str = ''  # checkpoint folder (or hub id) of the trained PTL model
    lam: float = setting(0.8, range=FRACTION)
    output: str = 'output/distill'


class TransferStep(_Section):
    """One step of a transfer: fine-tuning on ``dataset`` (required) from the previous step's weights,
    with the ``TrainConfig`` values that differ from the transfer's."""
    config_cls = TrainConfig
    set_by_transfer = ('output', 'resume', 'init_checkpoint', 'test_datasets')
    required = ('dataset',)


class DistillSection(_Section):
    """The distillation after a transfer's last step, whose model is the teacher: the ``DistillConfig``
    values that differ from the transfer's (the student's ``model`` and ``init_checkpoint``, ``lam``, ...)."""
    config_cls = DistillConfig
    set_by_transfer = ('output', 'resume', 'teacher', 'test_datasets')
    own = ('init_checkpoint',)  # the student's own fine-tuned weights, not the first step's start


@_config_class
class TransferConfig(TrainConfig):
    """Multi-step transfer (paper §5.7): ``steps`` fine-tuned in order, each from the previous
    step's weights; every step's model is evaluated on every dataset of ``test_datasets``.
    Each step (``TransferStep``) holds ``TrainConfig`` values (at least ``dataset``) over the values
    given here; ``distill`` (optional, ``DistillSection``) holds ``DistillConfig`` values of a
    distillation run after the last step with its model as the teacher. Both are resolved like a
    config of their own (their model's recipe included) and stored as what differs from this config."""
    steps: List[TransferStep] = setting(factory=list)
    distill: Optional[DistillSection] = None
    output: str = 'output/transfer'


TASKS: Dict[str, Type[TrainConfig]] = {'finetune': TrainConfig, 'distill': DistillConfig, 'transfer': TransferConfig}
COMMANDS = {'finetune': 'train', 'distill': 'distill', 'transfer': 'transfer'}  # the ptl-timm command of each task
_SECTIONS = {'steps': TransferStep, 'distill': DistillSection}

# Keys a resumed run may change, because they change how the run proceeds, not what it trains
# (epochs only upwards). Any other given value must match the saved config.
RESUME_OVERRIDABLE = ('epochs', 'eval_every', 'eval_batch_size', 'progress', 'num_workers', 'device')
RUN_CONTROL = ('resume', 'overwrite')  # how this invocation treats the folder: never saved, never compared


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
    if origin is dict or isinstance(kind, type) and issubclass(kind, _Section):
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
    """``value`` as ``kind`` (a field's annotation) where that is unambiguous, else ``_BadValue``.
    A section comes back as a plain dict; its keys and values are checked by ``_check_section``."""
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
    if isinstance(kind, type) and issubclass(kind, _Section):
        if not isinstance(value, Mapping):
            raise _BadValue
        return dict(value)
    return _coerce_scalar(value, kind)


def _defaults(cls: Type['TrainConfig']) -> Dict[str, Any]:
    return {f.name: f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
            for f in dataclasses.fields(cls)}


def _closest(name: str, valid: Sequence[str]) -> str:
    match = difflib.get_close_matches(name, list(valid), n=1)
    return f" (did you mean '{match[0]}'?)" if match else ''


def _check_keys(cls: type, keys: Sequence[str], where: str, valid: Optional[Sequence[str]] = None) -> None:
    names = [f.name for f in dataclasses.fields(cls)] if valid is None else list(valid)
    for key in keys:
        if key not in names:
            raise ConfigError(
                f'{where}: unknown key {key!r}{_closest(str(key), names)}; {cls.__name__} keys: {", ".join(names)}')


def _check_value(f: dataclasses.Field, value: Any, where: str) -> Any:
    """One value, coerced to its field's type and checked against the field's choices and range."""
    try:
        value = _coerce(value, f.type)
    except _BadValue:
        raise ConfigError(f'{where}: {f.name} must be {_describe(f.type)}, got {value!r}') from None
    choices, rule = f.metadata.get('choices'), f.metadata.get('range')
    if choices is not None and value not in choices:
        raise ConfigError(f'{where}: {f.name} must be one of {", ".join(choices)}, got {value!r}'
                          f'{_closest(str(value), choices)}')
    if rule is not None and value is not None and not rule.test(value):
        raise ConfigError(f'{where}: {f.name} must be {rule.text}, got {value!r}')
    return value


def _check_section(section_cls: Type[_Section], values: Dict[str, Any], where: str) -> _Section:
    for key in section_cls.required:
        if key not in values:
            raise ConfigError(f'{where} has no {key}; each is a mapping with at least a {key}')
    for key in values:
        if key in section_cls.set_by_transfer:
            raise ConfigError(f'{where}: {key} is set by the transfer for every section; set it on the transfer '
                              f'config, or drop it')
    _check_keys(section_cls.config_cls, list(values), where, section_cls.keys_allowed())
    return section_cls(check_values(section_cls.config_cls, values, where))


def check_values(cls: Type['TrainConfig'], values: Dict[str, Any], where: str) -> Dict[str, Any]:
    """Known keys, each value coerced and checked (a transfer's sections: keys and values too)."""
    _check_keys(cls, list(values), where)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    checked = {key: _check_value(fields[key], value, where) for key, value in values.items()}
    if checked.get('steps') is not None:
        checked['steps'] = [_check_section(TransferStep, step, f'{where}: transfer step {i}')
                            for i, step in enumerate(checked['steps'], 1)]
    if checked.get('distill') is not None:
        checked['distill'] = _check_section(DistillSection, checked['distill'], f'{where}: the distill section')
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
    model, model_args = values['model'], values['model_args']
    for key, source in SET_BY_TRAINER.items():
        if key in model_args:
            raise ConfigError(f'{where}: model_args: {key} is set by the trainer (from {source}); drop it from '
                              f'model_args (a checkpoint\'s model_args are copied without it)')
    try:  # the model's name, backbone and arguments, and the datasets' options, before any data is read
        check_model_args(model, model_args)
        _check_dataset_options(values)
    except InputError as e:
        raise ConfigError(f'{where}: {e}') from None
    cls = model_class(model)
    if cls is not None and not hasattr(cls, 'forward_reid'):
        raise ConfigError(
            f"{where}: model {model!r} is not a ReID model (it has no forward_reid); a timm model trains as the "
            f"backbone of one: model=ptl_net (PTL) or model=reid_net (no cells) with model_args={{backbone: {model}}}")
    state_mode = values['model_args'].get('state_mode')
    if state_mode is not None and state_mode not in STATE_MODES:
        raise ConfigError(f'{where}: model_args.state_mode must be one of {", ".join(STATE_MODES)}, got {state_mode!r}')
    if values['ce_weight'] + values['triplet_weight'] == 0:
        raise ConfigError(f'{where}: ce_weight and triplet_weight are both 0: there is no loss to train with')


def _check_dataset_options(values: Dict[str, Any]) -> None:
    """``dataset_args`` and a spec's own options, each against the type of its dataset parser's parameter
    (``include_val: 'false'`` is a true string, so msmt17 would train on train+val)."""
    datasets = values['dataset'] if isinstance(values['dataset'], list) else [values['dataset']]
    for spec in datasets + values['test_datasets']:
        name = spec['name'] if isinstance(spec, dict) else spec
        if name in DATASETS:  # an unknown name is the data layer's error, with the names it knows
            check_arguments(DATASETS[name], values['dataset_args'], 'dataset_args', f'dataset {name}')
            check_arguments(DATASETS[name], spec if isinstance(spec, dict) else {}, f'dataset {name}', name)


def resolve_recipe(recipe: str, model: str) -> str:
    """The recipe 'auto' stands for: 'mgn' for MGN models, 'bot' for BoT models, else 'paper'."""
    if recipe == 'auto':
        return 'mgn' if 'mgn' in model else 'bot' if model.startswith(('bot_', 'ptl_bot_')) else 'paper'
    return recipe


def task_of(cls: Type['TrainConfig']) -> str:
    return next(name for name, task_cls in TASKS.items() if task_cls is cls)


def resolve_values(cls: Type['TrainConfig'], values: Dict[str, Any], where: str = 'config') -> Dict[str, Any]:
    """Every field of ``cls``: defaults → recipe → ``values``, coerced and checked; a transfer's steps and
    distill section are resolved the same way with their own model's recipe."""
    values = check_values(cls, values, where)
    defaults = _defaults(cls)
    if cls is TransferConfig and plain(values.get('dataset', defaults['dataset'])) != defaults['dataset']:
        # the field is TrainConfig's and every saved transfer config holds its default: only that value is read back
        raise ConfigError(f"{where}: a transfer has no dataset of its own (got {values['dataset']!r}): each step "
                          f"names its dataset (--steps DATASET ..., or the steps section of a config file)")
    recipe = resolve_recipe(values.get('recipe', defaults['recipe']), values.get('model', defaults['model']))
    resolved = check_values(cls, {**defaults, **RECIPES[recipe], **values}, where)
    _check_combinations(resolved, where)
    if cls is TransferConfig:
        resolved['steps'] = [_resolve_section(step, values, resolved, f'{where}: transfer step {i}')
                             for i, step in enumerate(resolved['steps'], 1)]
        if resolved['distill'] is not None:
            resolved['distill'] = _resolve_section(
                resolved['distill'], values, resolved, f'{where}: the distill section')
    return resolved


def _resolve_section(section: _Section, given: Dict[str, Any], parent: Dict[str, Any], where: str) -> _Section:
    """A transfer step or distill section resolved over the transfer's given values, kept as what
    differs from the transfer config (so a saved config resolves to the same sections again)."""
    shared = {k: v for k, v in given.items() if k in section.inherited()}
    full = resolve_values(section.config_cls, {**shared, **section}, where)
    kept = set(section.keys_allowed()) - set(section.own)
    return type(section)({k: v for k, v in full.items()
                          if k in section or (k in kept and (k not in parent or parent[k] != v))})


def check_config(cfg: 'TrainConfig') -> 'TrainConfig':
    """Check a config again (its fields may have been assigned since construction): what every
    training entry point does first. Returns ``cfg`` with its values coerced."""
    values = check_values(type(cfg), dataclasses.asdict(cfg), 'config')
    _check_combinations(values, 'config')
    for key, value in values.items():
        object.__setattr__(cfg, key, value)  # coerced, not given: given_keys stays as it is
    return cfg


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping (PyYAML keeps the last without a
    word: ``{backbone: resnet18, backbone: resnet50}`` builds resnet50). Keys merged in with ``<<`` may
    be overridden, as YAML means them to be."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> Dict[Any, Any]:
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == 'tag:yaml.org,2002:merge':
                continue
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, collections.abc.Hashable):
                continue  # PyYAML's own error follows
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f'duplicate key {key!r}', key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


class _DuplicateKey(ValueError):
    """A key given twice in one JSON object (``json`` keeps the last without a word)."""


def _unique_keys(pairs: List[Tuple[str, Any]]) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(f'duplicate key {key!r}')
        out[key] = value
    return out


def _load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_UniqueKeyLoader)


def load_config(path: PathLike) -> Dict[str, Any]:
    """Read a YAML or JSON config file into a dict (checked by ``build_config``); a key given twice in
    one mapping is refused."""
    path = Path(path)
    if not path.is_file():
        state = 'is a folder, not a file' if path.is_dir() else 'does not exist'
        raise ConfigError(f'config file {path} {state}: pass a .yaml or .json file (configs/ holds examples)')
    text = path.read_text()
    try:
        data = json.loads(text, object_pairs_hook=_unique_keys) if path.suffix == '.json' else _load_yaml(text)
    except (json.JSONDecodeError, yaml.YAMLError, _DuplicateKey) as e:
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
            out[key.strip()] = _load_yaml(value) if value.strip() else None
        except yaml.YAMLError as e:
            raise ConfigError(f'override {item!r}: the value is not valid YAML: {_parse_error(e)}') from e
    return out


def config_task(data: Dict[str, Any], default: str = 'finetune', where: str = 'config') -> str:
    task = data.get('task', default)
    if task not in TASKS:
        raise ConfigError(f'{where}: unknown task {task!r}; choose one of {", ".join(TASKS)}'
                          f'{_closest(str(task), list(TASKS))}')
    return task


T = TypeVar('T', bound=TrainConfig)


def build_config(
        cls: Type[T],
        file_data: Optional[Dict[str, Any]] = None,
        overrides: Optional[Dict[str, Any]] = None,
        source: Optional[PathLike] = None,
) -> T:
    """The config of a config file's values (read from ``source``) and ``overrides`` (later wins):
    ``cls(**values)``, with each value's errors naming the file or the overrides it came from. The file's
    ``task`` must be ``cls``'s; how to treat an earlier run (``RUN_CONTROL``) is no file's to say."""
    where = f'config file {source}' if source else 'config file'
    file_data, overrides, task = dict(file_data or {}), dict(overrides or {}), task_of(cls)
    if 'task' in overrides:
        raise ConfigError(f"overrides: task cannot be set (got {overrides['task']!r}): the command is the task "
                          f"(ptl-timm train, distill or transfer), or a config file's task; drop it")
    if config_task(file_data, task, where) != task:
        other = file_data['task']
        raise ConfigError(f'{where} is a {other!r} config; run it with `ptl-timm {COMMANDS[other]}`')
    file_data.pop('task', None)
    for key in RUN_CONTROL:
        if key in file_data:
            raise ConfigError(f'{where}: {key} is not a config file key, so that reusing a file never decides what '
                              f'happens to an earlier run: drop it and pass --{key} (Python: {key}=True)')
    check_values(cls, file_data, where)
    check_values(cls, overrides, 'overrides')
    values = {**file_data, **overrides}
    cfg = cls.__new__(cls)
    cfg._init_fields(**resolve_values(cls, values, where if file_data else 'overrides'))
    cfg.given_keys = frozenset(values)
    return cfg


def plain(value: Any) -> Any:
    """``value`` as it reads back from ``config.yaml`` (tuples as lists, sections as mappings)."""
    return json.loads(json.dumps(value, default=dict))


def config_to_dict(cfg: TrainConfig) -> Dict[str, Any]:
    """JSON-friendly view (tuples as lists), stored with every checkpoint."""
    return plain(dataclasses.asdict(cfg))


def config_to_yaml(cfg: TrainConfig) -> str:
    """The resolved config as a config file (``task`` first): what ``--print-config`` prints and every
    run saves as ``config.yaml``; ``ptl-timm <task> --config`` reads it back to the same config. Without
    how this invocation treats the folder (``RUN_CONTROL``), which a config file may not hold."""
    values = {k: v for k, v in config_to_dict(cfg).items() if k not in RUN_CONTROL}
    return yaml.safe_dump({'task': task_of(type(cfg)), **values}, sort_keys=False)
