"""Saving and loading models in timm's Hugging Face layout (``config.json`` + ``model.safetensors``).

One folder format serves everything: training checkpoints, ``local-dir:`` folders, Hub repos and
the publishing tool. ``config.json`` is timm's (architecture, ``model_args``, ``pretrained_cfg``),
so ``timm.create_model('local-dir:<folder>', pretrained=True)`` rebuilds the model once
``ptl_timm`` is imported; weights are safetensors only, and the BConv-Cell latent state is never
part of them (it is a non-persistent buffer).
"""
import os
from pathlib import Path
from typing import Any, Dict, Optional, Union

import safetensors.torch
import timm
import torch.nn as nn
from timm.models._hub import load_model_config_from_path, save_config_for_hf

from ptl_timm.utils import atomic_path
from ptl_timm.weights import require_published

__all__ = ['save_pretrained', 'load_model', 'CONFIG_NAME', 'WEIGHTS_NAME', 'DATASET_METADATA_KEY']

CONFIG_NAME = 'config.json'
WEIGHTS_NAME = 'model.safetensors'
DATASET_METADATA_KEY = 'ptl_timm_dataset'  # safetensors header: the dataset a checkpoint was trained on
_MODEL_PREFIXES = ('hf-hub:', 'local-dir:', 'timm/')


def save_pretrained(
        model: nn.Module,
        directory: Union[str, os.PathLike],
        model_args: Optional[Dict[str, Any]] = None,
        metadata: Optional[Dict[str, str]] = None,
) -> Path:
    """Write ``model`` to ``directory`` as ``model.safetensors`` + timm ``config.json``, each atomically.

    ``model_args`` supplements the constructor arguments timm recorded at ``create_model`` time;
    ``metadata`` (str → str) is stored in the safetensors header.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state_dict = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(directory / WEIGHTS_NAME) as tmp:
        safetensors.torch.save_file(state_dict, str(tmp), metadata={'format': 'pt', **(metadata or {})})
    with atomic_path(directory / CONFIG_NAME) as tmp:
        save_config_for_hf(model, str(tmp), model_args=model_args)
    return directory


def _is_path_like(source: str) -> bool:
    return source.startswith(('.', '/', '~')) or os.sep in source or source.endswith('.safetensors')


def load_model(source: Union[str, os.PathLike], pretrained: Optional[bool] = None, **kwargs) -> nn.Module:
    """Build a model from any of the places a ReID model comes from.

    ``source`` is one of:
      * a folder with ``config.json`` + ``model.safetensors`` (a training checkpoint or a published folder);
      * a ``.safetensors`` file beside such a ``config.json``;
      * ``hf-hub:<org>/<name>`` or ``local-dir:<folder>``;
      * a timm model name, optionally with a pretrained tag (``ptl_densenet161.market1501``); a tag
        with no published weights (not in ``weights/manifest.json``) raises ``UnpublishedWeightsError``.

    ``pretrained`` defaults to True except for an untagged model name (which would otherwise start a
    download of ImageNet weights). ``kwargs`` go to ``timm.create_model`` (e.g. ``num_classes=0``).
    """
    import ptl_timm  # noqa: F401  (registers the architectures a config.json may name)

    source = os.fspath(source)
    path = Path(source).expanduser()
    if path.is_dir():
        if not (path / CONFIG_NAME).is_file():
            raise FileNotFoundError(
                f'{path} has no {CONFIG_NAME}: a model folder holds config.json + {WEIGHTS_NAME} '
                f'(written by ptl_timm.hub.save_pretrained, `ptl-timm train` or `ptl-timm publish`)')
        return timm.create_model(f'local-dir:{path}', pretrained=True if pretrained is None else pretrained, **kwargs)
    if path.suffix == '.safetensors':
        if not path.is_file():
            raise FileNotFoundError(f'weights file {path} does not exist')
        if not (path.parent / CONFIG_NAME).is_file():
            raise FileNotFoundError(
                f'{path} has no {CONFIG_NAME} beside it, so its architecture is unknown; build the model with '
                f"timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file='{path}'))")
        pretrained_cfg, architecture, model_args = load_model_config_from_path(path.parent)
        pretrained_cfg.update(source='', file=str(path))
        return timm.create_model(
            architecture, pretrained=True if pretrained is None else pretrained, pretrained_cfg=pretrained_cfg,
            **dict(model_args, **kwargs))
    if _is_path_like(source):
        raise FileNotFoundError(f'model source {source!r} looks like a path but does not exist')
    if pretrained is None:
        pretrained = source.startswith(_MODEL_PREFIXES) or '.' in source
    if not source.startswith(_MODEL_PREFIXES):
        require_published(source)
    return timm.create_model(source, pretrained=pretrained, **kwargs)
