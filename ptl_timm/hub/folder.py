"""Saving and loading models in timm's Hugging Face layout (``config.json`` + ``model.safetensors``).

One folder format serves everything: training checkpoints, ``local-dir:`` folders, Hub repos and
the publishing tool. ``config.json`` is timm's (architecture, ``model_args``, ``pretrained_cfg``),
so ``timm.create_model('local-dir:<folder>', pretrained=True)`` rebuilds the model once
``ptl_timm`` is imported; weights are safetensors only, and the BConv-Cell latent state is never
part of them (it is a non-persistent buffer).

``load_model`` is the one reader every tool uses. Unlike timm's loader, which turns non-strict as
soon as the classifier changes, it loads strictly: a tensor missing from, or foreign to, the
architecture that ``config.json`` names is an error naming the tensors; only a classifier dropped
on purpose (another ``num_classes``) may be absent. The model keeps the checkpoint's
``pretrained_cfg``, so its input size and normalisation are those it was trained with.
"""
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple

import safetensors.torch
import timm
import torch
import torch.nn as nn
from timm.models import load_model_config_from_hf, load_state_dict_from_hf
# timm's only public writer of config.json also writes the weights (save_for_hf), without the safetensors
# metadata a checkpoint carries; this is ptl_timm's one private timm import (test_imports names it)
from timm.models._hub import save_config_for_hf

from ptl_timm import models  # noqa: F401  (registers the architectures a config.json may name)
from ptl_timm.errors import CheckpointError, InputError, reading
from ptl_timm.models.registry import check_model_args, check_model_name
from ptl_timm.utils import PathLike, atomic_path, readable_folder
from .pretrained import check_pretrained_source, require_downloadable

__all__ = [
    'save_pretrained', 'load_model', 'check_model_source', 'load_weights_strict', 'set_preprocessing', 'check_hub_id',
    'weights_digest', 'CONFIG_NAME', 'WEIGHTS_NAME',
    'TRAIN_STATE_NAME', 'DATASET_METADATA_KEY', 'HUB_PREFIX', 'LOCAL_DIR_PREFIX',
]

CONFIG_NAME = 'config.json'
WEIGHTS_NAME = 'model.safetensors'
TRAIN_STATE_NAME = 'train_state.pt'  # beside the weights in a training checkpoint (optimizer, metrics, ...)
DATASET_METADATA_KEY = 'ptl_timm_dataset'  # safetensors header: the dataset a checkpoint was trained on
HUB_PREFIX = 'hf-hub:'
LOCAL_DIR_PREFIX = 'local-dir:'
TIMM_HUB_PREFIX = 'timm/'  # timm's short form of hf-hub:timm/...
ModelSpec = Tuple[Dict[str, Any], str, Dict[str, Any]]  # pretrained_cfg, architecture, model_args


