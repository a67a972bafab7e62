"""A ReID training split in ImageFolder layout, for timm's own ``train.py`` / ``validate.py``.

``<out>/train/<pid>/...`` and ``<out>/validation/<pid>/...``: one class folder per training
identity (zero-padded, so timm's natural sort gives class index = pid), with ``val_per_id`` images
of every identity that has more than that held out for validation. timm's scripts then train the
PTL model as an identity classifier (``--num-classes`` = number of identities) and report
classification accuracy on the held-out images; ReID retrieval metrics come from ``ptl-timm eval``.
"""
import os
import shutil
from collections import defaultdict
from pathlib import Path
from typing import Dict, List

from ptl_timm.errors import DatasetError, InputError
from ptl_timm.utils import PathLike, atomic_folder, recover_folder
from .datasets import ReIDDataset, ReIDRecord

__all__ = ['export_imagefolder', 'LINK_MODES']

LINK_MODES = ('copy', 'symlink', 'hardlink')


def _place(source: str, target: Path, mode: str) -> None:
    if mode == 'symlink':
        target.symlink_to(Path(source).resolve())
    elif mode == 'hardlink':
        os.link(source, target)
    else:
        shutil.copy2(source, target)


def export_imagefolder(
        dataset: ReIDDataset,
        output: PathLike,
        val_per_id: int = 1,
        mode: str = 'copy',
        overwrite: bool = False,
) -> Dict[str, int]:
    """Write ``dataset.train`` as ``output/{train,validation}/<pid>/``; returns the counts.

    The folder is replaced whole (:func:`ptl_timm.utils.atomic_folder`): an interrupted export leaves
    the earlier folder or the new one complete, never a mix.
    """
    if mode not in LINK_MODES:
        raise InputError(f'mode must be one of {LINK_MODES}, got {mode!r}')
    if not dataset.train:
        raise DatasetError(f'dataset at {dataset.root} has an empty training split: nothing to export')
    output = recover_folder(output)
    if output.exists() and not overwrite:
        raise InputError(f'{output} already exists; choose another folder or pass overwrite (--overwrite)')
    by_id: Dict[int, List[ReIDRecord]] = defaultdict(list)
    for record in dataset.train:
        by_id[record.pid].append(record)
    width = max(5, len(str(max(by_id))))
    counts = {'classes': len(by_id), 'train': 0, 'validation': 0}
    with atomic_folder(output) as staging:
        for pid, records in sorted(by_id.items()):
            records = sorted(records, key=lambda r: r.path)
            held_out = val_per_id if len(records) > val_per_id else 0
            for split, chunk in (('train', records[:len(records) - held_out]),
                                 ('validation', records[len(records) - held_out:])):
                if not chunk:
                    continue
                folder = staging / split / f'{pid:0{width}d}'
                folder.mkdir(parents=True, exist_ok=True)
                for index, record in enumerate(chunk):
                    # camera and index keep names unique when two source folders share a file name
                    _place(record.path, folder / f'c{record.camid}_{index:04d}{Path(record.path).suffix}', mode)
                counts[split] += len(chunk)
    return counts
