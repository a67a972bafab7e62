"""Shared by every test module.

Under pytest-xdist (``-n 2``, README's test command) each worker is one process on one core: torch and any
subprocess a test starts use one thread, since two workers each running two threads on two cores would
slow every test down rather than speed the suite up.
"""
import os

import torch

if os.environ.get('PYTEST_XDIST_WORKER'):
    os.environ['OMP_NUM_THREADS'] = '1'
    torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items) -> None:
    """Slow tests first: the workers then start the long ones together and share out the short ones at the
    end, instead of one worker finishing a long test alone after the other ran out of work."""
    items.sort(key=lambda item: item.get_closest_marker('slow') is None)
