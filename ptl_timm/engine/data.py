"""From config values to datasets and loaders: dataset specs, roots, samplers, evaluation shards.

A dataset spec is a registered name (``'market1501'``), or a mapping
``{name: ..., root: ..., label: ..., <build_dataset kwargs>}`` for a dataset somewhere else than the
config's ``data_root`` (e.g. several synthetic domains in one layout). A list of specs is the union
of their training sets (``build_union``: the Market-Duke setting), tested on the first one's split.
"""
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple, Union

from torch.utils.data import DataLoader, DistributedSampler

from ptl_timm.data.datasets import ReIDDataset, build_dataset, build_union
from ptl_timm.data.loader import ImageDataset, PKSampler, build_transforms
from ptl_timm.data.synth import synth_params
from ptl_timm.errors import ConfigError, DatasetError, DatasetNotFoundError
from .config import DataRoot, DatasetName, TrainConfig
from .distributed import DistContext

__all__ = ['DatasetSpec', 'TrainData', 'spec_label', 'located_spec', 'load_dataset', 'build_train_data', 'eval_loader']

DatasetSpec = DatasetName


def _parts(spec: Union[str, Dict[str, Any]]) -> Tuple[str, Dict[str, Any]]:
    if isinstance(spec, str):
        return spec, {}
    if not isinstance(spec, dict) or 'name' not in spec:
        raise ConfigError(f'a dataset spec is a name or a mapping with a name (and root, label, options), got {spec!r}')
    options = {k: v for k, v in spec.items() if k not in ('name', 'label')}
    return spec['name'], options


def spec_label(spec: DatasetSpec, data_root: Optional[DataRoot] = None) -> str:
    """Display name of a spec: its ``label``; else ``synth-<domain>`` when its folder (the spec's root,
    or found in ``data_root``) holds synthetic data, so two synthetic domains in one layout do not both
    read "market1501"; else its name. A union joins the labels with '+'."""
    if isinstance(spec, list):
        return '+'.join(spec_label(s, data_root) for s in spec)
    if isinstance(spec, dict) and 'label' in spec:
        return str(spec['label'])
    name, options = _parts(spec)
    root = options.get('root')
    if root is None and data_root and (not isinstance(data_root, dict) or name in data_root):
        root = _root(name, data_root)
    synth = synth_params(root) if root else None
    return f'synth-{synth["domain"]}' if synth else name


def _root(name: str, data_root: DataRoot) -> Path:
    """``data_root`` is a mapping of names to folders, a folder holding ``<name>/``, or the dataset's folder."""
    if isinstance(data_root, dict):
        if name not in data_root:
            raise ConfigError(f'data_root has no folder for dataset {name!r} (it names {sorted(data_root)})')
        return Path(data_root[name]).expanduser()
    root = Path(data_root).expanduser()
    return root / name if (root / name).is_dir() else root


def located_spec(spec: DatasetSpec, data_root: DataRoot) -> DatasetSpec:
    """``spec`` with its folder and label written out, so that it names the same data under any other
    ``data_root`` (a transfer step's dataset, which every later step evaluates under its own)."""
    if isinstance(spec, list):
        return [located_spec(s, data_root) for s in spec]
    name, options = _parts(spec)
    root = options.get('root') or _root(name, data_root)
    return {**(spec if isinstance(spec, dict) else {'name': name}), 'root': str(root),
            'label': spec_label(spec, data_root)}


def load_dataset(spec: DatasetSpec, data_root: DataRoot, dataset_args: Dict[str, Any]) -> ReIDDataset:
    """Build one dataset, or the union of a list of them; a missing root is a ``DatasetNotFoundError``."""
    if isinstance(spec, list):
        if not spec:
            raise ConfigError('dataset is an empty list')
        return build_union([load_dataset(s, data_root, dataset_args) for s in spec])
    name, options = _parts(spec)
    root = Path(options.pop('root')).expanduser() if 'root' in options else _root(name, data_root)
    if not root.exists():
        raise DatasetNotFoundError(
            f'dataset {name!r}: root folder {root} does not exist; set data_root (or the spec\'s root) to the '
            f'folder holding the dataset')
    return build_dataset(name, root, **{**dataset_args, **options})


@dataclass
class TrainData:
    dataset: ReIDDataset
    loader: DataLoader
    sampler: Any  # has set_epoch(epoch)

    @property
    def num_classes(self) -> int:
        return self.dataset.num_train_pids


def build_train_data(cfg: TrainConfig, ctx: DistContext) -> TrainData:
    """The training set, its sampler (P×K or shuffled, distributed-aware, deterministic per
    seed and epoch) and loader. ``batch_size`` is per process, as in timm's train.py."""
    dataset = load_dataset(cfg.dataset, cfg.data_root, cfg.dataset_args)
    if not dataset.train:
        raise DatasetError(
            f'dataset {spec_label(cfg.dataset)!r} at {dataset.root} has an empty training split; check the folder '
            f'layout of the dataset')
    if len(dataset.train) < cfg.batch_size:
        raise DatasetError(
            f'dataset {spec_label(cfg.dataset)!r} has {len(dataset.train)} training images, fewer than one batch '
            f'of {cfg.batch_size}; lower batch_size')
    transform = build_transforms(cfg.img_size, is_training=True, random_erasing=cfg.random_erasing,
                                 augment=cfg.augment, color_jitter=cfg.color_jitter)
    images = ImageDataset(dataset.train, transform)
    if cfg.sampler == 'pk':
        sampler = PKSampler(dataset.train, cfg.batch_size, cfg.num_instances, seed=cfg.seed,
                            num_replicas=ctx.world_size, rank=ctx.rank)
    else:
        sampler = DistributedSampler(images, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=cfg.seed)
    loader = DataLoader(
        images, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.num_workers, drop_last=True,
        pin_memory=ctx.device.type == 'cuda', persistent_workers=False)
    return TrainData(dataset, loader, sampler)


def _shard(records: Sequence[Any], ctx: DistContext) -> Sequence[Any]:
    """Contiguous shard of this rank: gathering the shards in rank order restores the full list."""
    n = len(records)
    return records[ctx.rank * n // ctx.world_size:(ctx.rank + 1) * n // ctx.world_size]


def eval_loader(records: Sequence[Any], cfg: TrainConfig, ctx: DistContext) -> DataLoader:
    """This rank's shard of a query or gallery list, in order, with the test transforms."""
    transform = build_transforms(cfg.img_size, is_training=False)
    return DataLoader(
        ImageDataset(list(_shard(records, ctx)), transform), batch_size=cfg.eval_batch_size, shuffle=False,
        num_workers=cfg.num_workers, pin_memory=ctx.device.type == 'cuda')
