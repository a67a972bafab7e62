"""Facts about the machine that defaults depend on."""
import os

__all__ = ['cpu_count', 'default_workers']


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