def save_pretrained(
        model: nn.Module,
        directory: PathLike,
        model_args: Optional[Dict[str, Any]] = None,
        metadata: Optional[Dict[str, str]] = None,
) -> Path:
    """Write ``model`` to ``directory`` as ``model.safetensors`` + timm ``config.json``, each atomically.

    ``model_args`` supplements the constructor arguments timm recorded at ``create_model`` time;
    ``metadata`` (str → str) is stored in the safetensors header. ``config.json`` carries
    ``model.pretrained_cfg``, so set the preprocessing first (:func:`set_preprocessing`).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state_dict = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(directory / WEIGHTS_NAME) as tmp:
        safetensors.torch.save_file(state_dict, str(tmp), metadata={'format': 'pt', **(metadata or {})})
    with atomic_path(directory / CONFIG_NAME) as tmp:
        save_config_for_hf(model, str(tmp), model_args=model_args)
    return directory


def set_preprocessing(
        model: nn.Module,
        img_size: Sequence[int],
        mean: Optional[Sequence[float]] = None,
        std: Optional[Sequence[float]] = None,
        interpolation: str = 'bilinear',
) -> None:
    """Record in ``model.pretrained_cfg`` the eval preprocessing its weights were trained for.

    ReID resizes a person crop to exactly ``img_size`` (height, width), with no aspect-preserving
    crop: timm's ``crop_mode='squash'`` at ``crop_pct=1.0``. Saved checkpoints carry it in
    ``config.json``, so every reader and ``timm.data.resolve_data_config(model=...)`` use it.
    """
    cfg = dict(getattr(model, 'pretrained_cfg', None) or {})
    channels = (cfg.get('input_size') or (3,))[0]
    cfg.update(input_size=(channels, int(img_size[0]), int(img_size[1])), interpolation=interpolation,
               crop_pct=1.0, crop_mode='squash')
    if mean is not None:
        cfg['mean'] = tuple(mean)
    if std is not None:
        cfg['std'] = tuple(std)
    model.pretrained_cfg = cfg


def _classifier_prefixes(model_keys: Sequence[str], classifiers: Sequence[str]) -> Tuple[str, ...]:
    """Key prefixes of a dropped classifier: each classifier module, and each module above it that
    the model no longer has (an embedding model replaces the whole head, hidden layers included)."""
    prefixes = []
    for name in classifiers:
        parts = name.split('.')
        prefixes.append(f'{name}.')
        for depth in range(1, len(parts)):
            parent = '.'.join(parts[:depth]) + '.'
            if not any(k.startswith(parent) for k in model_keys):
                prefixes.append(parent)
                break
    return tuple(prefixes)


def weights_digest(model: nn.Module) -> str:
    """sha256 of a model's weights: every state-dict tensor by name, dtype, shape and bytes (the latent
    state is none of them). What a calibration or a features file records of the weights it was measured
    with, so that another model's thresholds or embeddings are refused; the same on every device."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        flat = tensor.detach().to('cpu').contiguous().reshape(-1)
        digest.update(f'{name}|{flat.dtype}|{tuple(tensor.shape)}|'.encode())
        digest.update(memoryview(flat.view(torch.uint8).numpy()))
    return digest.hexdigest()


def load_weights_strict(
        model: nn.Module,
        state_dict: Mapping[str, torch.Tensor],
        source: str,
        drop_classifier: bool = False,
        skip: Sequence[str] = (),
        fix: str = 'pair the weights with the config.json they were saved with',
) -> None:
    """Load ``state_dict`` into ``model``: every tensor must be there with its shape, nothing else. The
    one strict loader of every reader (model folders, the Hub, training checkpoints).

    With ``drop_classifier`` the classifier modules named in ``model.pretrained_cfg['classifier']``
    (and a head the model replaced) may be missing or extra, as when ``num_classes`` changes; the
    modules named in ``skip`` are left out as well (a classifier re-initialised for new identities).
    Anything else raises ``CheckpointError`` naming ``source``, the tensors and ``fix``; ``model`` is
    then unchanged.
    """
    own = model.state_dict()
    classifiers = (getattr(model, 'pretrained_cfg', None) or {}).get('classifier') or ()
    classifiers = (classifiers,) if isinstance(classifiers, str) else tuple(classifiers)
    skipped = (_classifier_prefixes(list(own), classifiers) if drop_classifier else ()) + tuple(
        f'{name}.' for name in skip)

    def kept(key: str) -> bool:
        return not key.startswith(skipped)

    missing = sorted(k for k in own if kept(k) and k not in state_dict)
    unexpected = sorted(k for k in state_dict if kept(k) and k not in own)
    reshaped = sorted(f'{k} {tuple(state_dict[k].shape)} vs {tuple(own[k].shape)}'
                      for k in own if kept(k) and k in state_dict and state_dict[k].shape != own[k].shape)
    if missing or unexpected or reshaped:
        architecture = (getattr(model, 'pretrained_cfg', None) or {}).get('architecture', type(model).__name__)
        details = '; '.join(f'{len(keys)} {what} (e.g. {", ".join(keys[:3])})' for what, keys in (
            ('missing', missing), ('unexpected', unexpected), ('reshaped', reshaped)) if keys)
        raise CheckpointError(
            f'the weights of {source} do not fit the {architecture} model its config describes: {details}; {fix}')
    model.load_state_dict({k: v for k, v in state_dict.items() if kept(k)}, strict=not skipped)


