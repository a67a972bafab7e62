"""Learning-rate schedule of every training run, per epoch: a linear warm-up, then step decay or a cosine.

* Warm-up (``warmup_epochs`` W > 0): the factor rises linearly from ``warmup_factor`` at epoch 0 to 1 at
  epoch W (BoT: 0.1, i.e. 3.5e-5 → 3.5e-4 over 10 epochs).
* ``'step'``: ×``gamma`` at each of ``milestones`` (BoT: 40 and 70), or every ``step`` epochs without them
  (the PTL paper: every 10).
* ``'cosine'``: half a cosine from 1 after the warm-up to ``min_factor`` at the last epoch.
"""
import math
from typing import Callable, Sequence

__all__ = ['LR_SCHEDULES', 'lr_factor']

LR_SCHEDULES = ('step', 'cosine')


def lr_factor(
        schedule: str = 'step',
        epochs: int = 1,
        warmup_epochs: int = 0,
        warmup_factor: float = 0.1,
        step: int = 10,
        milestones: Sequence[int] = (),
        gamma: float = 0.1,
        min_factor: float = 0.0,
) -> Callable[[int], float]:
    """The factor of the base learning rate at each epoch (0-based), for ``torch.optim.lr_scheduler.LambdaLR``."""
    if schedule not in LR_SCHEDULES:
        raise ValueError(f'lr schedule must be one of {LR_SCHEDULES}, got {schedule!r}')

    def factor(epoch: int) -> float:
        if epoch < warmup_epochs:
            return warmup_factor + (1.0 - warmup_factor) * epoch / warmup_epochs
        if schedule == 'cosine':
            progress = (epoch - warmup_epochs) / max(1, epochs - 1 - warmup_epochs)
            return min_factor + (1.0 - min_factor) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        decays = sum(epoch >= m for m in milestones) if milestones else epoch // max(1, step)
        return gamma ** decays
    return factor
