"""Training configuration: one dataclass per task, recipes, config files and command-line overrides.

Resolution order (later wins): the dataclass defaults (the PTL paper's recipe, §5.1) → the
recipe chosen by ``recipe`` ('auto' picks 'mgn' for MGN models) → the config file (YAML or JSON)
→ ``key=value`` overrides. A key that is not a field is an error naming the valid ones, so a typo
never silently trains with a default.
"""
import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Type, TypeVar, Union

import yaml

__all__ = [
    'ConfigError', 'TrainConfig', 'DistillConfig', 'TransferConfig', 'RECIPES', 'TASKS',
    'resolve_recipe', 'load_config', 'parse_overrides', 'build_config', 'config_task', 'config_to_dict',
]

DataRoot = Union[str, Dict[str, str]]
DatasetName = Union[str, List[str]]


class ConfigError(ValueError):
    """A configuration that cannot be trained with (unknown key, bad value, missing field)."""


@dataclass
class TrainConfig:
    """Fine-tuning (``ptl-timm train``). Defaults are the paper's ResNet-50/DenseNet-161 recipe:
    SGD momentum 0.9, lr 0.01 divided by 10 every 10 epochs, 50 epochs, batch 32, 256×128, CE."""
    # model
    model: str = 'ptl_resnet50'
    model_args: Dict[str, Any] = field(default_factory=dict)
    pretrained: bool = True  # ImageNet weights of the backbone (ignored when init_checkpoint is set)
    init_checkpoint: Optional[str] = None  # a ReID checkpoint folder to fine-tune from
    reset_classifier: str = 'auto'  # 'auto': new classifier unless trained on this very dataset; 'yes'/'no'
    # data: a name, or a list of names trained as their union (query/gallery of the first)
    dataset: DatasetName = 'market1501'
    data_root: DataRoot = 'data'  # a dataset's folder, or {name: folder}
    dataset_args: Dict[str, Any] = field(default_factory=dict)  # e.g. {variant: labeled} for cuhk03_np
    test_datasets: List[str] = field(default_factory=list)  # evaluated besides the training set's own split
    img_size: Tuple[int, int] = (256, 128)
    sampler: str = 'random'  # 'random' or 'pk' (P identities × K images)
    batch_size: int = 32
    num_instances: int = 4  # K of the P×K sampler
    random_erasing: float = 0.0
    num_workers: int = 4
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
    warmup_epochs: int = 0
    max_steps_per_epoch: Optional[int] = None  # cap for smoke tests
    # 'epoch': BConv-Cell states start at zero every epoch (the paper; what model.train() does);
    # 'never': carried over epochs and evaluations (an ablation; a resumed run restarts them at zero)
    state_reset: str = 'epoch'
    # loss (ReIDLoss)
    ce_weight: float = 1.0
    triplet_weight: float = 0.0
    triplet_margin: float = 0.3
    label_smoothing: float = 0.0
    # evaluation
    eval_every: int = 10  # epochs; the last epoch is always evaluated; 0: only the last
    eval_batch_size: int = 128
    eval_flip: bool = False
    eval_metric: str = 'cosine'
    # run
    output: str = 'output/train'
    seed: int = 0
    deterministic: bool = False
    device: str = 'auto'
    amp: bool = False
    channels_last: bool = False
    resume: bool = False  # continue from output/last (optimizer, scheduler, RNG, epoch)
    overwrite: bool = False  # replace the checkpoints of an earlier run in output (else an error)
    progress: bool = True
    recipe: str = 'auto'  # 'auto', 'paper' or 'mgn': the defaults under the config file


@dataclass
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


@dataclass
class TransferConfig(TrainConfig):
    """Multi-step transfer (paper §5.7): ``steps`` fine-tuned in order, each from the previous
    step's weights; every step's model is evaluated on every dataset of ``test_datasets``.
    Each step is a dict of overrides of this config (at least ``dataset``); ``distill`` (optional)
    is a dict of DistillConfig overrides run after the last step with its model as the teacher."""
    steps: List[Dict[str, Any]] = field(default_factory=list)
    distill: Optional[Dict[str, Any]] = None
    output: str = 'output/transfer'


TASKS: Dict[str, Type[TrainConfig]] = {'finetune': TrainConfig, 'distill': DistillConfig, 'transfer': TransferConfig}

# Recipes are overrides of the defaults above, applied before the config file.
RECIPES: Dict[str, Dict[str, Any]] = {
    # PTL paper §5.1 (ResNet-50 / DenseNet-161): the dataclass defaults
    'paper': {},
    # MGN (Wang et al. 2018) as the PTL paper followed it: 384×128, P=4 × K=4, triplet (margin 1.2)
    # + CE, random erasing 0.5, SGD momentum 0.9, wd 5e-4, lr 0.01 → ×0.1 at epochs 40 and 60, 80 epochs.
    # The released MGN_PTL code used Adam instead (configs/mgn/*_official_code.yaml).
    'mgn': dict(
        img_size=(384, 128), sampler='pk', batch_size=16, num_instances=4, random_erasing=0.5,
        triplet_weight=1.0, triplet_margin=1.2, epochs=80, lr_milestones=[40, 60]),
}


