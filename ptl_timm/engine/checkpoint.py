"""Training checkpoints: a folder = ``config.json`` + ``model.safetensors`` (``ptl_timm.hub``) +
``train_state.pt`` (optimizer, scheduler, RNG, sampler epoch, metrics).

A folder is replaced as a whole by :func:`ptl_timm.utils.atomic_folder` (written beside, synced, the
old one renamed aside, the new one renamed in). Readers here never write: they read the folder
:func:`ptl_timm.utils.readable_folder` names (the old one while a swap has it aside), so a reader
always finds a complete checkpoint and never moves one under a writer; only the writer repairs an
interrupted swap. ``train_state.pt`` is read with
``torch.load(weights_only=True)``: it holds tensors, numbers, strings, lists and dicts only.
"""
import json
import os
import random
import shutil
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import numpy as np
import safetensors
import safetensors.torch
import torch
import torch.nn as nn

from ptl_timm.errors import CheckpointError, reading
from ptl_timm.hub import CONFIG_NAME, TRAIN_STATE_NAME, WEIGHTS_NAME, load_weights_strict, save_pretrained
from ptl_timm.utils import PathLike, atomic_folder, atomic_path, readable_folder
from .config import SET_BY_TRAINER

__all__ = [
    'TRAIN_STATE_NAME', 'CheckpointError', 'save_checkpoint', 'write_train_state', 'copy_weights', 'load_train_state',
    'read_checkpoint_info', 'load_checkpoint_weights', 'rng_state', 'set_rng_state',
]



def save_checkpoint(
        path: PathLike,
        model: nn.Module,
        train_state: Optional[Dict[str, Any]] = None,
        metadata: Optional[Dict[str, str]] = None,
) -> Path:
    """Write ``model`` (and ``train_state``) as the checkpoint folder ``path``, replacing it whole."""
    with atomic_folder(path) as staging:
        save_pretrained(model, staging, metadata=metadata)
        if train_state is not None:
            write_train_state(staging, train_state)
    return Path(path)


def write_train_state(path: PathLike, train_state: Dict[str, Any]) -> None:
    """Replace the ``train_state.pt`` of checkpoint folder ``path`` (its weights unchanged): the
    evaluation results of an epoch saved before it was evaluated."""
    with atomic_path(Path(path) / TRAIN_STATE_NAME) as tmp:
        torch.save(train_state, tmp)


def copy_weights(source: PathLike, path: PathLike) -> Path:
    """Make checkpoint folder ``path`` hold the weights of ``source`` (``best/`` from ``last/``):
    hard links where the file system allows (no second write of a large file), else copies."""
    source = readable_folder(source)
    with atomic_folder(path) as staging:
        for name in (CONFIG_NAME, WEIGHTS_NAME):
            try:
                os.link(source / name, staging / name)
            except OSError:
                shutil.copy2(source / name, staging / name)
    return Path(path)


def _require_folder(path: Path) -> None:
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        if not (path / name).is_file():
            raise CheckpointError(
                f'{path} is not a checkpoint folder: it has no {name} (a checkpoint holds {CONFIG_NAME} + '
                f'{WEIGHTS_NAME}, written by `ptl-timm train` or ptl_timm.hub.save_pretrained)')


def load_train_state(path: PathLike) -> Dict[str, Any]:
    """The training state of checkpoint folder ``path`` (for ``--resume``)."""
    path = readable_folder(path)
    _require_folder(path)
    state_file = path / TRAIN_STATE_NAME
    if not state_file.is_file():
        raise CheckpointError(f'{path} holds weights only (no {TRAIN_STATE_NAME}), so a run cannot resume from it')
    with reading(state_file, what='training state', fix='the run cannot resume from it; start it again with --overwrite'):
        return torch.load(state_file, map_location='cpu', weights_only=True)


def read_checkpoint_info(path: PathLike) -> Dict[str, Any]:
    """Architecture, model_args and the safetensors metadata (dataset, classes) of a checkpoint."""
    path = readable_folder(path)
    _require_folder(path)
    with reading(path / CONFIG_NAME, what='checkpoint config'):
        config = json.loads((path / CONFIG_NAME).read_text())
    with reading(path / WEIGHTS_NAME, what='checkpoint weights'):
        with safetensors.safe_open(str(path / WEIGHTS_NAME), framework='pt') as f:
            metadata = f.metadata() or {}
    return dict(architecture=config.get('architecture'), model_args=config.get('model_args', {}),
                num_classes=config.get('num_classes'), metadata=metadata)


def load_checkpoint_weights(model: nn.Module, path: PathLike, skip: Tuple[str, ...] = ()) -> None:
    """Load the weights of checkpoint ``path`` into ``model``, the modules named in ``skip`` excepted
    (the classifier being re-initialised), with the one strict loader: anything else that does not
    match is a ``CheckpointError`` naming both architectures, and ``model`` is left unchanged."""
    path = readable_folder(path)
    _require_folder(path)
    with reading(path / WEIGHTS_NAME, what='checkpoint weights'):
        state_dict = safetensors.torch.load_file(str(path / WEIGHTS_NAME))
    info = read_checkpoint_info(path)
    model_args = {k: v for k, v in info['model_args'].items() if k not in SET_BY_TRAINER}  # what a config may set
    load_weights_strict(model, state_dict, f'checkpoint {path}', skip=skip, fix=(
        f'the checkpoint holds a {info["architecture"]} model (model_args {model_args}): set model/model_args '
        f"to the checkpoint's"))


def rng_state() -> Dict[str, Any]:
    """Every random generator a training step draws from, as weights_only-loadable values."""
    np_state = np.random.get_state()
    return dict(
        torch=torch.get_rng_state(),
        cuda=torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        numpy=[np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        python=random.getstate(),
    )


def set_rng_state(state: Dict[str, Any]) -> None:
    torch.set_rng_state(state['torch'])
    if state['cuda'] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state['cuda'])
    name, keys, *rest = state['numpy']
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    version, internal, gauss = state['python']
    random.setstate((version, tuple(internal), gauss))
