"""From a training config to loaders: the training set with its sampler, and evaluation shards.

The datasets come from their specs (``ptl_timm.data.specs``); this is what a run adds: P×K or shuffled
sampling, distributed-aware and deterministic per seed and epoch, and each rank's evaluation shard.
"""
from dataclasses import dataclass
from typing import Any, Sequence

from torch.utils.data import DataLoader, DistributedSampler

from ptl_timm.data.datasets import ReIDDataset
from ptl_timm.data.loader import ImageDataset, PKSampler, build_transforms
from ptl_timm.data.specs import load_dataset, spec_label
from ptl_timm.errors import DatasetError
from .config import TrainConfig
from .distributed import DistContext

__all__ = ['TrainData', 'build_train_data', 'eval_loader']

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
