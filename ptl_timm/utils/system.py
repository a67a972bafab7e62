"""Facts about the machine that defaults depend on."""
import os
from typing import Optional, Union

import torch

__all__ = ['cpu_count', 'default_workers', 'resolve_device']


def cpu_count() -> int:
    """CPU cores this process may run on (its affinity mask, e.g. under ``taskset`` or a container's
    cpuset), which is what the data loader's "suggested max number of workers" warning compares with."""
    if hasattr(os, 'sched_getaffinity'):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def default_workers() -> int:
    """Data-loader workers when none are given: ``min(4, cpu_count())``, one rule for every command
    and config, so a small machine is not oversubscribed and a large one decodes images in parallel."""
    return min(4, cpu_count())


def resolve_device(device: Optional[Union[str, torch.device]] = None, local_rank: int = 0) -> torch.device:
    """The one device rule of every command and function: None or 'auto' is this rank's GPU when there is
    one, else the CPU; 'cuda' is this rank's GPU; anything else is passed to torch."""
    if device is None or device == 'auto':
        device = 'cuda' if torch.cuda.is_available() else 'cpu'
    if device == 'cuda':
        device = f'cuda:{local_rank}'
    return torch.device(device)
