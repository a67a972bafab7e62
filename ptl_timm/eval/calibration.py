"""Operating points: the distance below which two images are taken to show the same person.

A ranked list needs no threshold; a deployment that must answer "same person?" does. Here the answer
is calibrated on a labelled split and stored with the weights, in the checkpoint's ``config.json``
under :data:`CALIBRATION_KEY`, so every copy of the model (a published Hub folder included) carries
its operating points (:mod:`ptl_timm.hub.calibration` reads, writes and shows them).

Protocol. Every unordered pair of two distinct images of the calibration set is a trial:

* *impostor* pair: two different identities (any cameras). FPR = impostor pairs accepted / all of them;
* *genuine* pair: the same identity, excluding the image with itself and, under the camera protocol,
  pairs from the same camera (near-duplicates, as the ranking metrics exclude them; under the ``self``
  protocol of :mod:`ptl_timm.eval.protocol` only pairs of the same file are left out). TPR = genuine
  pairs accepted / all of them.

A pair is accepted (same person) when its distance is *strictly below* the threshold. The threshold at
target FPR f is the (k+1)-th smallest impostor distance, k = floor(f × impostor pairs): it accepts at
most k impostor pairs (fewer when distances tie), and it is the largest such value, since accepting
one more distance would exceed f. Computed exactly, a block of rows of the distance matrix at a time:
only the k+1 smallest impostor distances and the genuine distances (the pairs within identities) are
kept, never the N × N matrix.

``calibrate`` holds out a share of the identities (default half) and reports the FPR and TPR measured
there beside each target: with few impostor pairs, or a model that behaves differently on other
people, the measured FPR can miss the target, and the user should see it.

The calibration set holds each image of the chosen splits once. Training and test identities are
different people even where their numbers agree (training pids are renumbered), and distractor boxes
(``ReIDDataset.distractor_pid``) are left out: no pair of theirs has a known answer. The calibration
records the sha256 of the weights it was measured with (:func:`ptl_timm.hub.weights_digest`), and
``verify`` refuses weights that differ (another ``.safetensors`` beside the same ``config.json``).

The stored calibration::

    "reid_calibration": {
      "format": 2, "metric": "cosine", "decision": "same person when distance < threshold",
      "protocol": "camera", "protocol_description": "...", "pairs": "...",
      "dataset": "market1501", "split": "query+gallery", "weights_sha256": "9f2c...", "input_size": [3, 256, 128],
      "flip": false, "embedding_dim": 512, "num_distractors_left_out": 0, "num_images": 9000, "num_identities": 375,
      "num_pairs": {"genuine": 120000, "impostor": 40000000},
      "heldout": {"num_images": 9000, "num_identities": 375, "num_pairs": {...}},
      "points": [{"fpr": 0.01, "threshold": 0.41, "tpr": 0.93, "heldout_fpr": 0.011, "heldout_tpr": 0.92}, ...]
    }
"""
import logging
import math
import os
from typing import Any, Dict, Iterator, List, Mapping, NamedTuple, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from ptl_timm.data.datasets import ReIDDataset, ReIDRecord, build_dataset
from ptl_timm.errors import CheckpointError, InputError
from ptl_timm.hub import CONFIG_NAME
from ptl_timm.hub.calibration import (
    CALIBRATION_KEY, calibration_card, checkpoint_config, read_calibration, write_calibration)
from ptl_timm.utils import PathLike
from .extract import FeatureExtractor
from .features import FeatureSet
from .metrics import METRICS, ArrayLike, pairwise_distance_chunks
from .protocol import resolve_protocol

__all__ = [
    'CALIBRATION_KEY', 'DEFAULT_FPRS', 'Verification', 'operating_points', 'measured_rates', 'calibrate', 'verify',
    'read_calibration', 'write_calibration', 'select_point', 'calibration_card',
]

CALIBRATION_FORMAT = 2  # 2: the weights' sha256 recorded, unresolved FPRs left out, distractors too
DEFAULT_FPRS = (1e-2, 1e-3, 1e-4)
DECISION = 'same person when distance < threshold'
PAIRS = ('unordered pairs of distinct images; impostor: different identities; genuine: same identity, excluding '
         'pairs the protocol excludes')
