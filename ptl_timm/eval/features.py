"""Saved features: named sets of embeddings with their identities, cameras and image paths.

One file holds one or more sets (``query``, ``gallery``, or ``images`` for a plain folder), so a
later ``ptl-timm eval`` or ``search`` needs no model. Two formats, chosen by the file suffix:
``.safetensors`` (tensors ``<set>.feats/.pids/.camids``, paths as JSON in the header metadata) and
``.npz`` (the same arrays plus ``<set>.paths``; loads with ``allow_pickle=False``). Both are written
atomically.
"""
import json
from pathlib import Path
from typing import Dict, List, NamedTuple

import numpy as np
import safetensors.torch
import torch

from ptl_timm.errors import InputError, reading
from ptl_timm.utils import PathLike, atomic_path

__all__ = ['FeatureSet', 'save_features', 'load_features', 'FEATURE_SUFFIXES']

FEATURE_SUFFIXES = ('.safetensors', '.npz')
_ARRAYS = ('feats', 'pids', 'camids')


class FeatureSet(NamedTuple):
    """Embeddings (N × D float32) of N images, their identities and cameras (-1: unknown) and paths."""
    feats: torch.Tensor
    pids: torch.Tensor
    camids: torch.Tensor
    paths: List[str]

    @property
    def has_labels(self) -> bool:
        """Every image has a known identity and camera (what the evaluation protocol needs)."""
        return bool(len(self.pids)) and bool((self.pids >= 0).all()) and bool((self.camids >= 0).all())


def _check_suffix(path: Path) -> None:
    if path.suffix not in FEATURE_SUFFIXES:
        raise InputError(f'features file {path} must end in {" or ".join(FEATURE_SUFFIXES)}')


def save_features(sets: Dict[str, FeatureSet], path: PathLike) -> Path:
    """Write the named feature sets to ``path`` (``.safetensors`` or ``.npz``) atomically."""
    path = Path(path)
    _check_suffix(path)
    tensors = {f'{name}.{field}': getattr(s, field).contiguous().cpu() for name, s in sets.items() for field in _ARRAYS}
    with atomic_path(path) as tmp:
        if path.suffix == '.safetensors':
            metadata = {f'{name}.paths': json.dumps(list(s.paths)) for name, s in sets.items()}
            safetensors.torch.save_file(tensors, str(tmp), metadata={'format': 'pt', **metadata})
        else:
            arrays = {key: t.numpy() for key, t in tensors.items()}
            arrays.update({f'{name}.paths': np.asarray(list(s.paths), dtype=str) for name, s in sets.items()})
            with open(tmp, 'wb') as f:
                np.savez(f, **arrays)
    return path


def load_features(path: PathLike) -> Dict[str, FeatureSet]:
    """The feature sets saved in ``path`` by :func:`save_features`, by name."""
    path = Path(path)
    _check_suffix(path)
    if not path.is_file():
        raise InputError(f'features file {path} does not exist; write it with `ptl-timm extract`')
    with reading(path, what='features file', fix='re-run `ptl-timm extract`'):
        if path.suffix == '.safetensors':
            tensors = safetensors.torch.load_file(str(path))
            with safetensors.safe_open(str(path), framework='pt') as f:
                metadata = f.metadata() or {}
            paths = {key: json.loads(value) for key, value in metadata.items() if key.endswith('.paths')}
        else:
            with np.load(path, allow_pickle=False) as data:
                tensors = {key: torch.from_numpy(data[key]) for key in data.files if not key.endswith('.paths')}
                paths = {key: data[key].tolist() for key in data.files if key.endswith('.paths')}
    names = sorted({key.rsplit('.', 1)[0] for key in tensors})
    missing = [f'{n}.{field}' for n in names for field in _ARRAYS if f'{n}.{field}' not in tensors]
    if not names or missing:
        raise InputError(f'{path} is not a ptl_timm features file (missing {missing or "every feature set"}); '
                         f'write it with `ptl-timm extract`')
    return {n: FeatureSet(*(tensors[f'{n}.{field}'] for field in _ARRAYS), paths.get(f'{n}.paths', [])) for n in names}
