"""Saved features: named sets of embeddings with their identities, cameras and image paths.

One file holds one or more sets (``query``, ``gallery``, or ``images`` for a plain folder), so a
later ``ptl-timm eval`` or ``search`` needs no model. Two formats, chosen by the file suffix:
``.safetensors`` (tensors ``<set>.feats/.pids/.camids``, paths as JSON in the header metadata) and
``.npz`` (the same arrays plus ``<set>.paths``; loads with ``allow_pickle=False``). Both are written
atomically. A file may also record how its embeddings were made (``extraction``: the weights' sha256,
input size, flip; :meth:`ptl_timm.eval.extract.FeatureExtractor.extraction`), so that embeddings of
another model or preprocessing are never ranked against it (:func:`check_same_extraction`).
"""
import json
from pathlib import Path
from typing import Any, Dict, List, Mapping, NamedTuple, Optional

import numpy as np
import safetensors.torch
import torch

from ptl_timm.errors import InputError, reading
from ptl_timm.utils import PathLike, atomic_path

__all__ = ['FeatureSet', 'save_features', 'load_features', 'saved_extraction', 'check_same_extraction',
           'FEATURE_SUFFIXES']

FEATURE_SUFFIXES = ('.safetensors', '.npz')
_ARRAYS = ('feats', 'pids', 'camids')
_EXTRACTION_KEY = 'extraction'


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


def save_features(sets: Dict[str, FeatureSet], path: PathLike, extraction: Optional[Mapping[str, Any]] = None) -> Path:
    """Write the named feature sets to ``path`` (``.safetensors`` or ``.npz``) atomically, with how they were
    extracted when given (see the module notes)."""
    path = Path(path)
    _check_suffix(path)
    tensors = {f'{name}.{field}': getattr(s, field).contiguous().cpu() for name, s in sets.items() for field in _ARRAYS}
    texts = {f'{name}.paths': json.dumps(list(s.paths)) for name, s in sets.items()}
    if extraction is not None:
        texts[_EXTRACTION_KEY] = json.dumps(dict(extraction))
    with atomic_path(path) as tmp:
        if path.suffix == '.safetensors':
            safetensors.torch.save_file(tensors, str(tmp), metadata={'format': 'pt', **texts})
        else:
            arrays = {key: t.numpy() for key, t in tensors.items()}
            arrays.update({key: np.asarray(json.loads(text) if key.endswith('.paths') else text, dtype=str)
                           for key, text in texts.items()})
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
                tensors = {key: torch.from_numpy(data[key]) for key in data.files
                           if not key.endswith('.paths') and key != _EXTRACTION_KEY}
                paths = {key: data[key].tolist() for key in data.files if key.endswith('.paths')}
    names = sorted({key.rsplit('.', 1)[0] for key in tensors})
    missing = [f'{n}.{field}' for n in names for field in _ARRAYS if f'{n}.{field}' not in tensors]
    if not names or missing:
        raise InputError(f'{path} is not a ptl_timm features file (missing {missing or "every feature set"}); '
                         f'write it with `ptl-timm extract`')
    return {n: FeatureSet(*(tensors[f'{n}.{field}'] for field in _ARRAYS), paths.get(f'{n}.paths', [])) for n in names}


def saved_extraction(path: PathLike) -> Optional[Dict[str, Any]]:
    """How the embeddings in ``path`` were extracted, as :func:`save_features` recorded it (None: not recorded)."""
    path = Path(path)
    with reading(path, what='features file', fix='re-run `ptl-timm extract`'):
        if path.suffix == '.safetensors':
            with safetensors.safe_open(str(path), framework='pt') as f:
                text = (f.metadata() or {}).get(_EXTRACTION_KEY)
        else:
            with np.load(path, allow_pickle=False) as data:
                text = str(data[_EXTRACTION_KEY]) if _EXTRACTION_KEY in data.files else None
        return json.loads(text) if text is not None else None


def check_same_extraction(saved: Optional[Mapping[str, Any]], current: Mapping[str, Any], path: PathLike) -> None:
    """Refuse to rank embeddings extracted as ``current`` describes against those saved in ``path``
    (recorded as ``saved``) when the weights, input size or flip differ: the distances would mean nothing.
    A file that recorded nothing cannot be checked (its width still is, by the search)."""
    if saved is None:
        return
    problems = [f'{key} {str(saved.get(key))[:12]} in the file, {str(value)[:12]} here'
                for key, value in current.items() if saved.get(key) != value]
    if problems:
        raise InputError(f'the features in {path} were extracted otherwise than the images to rank against them '
                         f'({"; ".join(problems)}); extract them again with this model and these options '
                         f'(ptl-timm extract)')