_logger = logging.getLogger(__name__)


class Verification(NamedTuple):
    """The answer of :func:`verify`: same person or not, the distance, and the operating point used
    (its threshold, target FPR and the TPR measured at calibration)."""
    same: bool
    distance: float
    threshold: float
    fpr: float
    tpr: float
    metric: str


def _pair_distances(feats: ArrayLike, pids: ArrayLike, keys: ArrayLike, metric: str, chunk_size: int,
                    device: Optional[Union[str, torch.device]]) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
    """``(genuine, impostor)`` distances of the pairs (i < j), a block of rows i at a time, on CPU."""
    pids, keys = torch.as_tensor(pids).long(), torch.as_tensor(keys).long()
    for rows, dist in pairwise_distance_chunks(feats, feats, metric=metric, chunk_size=chunk_size, device=device):
        row_index = torch.arange(rows.start, rows.stop, device=dist.device)
        col_pids, col_keys = pids.to(dist.device), keys.to(dist.device)
        upper = torch.arange(dist.shape[1], device=dist.device)[None] > row_index[:, None]
        same = col_pids[row_index, None] == col_pids[None]
        genuine = upper & same & (col_keys[row_index, None] != col_keys[None])
        yield dist[genuine].float().cpu(), dist[upper & ~same].float().cpu()


def _allowed(fpr: float, num_impostor: int) -> int:
    """Impostor pairs target ``fpr`` lets through: floor(fpr × pairs), robust to 0.01 × 100 = 0.999..."""
    return int(math.floor(fpr * num_impostor + 1e-9))


def _check_fprs(fprs: Sequence[float]) -> Tuple[float, ...]:
    fprs = tuple(float(f) for f in fprs)
    if not fprs or not all(0 < f < 1 for f in fprs):
        raise InputError(f'target false-positive rates must be in (0, 1), got {fprs}')
    return tuple(sorted(set(fprs), reverse=True))


