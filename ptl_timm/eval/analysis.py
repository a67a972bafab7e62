"""Where retrieval fails: verification rates at low false-positive rates, and mAP per camera pair.

* ``tpr_at_fpr``: every (query, gallery) pair is a verification trial, genuine when both show the same
  identity (from another camera) and impostor otherwise; same identity and same camera is junk and left
  out, as in the ranking metrics. A pair is accepted when its distance is below a threshold; TPR at
  FPR f is the share of genuine pairs accepted at the largest threshold that accepts at most a
  fraction f of the impostor pairs. These are the operating points of fast-reid's ROC report (1e-4,
  1e-3, 1e-2), read the usual verification way (fast-reid's ``roc_curve`` call takes the other
  identity as the positive class). The impostor pairs are Q × G (a billion at MSMT17 scale); only the
  smallest fraction max(f) of their distances is kept, merged a block of queries at a time.
* ``camera_pair_map``: the mAP of each query camera against the gallery images of each camera alone,
  which shows which camera pairs a model (or a domain gap) fails on. The diagonal has no valid query
  under the usual protocol (a query's same-camera matches are junk).
"""
import math
from typing import Dict, Iterable, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from .metrics import ArrayLike, _as_tensor, evaluate_rank, pairwise_distance_chunks

__all__ = ['tpr_at_fpr', 'tpr_at_fpr_chunks', 'VerificationRates', 'camera_pair_map', 'ROC_FPRS']

ROC_FPRS = (1e-4, 1e-3, 1e-2)  # fast-reid's report


class VerificationRates:
    """TPR at each FPR of ``fprs``, accumulated over ``(query rows, distance block)`` pairs that cover every
    query once (``update``), so it can ride along an evaluation's own pass over the distances (e.g. a
    re-ranked one) instead of computing them again; ``result()`` gives ``{fpr: tpr}``."""

    def __init__(self, q_pids: ArrayLike, g_pids: ArrayLike, q_camids: ArrayLike, g_camids: ArrayLike,
                 fprs: Sequence[float] = ROC_FPRS):
        if not fprs or not all(0 < f < 1 for f in fprs):
            raise ValueError(f'false-positive rates must be in (0, 1), got {tuple(fprs)}')
        cpu = torch.device('cpu')
        self.q_pid, self.g_pid, self.q_cam, self.g_cam = (
            _as_tensor(a, torch.int64, cpu) for a in (q_pids, g_pids, q_camids, g_camids))
        pids, g_counts = torch.unique(self.g_pid, return_counts=True)
        position = torch.searchsorted(pids, self.q_pid).clamp_max(len(pids) - 1)
        same_identity_pairs = int(torch.where(pids[position] == self.q_pid, g_counts[position], 0).sum())
        num_impostor = len(self.q_pid) * len(self.g_pid) - same_identity_pairs
        if num_impostor == 0:
            raise ValueError('every gallery item shows the query\'s identity: there are no impostor pairs')
        self.allowed = {f: int(math.floor(f * num_impostor + 1e-9)) for f in fprs}  # impostor pairs f lets through
        self.keep = min(max(self.allowed.values()) + 1, num_impostor)
        self.smallest = torch.empty(0)  # the smallest impostor distances so far, sorted
        self.genuine = []

    def update(self, rows: slice, dist: torch.Tensor) -> None:
        dist = dist.float().cpu()
        same_identity = self.q_pid[rows, None] == self.g_pid[None]
        self.genuine.append(dist[same_identity & (self.q_cam[rows, None] != self.g_cam[None])])
        impostor = dist[~same_identity]
        if len(self.smallest) == self.keep:
            impostor = impostor[impostor < self.smallest[-1]]
        self.smallest = torch.cat([self.smallest, impostor]).sort().values[:self.keep]

    def result(self) -> Dict[float, float]:
        genuine = torch.cat(self.genuine) if self.genuine else torch.empty(0)
        if len(genuine) == 0:
            raise ValueError(
                'no query has a true match in the gallery (same identity, another camera); check pids/camids')
        return {f: float((genuine < self.smallest[n]).double().mean()) for f, n in self.allowed.items()}


def tpr_at_fpr_chunks(chunks: Iterable[Tuple[slice, torch.Tensor]], q_pids: ArrayLike, g_pids: ArrayLike,
                      q_camids: ArrayLike, g_camids: ArrayLike, fprs: Sequence[float] = ROC_FPRS) -> Dict[float, float]:
    """``{fpr: tpr}`` from ``(query rows, distance block)`` pairs covering every query once (e.g.
    ``pairwise_distance_chunks`` or the blocks of a re-ranked matrix)."""
    rates = VerificationRates(q_pids, g_pids, q_camids, g_camids, fprs)
    for rows, dist in chunks:
        rates.update(rows, dist)
    return rates.result()


def tpr_at_fpr(q_feats: ArrayLike, g_feats: ArrayLike, q_pids: ArrayLike, g_pids: ArrayLike, q_camids: ArrayLike,
               g_camids: ArrayLike, fprs: Sequence[float] = ROC_FPRS, metric: str = 'cosine', chunk_size: int = 256,
               device: Optional[Union[str, torch.device]] = None) -> Dict[float, float]:
    """``{fpr: tpr}`` of the query × gallery verification trials (see the module notes)."""
    chunks = pairwise_distance_chunks(q_feats, g_feats, metric=metric, chunk_size=chunk_size, device=device)
    return tpr_at_fpr_chunks(chunks, q_pids, g_pids, q_camids, g_camids, fprs)


def camera_pair_map(q_feats: ArrayLike, g_feats: ArrayLike, q_pids: ArrayLike, g_pids: ArrayLike, q_camids: ArrayLike,
                    g_camids: ArrayLike, metric: str = 'cosine', chunk_size: int = 256,
                    device: Optional[Union[str, torch.device]] = None) -> Dict[str, np.ndarray]:
    """mAP of the queries of each camera against the gallery of each camera alone.

    Returns ``query_cameras`` and ``gallery_cameras`` (sorted camera ids), ``map`` [query camera ×
    gallery camera] (NaN where no query of that camera has a true match in that gallery camera) and
    ``num_valid_queries`` of the same shape. Each gallery camera is ranked once, so the cost is one
    ordinary evaluation.
    """
    q_pids, g_pids, q_camids, g_camids = (np.asarray(a) for a in (q_pids, g_pids, q_camids, g_camids))
    g_feats = g_feats if isinstance(g_feats, torch.Tensor) else torch.from_numpy(np.asarray(g_feats))
    q_cams, g_cams = np.unique(q_camids), np.unique(g_camids)
    table = np.full((len(q_cams), len(g_cams)), np.nan)
    counts = np.zeros((len(q_cams), len(g_cams)), dtype=np.int64)
    for j, cam in enumerate(g_cams):
        selected = np.flatnonzero(g_camids == cam)
        # a query has a true match here when its identity appears and the camera is not its own
        has_match = np.isin(q_pids, g_pids[selected]) & (q_camids != cam)
        if not has_match.any():
            continue
        ap = evaluate_rank(
            q_feats, g_feats[torch.from_numpy(selected)], q_pids, g_pids[selected], q_camids, g_camids[selected],
            metric=metric, chunk_size=chunk_size, device=device)['per_query_ap']
        for i, q_cam in enumerate(q_cams):
            valid = ap[(q_camids == q_cam) & ~np.isnan(ap)]
            counts[i, j] = len(valid)
            if len(valid):
                table[i, j] = valid.mean()
    return dict(query_cameras=q_cams, gallery_cameras=g_cams, map=table, num_valid_queries=counts)
