"""TensorBoard logging of a run beside its ``metrics.jsonl``: ``tensorboard --logdir <output>/tensorboard``.

One event per epoch record: every number of the record (loss and its terms, lr, time) under ``train/``,
and each evaluated set's metrics under ``eval/<set>/`` (mAP, Rank-1, ...), all at step = epoch. TensorBoard
is an optional dependency (``pip install "ptl_timm[tensorboard]"``).
"""
import importlib.util
import os
from numbers import Number
from typing import Any, Dict

from ptl_timm.errors import MissingExtraError
from ptl_timm.utils import PathLike

__all__ = ['TENSORBOARD_DIR', 'TensorBoardLog', 'require_tensorboard']

TENSORBOARD_DIR = 'tensorboard'  # under the run's output folder


def require_tensorboard() -> None:
    """Refuse ``tensorboard: true`` without the package: checked before a run writes anything."""
    if importlib.util.find_spec('tensorboard') is None:
        raise MissingExtraError(
            'TensorBoard logging (tensorboard: true) needs the tensorboard package, which is not installed: '
            'pip install "ptl_timm[tensorboard]" (or set tensorboard: false; metrics.jsonl has the same numbers)')


class TensorBoardLog:
    """Writes epoch records (the ``metrics.jsonl`` dicts) as TensorBoard scalars to ``logdir``."""

    def __init__(self, logdir: PathLike):
        require_tensorboard()
        from torch.utils.tensorboard import SummaryWriter
        self.writer = SummaryWriter(os.fspath(logdir))

    def log(self, record: Dict[str, Any]) -> None:
        epoch = record['epoch']
        for key, value in record.items():
            if key != 'epoch' and isinstance(value, Number):
                self.writer.add_scalar(f'train/{key}', value, epoch)
        for name, metrics in record.get('eval', {}).items():
            for key, value in metrics.items():
                if isinstance(value, Number):
                    self.writer.add_scalar(f'eval/{name}/{key}', value, epoch)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