def operating_points(feats: ArrayLike, pids: ArrayLike, keys: ArrayLike, fprs: Sequence[float] = DEFAULT_FPRS,
                     metric: str = 'cosine', chunk_size: int = 256,
                     device: Optional[Union[str, torch.device]] = None) -> Dict[str, Any]:
    """Threshold and TPR at each target FPR over the pairs of one labelled set (see the module notes).

    ``keys`` is the exclusion key of each image (its camera, or its file under the ``self`` protocol:
    :func:`ptl_timm.eval.protocol.resolve_protocol`). Returns ``points`` (one ``{fpr, threshold, tpr,
    impostor_pairs_below}`` per target, highest FPR first) and ``num_pairs`` ``{genuine, impostor}``.
    A target below 1 / (impostor pairs) is left out with a warning: no impostor pair may pass, so its
    threshold would be FPR 0's and its name a promise the set cannot check."""
    fprs = _check_fprs(fprs)
    n = len(pids)
    same_id = int(sum(c * (c - 1) // 2 for c in torch.unique(torch.as_tensor(pids), return_counts=True)[1].tolist()))
    num_impostor = n * (n - 1) // 2 - same_id
    if num_impostor == 0:
        raise InputError(f'the calibration set ({n} images) has no pair of different identities: it needs at least two')
    resolved = [f for f in fprs if _allowed(f, num_impostor) > 0]
    unresolved = ', '.join(f'{f:g}' for f in fprs if f not in resolved)
    if not resolved:
        raise InputError(f'no target FPR ({unresolved}) is resolved by the {num_impostor} impostor pairs of the '
                         f'calibration set: FPR f needs at least 1/f of them; calibrate on more images, or aim at an '
                         f'FPR of at least {1 / num_impostor:.2g}')
    if unresolved:
        _logger.warning(f'FPR {unresolved} left out: not resolved by {num_impostor} impostor pairs (FPR f needs at '
                        f'least 1/f of them; its threshold would be that of FPR 0); calibrate on more images')
    keep = max(_allowed(f, num_impostor) for f in resolved) + 1
    smallest, genuine = torch.empty(0), []
    for genuine_block, impostor in _pair_distances(feats, pids, keys, metric, chunk_size, device):
        genuine.append(genuine_block)
        if len(smallest) == keep:
            impostor = impostor[impostor < smallest[-1]]
        if len(impostor):
            smallest = torch.cat([smallest, impostor]).sort().values[:keep]
    genuine = torch.cat(genuine) if genuine else torch.empty(0)
    if len(genuine) == 0:
        raise InputError(f'the calibration set ({n} images) has no genuine pair (same identity, two images the '
                         f'protocol keeps): it needs identities with images from two cameras (or two files)')
    points = []
    for fpr in resolved:
        threshold = float(smallest[_allowed(fpr, num_impostor)])
        points.append(dict(fpr=fpr, threshold=threshold, tpr=float((genuine < threshold).double().mean()),
                           impostor_pairs_below=int((smallest < threshold).sum())))
    return dict(points=points, num_pairs=dict(genuine=len(genuine), impostor=num_impostor))


def measured_rates(feats: ArrayLike, pids: ArrayLike, keys: ArrayLike, thresholds: Sequence[float],
                   metric: str = 'cosine', chunk_size: int = 256,
                   device: Optional[Union[str, torch.device]] = None) -> Dict[str, Any]:
    """FPR and TPR of each threshold over the pairs of a (held-out) labelled set, counted in one pass:
    ``{'rates': [(fpr, tpr), ...], 'num_pairs': {genuine, impostor}}``."""
    limits = torch.tensor(list(thresholds), dtype=torch.float32)
    accepted = torch.zeros(2, len(limits), dtype=torch.int64)
    totals = [0, 0]
    for genuine, impostor in _pair_distances(feats, pids, keys, metric, chunk_size, device):
        for side, dist in enumerate((genuine, impostor)):
            totals[side] += len(dist)
            accepted[side] += torch.searchsorted(dist.sort().values, limits, side='left')
    if not all(totals):
        raise InputError(f'the held-out set has {totals[0]} genuine and {totals[1]} impostor pairs; it needs both: '
                         f'hold out more identities or calibrate on a larger split')
    rates = [(float(accepted[1, i]) / totals[1], float(accepted[0, i]) / totals[0]) for i in range(len(limits))]
    return dict(rates=rates, num_pairs=dict(genuine=totals[0], impostor=totals[1]))


def _split_identities(pids: torch.Tensor, holdout: float, seed: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Masks of the calibration and the held-out images: a seeded share ``holdout`` of the identities."""
    identities = torch.unique(pids)
    order = identities[torch.randperm(len(identities), generator=torch.Generator().manual_seed(seed))]
    held = order[:round(holdout * len(identities))]
    heldout = torch.isin(pids, held)
    return ~heldout, heldout


def _calibration_records(dataset: ReIDDataset, splits: Sequence[str]) -> Tuple[List[ReIDRecord], int]:
    """The images of ``splits`` (each file once) with one pid per person, and how many distractors were left out.

    Training pids are renumbered from 0 and test pids are the originals, so the two numberings overlap
    although the people differ: each side gets its own range. Distractor boxes show no labelled person
    (possibly several, possibly one of the others), so no pair of theirs has a known answer: left out."""
    records: Dict[str, ReIDRecord] = {}
    identities: Dict[Tuple[bool, int], int] = {}
    distractors = set()
    for split in splits:
        for r in getattr(dataset, split):
            if split != 'train' and r.pid == dataset.distractor_pid:
                distractors.add(r.path)
            elif r.path not in records:
                person = identities.setdefault((split == 'train', r.pid), len(identities))
                records[r.path] = r._replace(pid=person)
    return list(records.values()), len(distractors)


def calibrate(
        model: PathLike,
        dataset: Union[str, ReIDDataset],
        data_root: Optional[PathLike] = None,
        fprs: Sequence[float] = DEFAULT_FPRS,
        splits: Sequence[str] = ('query', 'gallery'),
        holdout: float = 0.5,
        protocol: str = 'auto',
        seed: int = 0,
        metric: str = 'cosine',
        write: bool = True,
        batch_size: int = 64,
        img_size: Optional[Sequence[int]] = None,
        flip: bool = False,
        device: Optional[Union[str, torch.device]] = None,
        num_workers: int = 0,
        progress: bool = False,
) -> Dict[str, Any]:
    """Measure the operating points of ``model`` (a checkpoint folder) on a labelled split and, with
    ``write``, store them in its ``config.json`` (:data:`CALIBRATION_KEY`).

    Args:
        model: the checkpoint folder (or ``local-dir:`` / ``.safetensors`` beside its config).
        dataset: a dataset name of :data:`ptl_timm.data.DATASETS` read from ``data_root``, or a ``ReIDDataset``.
        fprs: target false-positive rates.
        splits: the dataset's splits pooled into the calibration set (default: the test images).
        holdout: share of the identities held out to measure the FPR and TPR each threshold gives on
            people it was not set on (0: none).
        protocol: which pairs are excluded (:mod:`ptl_timm.eval.protocol`); ``auto`` by the cameras known.
        seed: the held-out identities.
        metric: distance between embeddings (cosine, as evaluation and search use).
        batch_size, img_size, flip, device, num_workers, progress: feature extraction
            (:class:`~ptl_timm.eval.extract.FeatureExtractor`); ``img_size`` and ``flip`` are recorded,
            and :func:`verify` extracts the same way.
    Returns the calibration (the dict stored in ``config.json``).
    """
    fprs = _check_fprs(fprs)
    if not 0 <= holdout < 1:
        raise InputError(f'holdout is the share of identities held out, in [0, 1); got {holdout}')
    if metric not in METRICS:
        raise InputError(f'metric must be one of {METRICS}, got {metric!r}')
    if write:
        checkpoint_config(model)
    if isinstance(dataset, str):
        if data_root is None:
            raise InputError(f'dataset {dataset!r} needs data_root (--data-root), the folder that holds it')
        dataset = build_dataset(dataset, data_root)
    unknown = [s for s in splits if s not in ('train', 'query', 'gallery')]
    if unknown:
        raise InputError(f'splits are train, query and gallery; got {unknown}')
    records, distractors = _calibration_records(dataset, splits)
    if not records:
        raise InputError(f'dataset {dataset.name!r} has no images of labelled identities in the splits {list(splits)}')
    extractor = FeatureExtractor(model, device=device, batch_size=batch_size, img_size=img_size, flip=flip,
                                 num_workers=num_workers, progress=progress)
    feats, pids, camids = extractor.extract_records(records)
    rule = resolve_protocol([FeatureSet(feats, pids, camids, [r.path for r in records])], protocol)
    keys = rule.keys[0]
    calibration_part, heldout_part = _split_identities(pids, holdout, seed)
    options = dict(metric=metric, device=extractor.device)
    points = operating_points(feats[calibration_part], pids[calibration_part], keys[calibration_part], fprs, **options)
    result = dict(
        format=CALIBRATION_FORMAT, metric=metric, decision=DECISION, protocol=rule.name,
        protocol_description=rule.description, pairs=PAIRS, dataset=dataset.name, split='+'.join(splits),
        **extractor.extraction(), embedding_dim=int(feats.shape[1]),
        num_images=int(calibration_part.sum()), num_identities=len(torch.unique(pids[calibration_part])),
        num_pairs=points['num_pairs'], num_distractors_left_out=distractors, points=points['points'])
    if holdout > 0:
        measured = measured_rates(feats[heldout_part], pids[heldout_part], keys[heldout_part],
                                  [p['threshold'] for p in points['points']], **options)
        for point, (fpr, tpr) in zip(result['points'], measured['rates']):
            point.update(heldout_fpr=fpr, heldout_tpr=tpr)
        result['heldout'] = dict(num_images=int(heldout_part.sum()), num_identities=len(torch.unique(pids[heldout_part])),
                                 num_pairs=measured['num_pairs'], seed=seed)
    if write:
        write_calibration(model, result)
    return result


def select_point(calibration: Mapping[str, Any], fpr: Optional[float] = None, source: str = 'the model') -> Dict[str, Any]:
    """The operating point at target ``fpr`` (default: the lowest calibrated FPR, the strictest);
    refuses an FPR that was not calibrated."""
    points = list(calibration.get('points', []))
    if not points:
        raise CheckpointError(f'the calibration of {source} has no operating points; calibrate it again')
    if fpr is None:
        return min(points, key=lambda p: p['fpr'])
    for point in points:
        if math.isclose(point['fpr'], fpr, rel_tol=1e-9):
            return point
    available = ', '.join(f'{p["fpr"]:g}' for p in points)
    raise InputError(f'FPR {fpr:g} is not an operating point of {source} (calibrated: {available}); pass one of them, '
                     f'or calibrate again with that target (ptl-timm calibrate --fprs ...)')


def _check_measured_weights(calibration: Mapping[str, Any], loaded: str, source: str) -> None:
    """The calibration a source carries was measured with the weights it loads (``loaded``: their sha256)."""
    measured = calibration.get('weights_sha256')
    if measured is None:
        raise CheckpointError(f'the calibration that {source} carries does not record the weights it was measured '
                              f'with (an older format), so it may belong to other weights; calibrate again '
                              f'(ptl-timm calibrate)')
    if loaded != measured:
        raise CheckpointError(
            f'the calibration that {source} carries was measured with other weights than those it loads (weights '
            f'sha256 {measured[:12]}, loaded {loaded[:12]}): its thresholds would decide for another model; '
            f'calibrate these weights (ptl-timm calibrate)')


def verify(
        model: Union[PathLike, nn.Module],
        image_a: Any,
        image_b: Any,
        fpr: Optional[float] = None,
        calibration: Optional[Mapping[str, Any]] = None,
        device: Optional[Union[str, torch.device]] = None,
) -> Verification:
    """Same person or not: the distance of the two images' embeddings against the calibrated
    threshold at ``fpr`` (default: the lowest calibrated FPR).

    ``model`` is a checkpoint folder, ``local-dir:``/``hf-hub:`` id or ``.safetensors`` file whose
    ``config.json`` carries a calibration (:func:`calibrate`), or a module with ``calibration`` given.
    The images (paths or PIL images) are embedded as at calibration (input size, flip). Refuses a
    model without calibration and an FPR that was not calibrated, before loading the model."""
    source = type(model).__name__ if isinstance(model, nn.Module) else os.fspath(model)
    if calibration is None:
        if isinstance(model, nn.Module):
            raise InputError('verify with a module needs its calibration (calibration=...); or pass the checkpoint folder')
        calibration = read_calibration(model)
        if calibration is None:
            raise CheckpointError(
                f'{source} carries no calibration (its {CONFIG_NAME} has no "{CALIBRATION_KEY}"), so there is no '
                f'threshold to decide with: run `ptl-timm calibrate --model {source} --dataset DATASET --data-root '
                f'FOLDER` first')
    point = select_point(calibration, fpr, source)
    missing = [str(p) for p in (image_a, image_b) if isinstance(p, (str, os.PathLike)) and not os.path.isfile(p)]
    if missing:
        state = 'is a folder, not an image file' if os.path.isdir(missing[0]) else 'does not exist'
        raise InputError(f'image {missing[0]} {state}')
    extractor = FeatureExtractor(model, device=device, img_size=calibration['input_size'][-2:],
                                 flip=calibration.get('flip', False))
    if not isinstance(model, nn.Module):  # a module comes with the calibration its caller vouches for
        _check_measured_weights(calibration, extractor.extraction()['weights_sha256'], source)
    feats = extractor([image_a, image_b])
    _, dist = next(pairwise_distance_chunks(feats[:1], feats[1:], metric=calibration['metric'], device='cpu'))
    distance = float(dist[0, 0])
    return Verification(distance < point['threshold'], distance, point['threshold'], point['fpr'], point['tpr'],
                        calibration['metric'])