def resolve_recipe(recipe: str, model: str) -> str:
    if recipe == 'auto':
        return 'mgn' if 'mgn' in model else 'paper'
    if recipe not in RECIPES:
        raise ConfigError(f"unknown recipe {recipe!r}; choose 'auto' or one of {sorted(RECIPES)}")
    return recipe


def load_config(path: Union[str, os.PathLike]) -> Dict[str, Any]:
    """Read a YAML or JSON config file into a dict (validated later, against the task's fields)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'config file {path} does not exist')
    text = path.read_text()
    try:
        data = json.loads(text) if path.suffix == '.json' else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        raise ConfigError(f'config file {path} is not valid {path.suffix.lstrip(".") or "YAML"}: {e}') from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f'config file {path} must hold a mapping of keys to values, not {type(data).__name__}')
    return data


def parse_overrides(items: Sequence[str]) -> Dict[str, Any]:
    """``['lr=0.02', 'img_size=[128, 64]']`` → dict; values are parsed as YAML (numbers, lists, bools)."""
    out = {}
    for item in items:
        key, sep, value = item.partition('=')
        if not sep or not key:
            raise ConfigError(f'override {item!r} is not of the form key=value')
        out[key.strip()] = yaml.safe_load(value) if value.strip() else None
    return out


def config_task(data: Dict[str, Any], default: str = 'finetune') -> str:
    task = data.get('task', default)
    if task not in TASKS:
        raise ConfigError(f'unknown task {task!r}; choose one of {sorted(TASKS)}')
    return task


def _check_keys(cls: Type[TrainConfig], data: Dict[str, Any], where: str) -> None:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names - {'task'})
    if unknown:
        raise ConfigError(
            f'unknown config key(s) {unknown} in {where} for {cls.__name__}; valid keys: {", ".join(sorted(names))}')


def _coerce(cfg: TrainConfig) -> TrainConfig:
    """Normalise YAML shapes (lists for tuples) and check the values that would fail late."""
    cfg.img_size = tuple(int(s) for s in cfg.img_size)
    if len(cfg.img_size) != 2:
        raise ConfigError(f'img_size must be [height, width], got {cfg.img_size}')
    if cfg.sampler not in ('random', 'pk'):
        raise ConfigError(f"sampler must be 'random' or 'pk', got {cfg.sampler!r}")
    if cfg.optimizer not in ('sgd', 'adam', 'adamw'):
        raise ConfigError(f"optimizer must be 'sgd', 'adam' or 'adamw', got {cfg.optimizer!r}")
    if cfg.reset_classifier not in ('auto', 'yes', 'no'):
        raise ConfigError(f"reset_classifier must be 'auto', 'yes' or 'no', got {cfg.reset_classifier!r}")
    if cfg.state_reset not in ('epoch', 'never'):
        raise ConfigError(f"state_reset must be 'epoch' or 'never', got {cfg.state_reset!r}")
    if cfg.side_lr_mult <= 0:
        raise ConfigError(f'side_lr_mult must be positive, got {cfg.side_lr_mult}')
    if cfg.epochs < 1 or cfg.batch_size < 1:
        raise ConfigError(f'epochs and batch_size must be positive, got {cfg.epochs} and {cfg.batch_size}')
    if cfg.sampler == 'pk' and cfg.batch_size % cfg.num_instances:
        raise ConfigError(
            f'batch_size {cfg.batch_size} is not a multiple of num_instances {cfg.num_instances} (P×K sampler)')
    if isinstance(cfg, DistillConfig) and not 0.0 <= cfg.lam <= 1.0:
        raise ConfigError(f'lam (λ of Eq. 4) must be in [0, 1], got {cfg.lam}')
    if isinstance(cfg, TransferConfig):
        for i, step in enumerate(cfg.steps):
            if not isinstance(step, dict) or 'dataset' not in step:
                raise ConfigError(f'transfer step {i} must be a mapping with at least a dataset, got {step!r}')
            _check_keys(TrainConfig, step, f'transfer step {i}')
        if cfg.distill is not None:
            _check_keys(DistillConfig, cfg.distill, 'the distill section')
    return cfg


T = TypeVar('T', bound=TrainConfig)


def build_config(
        cls: Type[T],
        file_data: Optional[Dict[str, Any]] = None,
        overrides: Optional[Dict[str, Any]] = None,
) -> T:
    """Defaults → recipe → config file → overrides, validated into a ``cls`` instance."""
    file_data = dict(file_data or {})
    overrides = dict(overrides or {})
    _check_keys(cls, file_data, 'the config file')
    _check_keys(cls, overrides, 'the overrides')
    file_data.pop('task', None)
    overrides.pop('task', None)
    merged = {**file_data, **overrides}
    model = merged.get('model', cls.model)
    recipe = resolve_recipe(merged.get('recipe', 'auto'), model)
    return _coerce(cls(**{**RECIPES[recipe], **merged}))


def config_to_dict(cfg: TrainConfig) -> Dict[str, Any]:
    """JSON-friendly view (tuples as lists), stored with every checkpoint."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))
