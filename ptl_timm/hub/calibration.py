"""Operating points as they travel with the weights: the ``config.json`` key that holds a calibration,
its reader and writer, and the model card section that shows it.

The calibration itself (same-person thresholds at target FPRs, the stored fields) is measured by
:mod:`ptl_timm.eval.calibration`; it lives here, beside the folder format, because every copy of a model
(a checkpoint, a published Hub folder) carries it, and publishing copies it without evaluating anything.
"""
import json
import os
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

from ptl_timm.errors import CheckpointError, InputError, reading
from ptl_timm.utils import PathLike, atomic_save_json
from .folder import CONFIG_NAME, HUB_PREFIX, LOCAL_DIR_PREFIX, TIMM_HUB_PREFIX, WEIGHTS_NAME
from .pretrained import require_downloadable

__all__ = ['CALIBRATION_KEY', 'checkpoint_config', 'read_calibration', 'write_calibration', 'calibration_card']

CALIBRATION_KEY = 'reid_calibration'


def _config_file(source: PathLike) -> Optional[Path]:
    """The local ``config.json`` of a checkpoint folder, ``local-dir:`` folder or ``.safetensors`` file."""
    source = os.fspath(source)
    path = Path(source[len(LOCAL_DIR_PREFIX):] if source.startswith(LOCAL_DIR_PREFIX) else source).expanduser()
    if path.suffix == '.safetensors':
        path = path.parent
    return path / CONFIG_NAME if path.is_dir() else None


def checkpoint_config(source: PathLike) -> Path:
    """The ``config.json`` a calibration of ``source`` is written into; ``InputError`` when there is none."""
    config = _config_file(source)
    if config is None or not config.is_file():
        raise InputError(f'{source} is not a checkpoint folder with a {CONFIG_NAME}: a calibration is written into the '
                         f'config.json of the weights it was measured for; save the model to a folder first '
                         f'(ptl_timm.hub.save_pretrained, or `ptl-timm publish` of a Hub download)')
    if os.fspath(source).endswith('.safetensors') and Path(source).name != WEIGHTS_NAME:
        raise InputError(f'{source} is not the {WEIGHTS_NAME} of {config.parent}: the {CONFIG_NAME} there belongs to '
                         f'those weights, so a calibration of these cannot be stored in it; save them to their own '
                         f'folder first (ptl_timm.hub.save_pretrained)')
    return config


def read_calibration(source: PathLike) -> Optional[Dict[str, Any]]:
    """The calibration in the ``config.json`` of ``source`` (a checkpoint folder, ``local-dir:``, a
    ``.safetensors`` file beside its config, or ``hf-hub:``), None if it has none."""
    source = os.fspath(source)
    if source.startswith((HUB_PREFIX, TIMM_HUB_PREFIX)):
        from huggingface_hub import hf_hub_download
        repo_id = source[len(HUB_PREFIX):] if source.startswith(HUB_PREFIX) else source
        require_downloadable(repo_id, (CONFIG_NAME,), what=f'the config of {source}')
        config = Path(hf_hub_download(repo_id, CONFIG_NAME))
    else:
        config = _config_file(source)
        local = Path(source[len(LOCAL_DIR_PREFIX):] if source.startswith(LOCAL_DIR_PREFIX) else source).expanduser()
        if config is None and (source.startswith(LOCAL_DIR_PREFIX) or os.sep in source) and not local.exists():
            raise CheckpointError(f'{source} does not exist: pass a checkpoint folder (e.g. runs/NAME/best)')
        if config is None or not config.is_file():
            return None
    with reading(config, what='model config', fix='re-save the checkpoint or restore the file'):
        data = json.loads(config.read_text())
    return data.get(CALIBRATION_KEY) if isinstance(data, dict) else None


def write_calibration(folder: PathLike, calibration: Mapping[str, Any]) -> Path:
    """Store ``calibration`` under :data:`CALIBRATION_KEY` in ``folder``'s ``config.json``, every other key kept,
    replaced atomically (a crash leaves the old or the new file)."""
    config = checkpoint_config(folder)
    with reading(config, what='model config', fix='re-save the checkpoint or restore the file'):
        data = json.loads(config.read_text())
    data[CALIBRATION_KEY] = dict(calibration)
    atomic_save_json(data, config)
    return config


def calibration_card(calibration: Mapping[str, Any]) -> List[str]:
    """Markdown lines of the model card's "Operating points" section."""
    heldout, protocol = 'heldout' in calibration, calibration['protocol_description']
    header = '| target FPR | threshold | TPR (%) |' + (' held-out FPR | held-out TPR (%) |' if heldout else '')
    lines = [
        '## Operating points', '',
        f'Calibrated by `ptl-timm calibrate` on {calibration["dataset"]} ({calibration["split"]}: '
        f'{calibration["num_images"]} images of {calibration["num_identities"]} identities, '
        f'{calibration["num_pairs"]["genuine"]:,} genuine and {calibration["num_pairs"]["impostor"]:,} impostor pairs); '
        f'{calibration["metric"]} distance, {calibration["decision"]}. {protocol[:1].upper()}{protocol[1:]}.',
        '', header, '| --- | --- | --- |' + (' --- | --- |' if heldout else '')]
    for p in calibration['points']:
        row = f'| {p["fpr"]:g} | {p["threshold"]:.4f} | {100 * p["tpr"]:.2f} |'
        if heldout:
            row += f' {p["heldout_fpr"]:.2e} | {100 * p["heldout_tpr"]:.2f} |'
        lines.append(row)
    if heldout:
        h = calibration['heldout']
        lines += ['', f'Held-out: {h["num_images"]} images of {h["num_identities"]} other identities '
                      f'({h["num_pairs"]["impostor"]:,} impostor pairs), never used to set the thresholds.']
    lines += ['', f'The thresholds are stored in `config.json` under `"{CALIBRATION_KEY}"`; '
                  '`ptl-timm verify --model MODEL --images A.jpg B.jpg --fpr 0.001` and `ptl_timm.verify(...)` use them. '
                  'They hold for data like the calibration set: measure again on your own cameras.']
    return lines