def _read_folder_spec(folder: Path) -> ModelSpec:
    config_file = folder / CONFIG_NAME
    with reading(config_file, what='model config', fix='re-save the checkpoint or restore the file'):
        config = json.loads(config_file.read_text())
    problem = ('no architecture' if not isinstance(config, dict) or not config.get('architecture')
               else 'no pretrained_cfg (the input size and normalisation the weights were trained with)'
               if not isinstance(config.get('pretrained_cfg'), dict)
               else 'model_args that are not a mapping' if not isinstance(config.get('model_args', {}), dict) else '')
    if problem:
        raise CheckpointError(
            f'{config_file} is not a complete timm config.json: it has {problem}; restore the {CONFIG_NAME} saved '
            f'with the weights, or re-save the model with ptl_timm.hub.save_pretrained')
    pretrained_cfg = dict(config['pretrained_cfg'], file=str(folder), source=LOCAL_DIR_PREFIX[:-1])
    if 'num_classes' in config:
        pretrained_cfg['num_classes'] = config['num_classes']
    return pretrained_cfg, config['architecture'], dict(config.get('model_args', {}))


def _build(spec: ModelSpec, source: str, state_dict: Callable[[], Dict[str, torch.Tensor]], pretrained: bool,
           kwargs: Dict[str, Any]) -> nn.Module:
    """The model a config describes, with its ``pretrained_cfg``; weights loaded strictly unless not
    ``pretrained``."""
    pretrained_cfg, architecture, model_args = spec
    pretrained_cfg = {k: tuple(v) if isinstance(v, list) else v for k, v in pretrained_cfg.items()}  # JSON lists
    if not timm.is_model(architecture):
        raise CheckpointError(
            f'{source}: {CONFIG_NAME} names architecture {architecture!r}, which is not a registered timm model '
            f'(a model of another package, or not a model folder)')
    try:
        check_model_args(architecture, model_args)
    except InputError as e:
        raise CheckpointError(f'{source}: the model_args of its {CONFIG_NAME} do not build {architecture}: {e}') from None
    model = timm.create_model(architecture, pretrained=False, pretrained_cfg=pretrained_cfg,
                              **dict(model_args, **kwargs))
    if pretrained:
        saved_classes = pretrained_cfg.get('num_classes')
        drop = 'num_classes' in kwargs and saved_classes is not None and kwargs['num_classes'] != saved_classes
        load_weights_strict(model, state_dict(), source, drop_classifier=drop)
    return model


def _load_folder(folder: Path, pretrained: bool, kwargs: Dict[str, Any], weights: Optional[Path] = None) -> nn.Module:
    weights = weights or folder / WEIGHTS_NAME
    for required in (folder / CONFIG_NAME, weights):
        if not required.is_file():
            raise CheckpointError(
                f'{folder} is not a model folder: it has no {required.name} (a model folder holds {CONFIG_NAME} + '
                f'{WEIGHTS_NAME}, written by ptl_timm.hub.save_pretrained, `ptl-timm train` or `ptl-timm publish`)')

    def state_dict() -> Dict[str, torch.Tensor]:
        with reading(weights, what='model weights', fix='re-save the checkpoint or restore the file'):
            return safetensors.torch.load_file(str(weights))
    return _build(_read_folder_spec(folder), str(weights), state_dict, pretrained, kwargs)


