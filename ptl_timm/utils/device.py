"""The one reader of a device string: every ``--device``, ``device=`` and config ``device`` goes through
:func:`resolve_device`, so a device that is misspelt or absent on this machine is one clear error
before anything is read, never a traceback half-way through."""
from typing import Optional, Union

import torch

from ptl_timm.errors import InputError

__all__ = ['parse_device', 'resolve_device', 'DEVICE_HELP']

DEVICE_HELP = "'auto' (CUDA when available), 'cpu', 'cuda', 'cuda:1', ..."


def _count(device_type: str) -> int:
    """How many devices of ``device_type`` this process can use (kinds torch has no count of: 1)."""
    if device_type == 'cuda':
        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    if device_type == 'mps':
        return int(torch.backends.mps.is_available())
    backend = getattr(torch, device_type, None)
    if backend is not None and hasattr(backend, 'is_available') and hasattr(backend, 'device_count'):
        return backend.device_count() if backend.is_available() else 0
    return 1


def parse_device(device: Optional[Union[str, torch.device]] = None, local_rank: int = 0) -> torch.device:
    """``device`` as a ``torch.device``, whether or not this machine has it: None or 'auto' is this process's
    GPU (``cuda:<local_rank>``) when there is one, else the CPU; 'cuda' alone is ``cuda:<local_rank>`` (each
    rank of a torchrun job its own GPU). A string torch does not read raises ``InputError``. Alone, it checks
    a config meant for another machine (``train --print-config --device cuda`` on a laptop)."""
    given = 'auto' if device is None else str(device)
    if device is None or device == 'auto':
        device = f'cuda:{local_rank}' if torch.cuda.is_available() else 'cpu'
    elif device == 'cuda':
        device = f'cuda:{local_rank}'
    try:
        return torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise InputError(f'device {given!r} is not a device torch knows; use {DEVICE_HELP}') from None


def resolve_device(device: Optional[Union[str, torch.device]] = None, local_rank: int = 0) -> torch.device:
    """:func:`parse_device`'s device, which must be on this machine: one that is not (``cuda`` without a GPU,
    ``cuda:9`` on a machine with two) raises ``InputError``."""
    resolved = parse_device(device, local_rank)
    if resolved.type == 'cpu':
        return resolved
    given = 'auto' if device is None else str(device)
    count = _count(resolved.type)
    if count == 0:
        raise InputError(f"device {given!r}: this machine has no {resolved.type.upper()} device that torch can use; "
                         f"use 'cpu' (or 'auto')")
    if resolved.index is not None and resolved.index >= count:
        raise InputError(f'device {given!r}: this machine has {count} {resolved.type.upper()} device(s), '
                         f'{resolved.type}:0 to {resolved.type}:{count - 1}')
    return resolved
