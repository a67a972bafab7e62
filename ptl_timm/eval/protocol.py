"""Which matches do not count: the exclusion rule of an evaluation, chosen from the data and stated.

The Market-1501 protocol removes, for each query, the gallery images of its identity taken by its own
camera: those are near-duplicates (same view, same moment) that any model finds, and counting them
inflates every metric. It needs a camera id for every image. A user's own data often has none (a
``folder`` dataset whose identity folders hold the images directly, images whose names carry no
camera); refusing them leaves the user with no number, and silently treating the missing camera as
one shared camera would remove every true match. So the rule is named:

* ``camera``: same identity and same camera is excluded (the standard protocol; every camera known).
  Any grouping key works in the camera's place, e.g. a sequence or video id, which excludes matches
  from the query's own sequence: the ``folder`` layout's second folder level is that key.
* ``self``: only the query image itself (the same file, by resolved path) is excluded; matches from
  the same camera or sequence count, so numbers are higher than under ``camera`` and are not
  comparable with published ones.

``resolve_protocol`` returns, for each set, the exclusion key that takes the camera id's place in the
evaluators (:mod:`ptl_timm.eval.metrics`, :mod:`ptl_timm.eval.calibration`), and the sentence to print
with the result.
"""
import os
from typing import List, NamedTuple, Sequence, Tuple

import torch

from ptl_timm.errors import InputError
from .features import FeatureSet

__all__ = ['PROTOCOLS', 'DESCRIPTIONS', 'Protocol', 'auto_protocol', 'resolve_protocol']

PROTOCOLS = ('auto', 'camera', 'self')
DESCRIPTIONS = {
    'camera': 'camera protocol: same identity and same camera (or sequence) is excluded, as in Market-1501',
    'self': 'no-camera protocol: only the query image itself (the same file) is excluded; same-camera matches count, '
            'so the numbers are higher than under the camera protocol and not comparable with published ones',
}


class Protocol(NamedTuple):
    """The rule applied (``camera`` or ``self``), its sentence, and one exclusion key tensor per set."""
    name: str
    description: str
    keys: Tuple[torch.Tensor, ...]


def _file_keys(sets: Sequence[FeatureSet]) -> List[torch.Tensor]:
    """One key per distinct file over all sets (an image without a path is a file of its own)."""
    numbering: dict = {}
    keys = [torch.tensor([numbering.setdefault(os.path.realpath(p), len(numbering)) for p in s.paths], dtype=torch.int64)
            if len(s.paths) == len(s.pids) else None for s in sets]
    start = len(numbering)
    for i, s in enumerate(sets):
        if keys[i] is None:
            keys[i] = torch.arange(start, start + len(s.pids))
            start += len(s.pids)
    return keys


def auto_protocol(unknown_cams: int, total: int) -> str:
    """What ``auto`` picks for ``total`` images of which ``unknown_cams`` have no camera: ``camera`` when every
    image has one, ``self`` when none has; a camera known for some images only is refused (which rule would be
    honest is unclear)."""
    if 0 < unknown_cams < total:
        raise InputError(f'{unknown_cams} of {total} images have no camera: name the cameras of all of them')
    return 'self' if unknown_cams else 'camera'


def resolve_protocol(sets: Sequence[FeatureSet], protocol: str = 'auto') -> Protocol:
    """The exclusion keys of ``sets`` (e.g. query and gallery) under ``protocol``: ``camera``, ``self``,
    or ``auto`` (``camera`` when every image has a camera, ``self`` when none has). Every image needs an
    identity; a camera known for some images only is refused (which rule would be honest is unclear)."""
    if protocol not in PROTOCOLS:
        raise InputError(f'protocol must be one of {PROTOCOLS}, got {protocol!r}')
    unknown_ids = sum(int((s.pids < 0).sum()) for s in sets)
    if unknown_ids:
        raise InputError(f'{unknown_ids} images have no identity (-1); evaluation needs the identity of every image: '
                         f'use a dataset layout or files named like 0002_c1s1_000451_01.jpg')
    unknown_cams = sum(int((s.camids < 0).sum()) for s in sets)
    if protocol == 'auto':
        try:
            protocol = auto_protocol(unknown_cams, sum(len(s.camids) for s in sets))
        except InputError as e:
            raise InputError(f'{e}, or pass protocol self (--protocol self) to exclude only the query image '
                             f'itself') from None
    if protocol == 'camera':
        if unknown_cams:
            raise InputError(
                f'{unknown_cams} images have no camera (-1), which the camera protocol needs: name the cameras (a '
                f'dataset layout, or a folder dataset with <identity>/<camera>/ folders), or use protocol self')
        keys = [s.camids.long() for s in sets]
    else:
        keys = _file_keys(sets)
    return Protocol(protocol, DESCRIPTIONS[protocol], tuple(keys))