def check_hub_id(repo_id: str, what: str = 'Hub id') -> None:
    """Raise ``InputError`` unless ``repo_id`` (``ORG/NAME``, optionally ``@REVISION``) is a valid Hub
    repository name: no path characters such as ``..`` that would reach outside the Hub cache."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id.split('@', 1)[0])
    except HFValidationError:
        raise InputError(f"{what} {repo_id!r} is not a Hub repository name: spell it ORG/NAME (letters, digits, '-', "
                         f"'_' and '.', no '..' or '--'), e.g. {HUB_PREFIX}timm/resnet50.a1_in1k") from None


def _load_hub(repo_id: str, pretrained: bool, kwargs: Dict[str, Any]) -> nn.Module:
    require_downloadable(repo_id, (CONFIG_NAME,), what=f'the config of {HUB_PREFIX}{repo_id}')
    spec = load_model_config_from_hf(repo_id)

    def state_dict() -> Dict[str, torch.Tensor]:
        require_downloadable(repo_id, (WEIGHTS_NAME, 'pytorch_model.bin'), what=f'the weights of {HUB_PREFIX}{repo_id}')
        with reading(f'{HUB_PREFIX}{repo_id}', what='model weights', fix='clear it from the Hub cache and download again'):
            return load_state_dict_from_hf(repo_id, weights_only=True)
    return _build(spec, f'{HUB_PREFIX}{repo_id}', state_dict, pretrained, kwargs)


def _is_path_like(source: str) -> bool:
    return source.startswith(('.', '/', '~')) or os.sep in source or source.endswith('.safetensors')


def check_model_source(source: PathLike) -> None:
    """The check of ``source`` that needs no file: a Hub id has no path characters, a timm name (what is
    neither a path nor an existing folder) is in the registry, closest names suggested. ``load_model``
    makes it first; the command line makes it as it parses ``--model``."""
    source = os.fspath(source)
    if source.startswith(HUB_PREFIX):
        check_hub_id(source[len(HUB_PREFIX):])
    elif source.startswith(TIMM_HUB_PREFIX):
        check_hub_id(source)
    elif not source.startswith(LOCAL_DIR_PREFIX) and not _is_path_like(source) and not Path(source).is_dir():
        check_model_name(source)


def load_model(source: PathLike, random_weights: bool = False, **kwargs) -> nn.Module:
    """Build a model from any of the places a ReID model comes from.

    ``source`` is one of (prefixes are honoured before anything is taken for a path):
      * ``local-dir:<folder>`` or a folder with ``config.json`` + ``model.safetensors`` (a training
        checkpoint or a published folder);
      * a ``.safetensors`` file beside such a ``config.json``;
      * ``hf-hub:<org>/<name>`` or ``timm/<name>`` (from the Hub, or its local cache when offline);
      * a timm model name with a pretrained tag (``ptl_densenet161.market1501``); a tag with no published
        weights (not in ``ptl_timm/weights_manifest.json``) raises ``UnpublishedWeightsError``.

    Weights from a folder, file or ``hf-hub:`` load strictly (see the module notes) and the model
    keeps the saved ``pretrained_cfg`` (input size, normalisation). A bare model name (no tag) names no
    weights: it is refused, so that no reader scores random weights by accident, unless ``random_weights``
    asks for them; ``random_weights`` builds the architecture any source names without loading weights
    (for benchmarking speed or memory). ``kwargs`` go to ``timm.create_model`` (e.g. ``num_classes=0``
    drops the classifier).
    """
    source = os.fspath(source)
    check_model_source(source)
    pretrained = not random_weights
    if source.startswith(LOCAL_DIR_PREFIX):
        folder = Path(source[len(LOCAL_DIR_PREFIX):]).expanduser()
        if not folder.is_dir():
            raise CheckpointError(f'{source}: folder {folder} does not exist')
        return _load_folder(folder, pretrained, kwargs)
    if source.startswith((HUB_PREFIX, TIMM_HUB_PREFIX)):
        return _load_hub(source[len(HUB_PREFIX):] if source.startswith(HUB_PREFIX) else source, pretrained, kwargs)
    path = readable_folder(Path(source).expanduser())  # the old folder while a writer swaps it
    if path.is_dir():
        return _load_folder(path, pretrained, kwargs)
    if path.suffix == '.safetensors':
        if not path.is_file():
            raise CheckpointError(f'weights file {path} does not exist')
        if not (path.parent / CONFIG_NAME).is_file():
            raise CheckpointError(
                f'{path} has no {CONFIG_NAME} beside it, so its architecture is unknown; build the model with '
                f"timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file='{path}'))")
        return _load_folder(path.parent, pretrained, kwargs, weights=path)
    if _is_path_like(source):
        raise CheckpointError(
            f'model source {source!r} looks like a path but does not exist (Hub ids are spelled hf-hub:ORG/NAME)')
    architecture, _, tag = source.partition('.')
    if not tag and pretrained:
        raise InputError(
            f'{source!r} is a model name without weights, so it would be scored with random weights: point at '
            f'trained weights (a run folder such as runs/NAME/best, local-dir:FOLDER, hf-hub:ORG/NAME or a '
            f'published {source}.TAG, listed by `ptl-timm info`), or ask for random weights explicitly for '
            f'benchmarking (--random-weights; Python: random_weights=True)')
    check_pretrained_source(architecture, pretrained, dict(pretrained_cfg=tag) if tag else {})
    return timm.create_model(source, pretrained=pretrained, **kwargs)
