"""Exact ReID ranking metrics (mAP, CMC, mINP) without the query × gallery matrix.

torchreid and fast-reid argsort the whole distance matrix, which needs 20+ GB at MSMT17 scale
(11,659 × 82,161). Every metric of a query only depends on the rank of each of its true matches
among the valid gallery items, so here the distances are computed a block of query rows at a time
and each same-identity gallery item is located with a binary search instead of sorting the row:
memory is linear in the gallery size and the work is O(G log M) per query (M = images of its identity).

Conventions (torchreid/fast-reid, see reid-protocol notes):
  * single query; gallery items with the query's identity *and* camera are junk: removed, neither hit
    nor miss; a query with no remaining true match is skipped (``num_valid_queries`` counts the rest);
  * ranking order is a stable sort by distance, then gallery index (ties resolve to the earlier item);
  * AP (``ap_mode='default'``) is the non-interpolated mean of precision at each hit, mAP the mean over
    valid queries; ``ap_mode='official'`` is the trapezoid AP of the official Market-1501 code;
  * CMC is first-match, to ``max_rank``; mINP is #matches / rank of the hardest match (fast-reid);
  * ``single_gallery_shot=True`` is the classic CUHK03 CMC: each of ``num_repeats`` draws keeps one
    random valid image per gallery identity (seeded), and CMC is averaged over the draws; AP and mINP
    stay on the full list, as in torchreid's ``eval_cuhk03``.

Distances: ``'cosine'`` (1 - cos) or ``'euclidean'`` (squared, which ranks identically).

Every camera id must be known (>= 0): the protocol removes the gallery images of the query's camera,
and an "unknown" camera (-1, as for images without a camera in their name) would silently turn that
rule off for those images and inflate the metrics, so it is refused.
"""
import contextlib
from typing import Dict, Iterable, Iterator, Optional, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ptl_timm.errors import InputError
from ptl_timm.utils import resolve_device

__all__ = ['evaluate_rank', 'evaluate_distmat', 'evaluate_distance_chunks', 'pairwise_distance_chunks', 'METRICS']

ArrayLike = Union[np.ndarray, torch.Tensor]
METRICS = ('cosine', 'euclidean')
AP_MODES = ('default', 'official')
_INDEX_BITS = 32


def _as_tensor(x: ArrayLike, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x).to(device=device, dtype=dtype)


def _squared_norms(x: torch.Tensor, block: int = 8192) -> torch.Tensor:
    """Row-wise squared L2 norms, a block of rows at a time (no full-size temporary)."""
    return torch.cat([rows.pow(2).sum(1) for rows in x.split(block)])


def pairwise_distance_chunks(
        q_feats: ArrayLike,
        g_feats: ArrayLike,
        metric: str = 'cosine',
        chunk_size: int = 256,
        device: Optional[Union[str, torch.device]] = None,
) -> Iterator[Tuple[slice, torch.Tensor]]:
    """Yield ``(query rows, distances)`` blocks of the query × gallery distance matrix, float32.

    The gallery is held once; normalisation is folded into each block (cosine divides the dot
    products by the gallery norms) so no normalised copy of the gallery is ever made.
    """
    if metric not in METRICS:
        raise InputError(f'metric must be one of {METRICS}, got {metric!r}')
    device = resolve_device(device)
    g = _as_tensor(g_feats, torch.float32, device)
    q_all = q_feats if isinstance(q_feats, torch.Tensor) else torch.from_numpy(np.asarray(q_feats))
    if q_all.ndim != 2 or g.ndim != 2 or q_all.shape[1] != g.shape[1]:
        raise InputError(
            f'query and gallery features must be 2-D with the same width, got {tuple(q_all.shape)} and {tuple(g.shape)}')
    g_sq = _squared_norms(g)
    g_scale = g_sq.sqrt().clamp_min(1e-12).reciprocal() if metric == 'cosine' else None
    for start in range(0, q_all.shape[0], chunk_size):
        rows = slice(start, min(start + chunk_size, q_all.shape[0]))
        q = q_all[rows].to(device=device, dtype=torch.float32)
        if metric == 'cosine':
            dist = torch.mm(F.normalize(q, dim=1), g.T).mul_(g_scale).neg_().add_(1.0)
        else:
            dist = torch.mm(q, g.T).mul_(-2.0).add_(g_sq).add_(q.pow(2).sum(1, keepdim=True)).clamp_min_(0.0)
        yield rows, dist


def _ordered_keys(dist: torch.Tensor, index: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Unique int64 sort keys: (distance, gallery index) in lexicographic order.

    The float32 bit pattern is mapped to an order-preserving int32 (negatives have their magnitude
    bits flipped), shifted above the gallery index (``index``, default the column). Comparing keys is
    comparing (distance, index).
    """
    bits = (dist.float() + 0.0).view(torch.int32)  # + 0.0 turns -0.0 into +0.0
    ordered = bits ^ ((bits >> 31) & 0x7FFFFFFF)
    if index is None:
        index = torch.arange(dist.shape[1], device=dist.device, dtype=torch.int64)
    return (ordered.to(torch.int64) << _INDEX_BITS) | index


@contextlib.contextmanager
def _small_op_threads(device: torch.device) -> Iterator[None]:
    """One CPU thread for the per-block bookkeeping: its tensors are a few thousand elements, where
    waking a thread pool costs more than it saves (and stalls when another process holds a core).
    The distance matmul, outside this context, keeps every thread. torch's thread count is
    process-wide: the caller's value is restored on exit (also on an exception), and torch work in
    the caller's other threads runs on one thread meanwhile."""
    previous = torch.get_num_threads()
    if device.type == 'cpu':
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


class _Identities:
    """Gallery items grouped by identity, so a query's same-identity items are one slice."""

    def __init__(self, g_pids: torch.Tensor):
        self.order = torch.argsort(g_pids, stable=True)
        self.pids, self.counts = torch.unique_consecutive(g_pids[self.order], return_counts=True)
        self.starts = torch.cumsum(self.counts, 0) - self.counts
        self.group_of = torch.empty_like(g_pids)
        self.group_of[self.order] = torch.repeat_interleave(
            torch.arange(len(self.pids), device=g_pids.device), self.counts)

    def members(self, q_pids: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Padded gallery indices (B × M) of each query's identity and their validity mask."""
        pos = torch.searchsorted(self.pids, q_pids).clamp_max(len(self.pids) - 1)
        found = self.pids[pos] == q_pids
        counts = torch.where(found, self.counts[pos], torch.zeros_like(pos))
        width = max(int(counts.max()), 1) if len(counts) else 1
        offsets = torch.arange(width, device=q_pids.device)
        mask = offsets < counts[:, None]
        slots = (self.starts[pos][:, None] + offsets).clamp_max(len(self.order) - 1)
        return torch.where(mask, self.order[slots], torch.zeros_like(slots)), mask


def _sorts_rows_with_numpy(device: torch.device) -> bool:
    """Which way to count the items ranked ahead of each match: numpy row sorts on CPU, a batched
    binary search of sort keys on accelerators (the two agree exactly)."""
    return device.type == 'cpu'


def _count_ahead_sorted_rows(dist: torch.Tensor, members: torch.Tensor, num_valid: torch.Tensor) -> torch.Tensor:
    """CPU: items ranked ahead of each member, by binary search in each row sorted with numpy
    (its vectorised sort is several times faster than torch's on CPU). Equal distances are
    resolved by gallery index, counted directly for the (rare) members that have a tie."""
    rows, members = dist.numpy(), members.numpy()
    sorted_rows = np.sort(rows, axis=1)
    if np.isnan(sorted_rows[:, -1]).any():  # NaN sorts last
        raise InputError('distances contain NaN; check the features for NaN/inf')
    member_dist = np.take_along_axis(rows, members, axis=1)
    ahead = np.zeros(members.shape, dtype=np.int64)
    for i, count in enumerate(num_valid.tolist()):
        values = member_dist[i, :count]
        lower = np.searchsorted(sorted_rows[i], values, side='left')
        ahead[i, :count] = lower
        tied = np.flatnonzero(np.searchsorted(sorted_rows[i], values, side='right') - lower > 1)
        for k in tied:
            ahead[i, k] += np.count_nonzero(rows[i, :members[i, k]] == values[k])
    return torch.from_numpy(ahead)


def _count_ahead_keys(dist: torch.Tensor, member_keys: torch.Tensor) -> torch.Tensor:
    """Accelerators: items ranked ahead of each sorted member key, from one batched binary search of
    every item's key among the members' keys and a histogram of the resulting positions."""
    if torch.isnan(dist).any():
        raise InputError('distances contain NaN; check the features for NaN/inf')
    buckets = torch.searchsorted(member_keys, _ordered_keys(dist), right=True)
    histogram = torch.zeros(dist.shape[0], member_keys.shape[1] + 1, dtype=torch.int64, device=dist.device)
    histogram.scatter_add_(1, buckets, torch.ones_like(buckets))
    return torch.cumsum(histogram, 1)[:, :-1]


def _match_ranks(
        dist: torch.Tensor, members: torch.Tensor, mask: torch.Tensor, junk: torch.Tensor,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rank (1-based, junk removed) of each true match, matches in rank order.

    Returns ``ranks`` (B × M, int64), ``hit_index`` (1-based position among the query's matches)
    and ``is_match`` (B × M): the padded members sorted by rank, junk and padding marked not a match.
    """
    big = torch.iinfo(torch.int64).max
    member_keys = torch.where(mask, _ordered_keys(dist.gather(1, members), members), torch.full_like(members, big))
    member_keys, perm = torch.sort(member_keys, dim=1)
    members, junk, valid = members.gather(1, perm), junk.gather(1, perm), mask.gather(1, perm)
    if _sorts_rows_with_numpy(dist.device):
        ahead_all = _count_ahead_sorted_rows(dist, members, valid.sum(1))
    else:
        ahead_all = _count_ahead_keys(dist, member_keys)
    junk_ahead = torch.cumsum(junk.long(), 1) - junk.long()
    is_match = valid & ~junk
    ranks = ahead_all - junk_ahead + 1
    hit_index = torch.cumsum(is_match.long(), 1)
    return ranks, hit_index, is_match


def _average_precision(ranks: torch.Tensor, hit_index: torch.Tensor, is_match: torch.Tensor, ap_mode: str) -> torch.Tensor:
    num_matches = is_match.sum(1).clamp_min(1).double()
    ranks, hits = ranks.double(), hit_index.double()
    precision = hits / ranks
    if ap_mode == 'official':
        before = torch.where(ranks > 1, (hits - 1) / (ranks - 1).clamp_min(1), torch.ones_like(ranks))
        precision = (precision + before) / 2
    return torch.where(is_match, precision, torch.zeros_like(precision)).sum(1) / num_matches


def _single_shot_first_ranks(
        keys: torch.Tensor, keep: torch.Tensor, group_of: torch.Tensor, q_groups: torch.Tensor,
        generator: torch.Generator,
) -> torch.Tensor:
    """Rank of the query's identity in one draw keeping one random valid item per gallery identity."""
    num_groups = int(group_of.max()) + 1
    draws = torch.randint(0, 1 << 30, keys.shape, generator=generator, device='cpu').to(keys.device)
    draws = torch.where(keep, (draws << _INDEX_BITS) | torch.arange(keys.shape[1], device=keys.device), -1)
    groups = group_of.expand_as(keys)
    winner = torch.full((keys.shape[0], num_groups), -1, dtype=torch.int64, device=keys.device)
    winner.scatter_reduce_(1, groups, draws, reduce='amax')
    chosen = keep & (draws == winner.gather(1, groups))
    chosen_match = chosen & (groups == q_groups[:, None])
    match_key = torch.where(chosen_match, keys, torch.full_like(keys, torch.iinfo(torch.int64).max)).min(1).values
    return (chosen & (keys < match_key[:, None])).sum(1) + 1


def _require_cameras(q_camids: ArrayLike, g_camids: ArrayLike) -> None:
    unknown = {side: int((np.asarray(camids) < 0).sum()) for side, camids in (('query', q_camids), ('gallery', g_camids))}
    if any(unknown.values()):
        raise InputError(
            f'{unknown["query"]} query and {unknown["gallery"]} gallery images have an unknown camera (id < 0); the '
            f'protocol excludes same-camera gallery images, so every camera must be known: name the cameras '
            f'(a dataset layout or file names like 0002_c1s1_000451_01.jpg) or leave those images out')


def evaluate_distance_chunks(
        chunks: Iterable[Tuple[slice, torch.Tensor]],
        q_pids: ArrayLike,
        g_pids: ArrayLike,
        q_camids: ArrayLike,
        g_camids: ArrayLike,
        max_rank: int = 50,
        ap_mode: str = 'default',
        single_gallery_shot: bool = False,
        num_repeats: int = 10,
        seed: int = 0,
        progress: bool = False,
) -> Dict[str, object]:
    """Metrics from ``(query rows, distance block)`` pairs covering every query once (any order).

    Returns ``mAP``, ``cmc`` (np.ndarray, ``min(max_rank, num_gallery)`` entries), ``mINP`` (fractions
    in [0, 1], over valid queries), ``num_valid_queries`` and ``per_query_ap`` (NaN for skipped queries).
    ``progress`` shows a bar counting the ranked queries.
    """
    if ap_mode not in AP_MODES:
        raise InputError(f'ap_mode must be one of {AP_MODES}, got {ap_mode!r}')
    num_q, num_g = len(q_pids), len(g_pids)
    if len(q_camids) != num_q or len(g_camids) != num_g:
        raise InputError(f'{num_q} query pids vs {len(q_camids)} camids, {num_g} gallery pids vs {len(g_camids)} camids')
    if num_g == 0:
        raise InputError('the gallery is empty')
    _require_cameras(q_camids, g_camids)
    max_rank = min(max_rank, num_g)
    cmc_total = torch.zeros(max_rank, dtype=torch.float64)
    per_query_ap = torch.full((num_q,), float('nan'), dtype=torch.float64)
    inp_total, seen = 0.0, torch.zeros(num_q, dtype=torch.bool)
    generator = torch.Generator().manual_seed(seed)
    identities = None
    bar = tqdm(total=num_q, desc='rank', unit='query', disable=not progress, leave=False)
    for rows, dist in chunks:
        device = dist.device
        if identities is None:
            g_pid_t, g_cam_t = (_as_tensor(a, torch.int64, device) for a in (g_pids, g_camids))
            q_pid_all, q_cam_all = (_as_tensor(a, torch.int64, device) for a in (q_pids, q_camids))
            identities = _Identities(g_pid_t)
        if dist.shape[1] != num_g:
            raise ValueError(f'distance block must have {num_g} columns, got shape {tuple(dist.shape)}')
        seen[rows] = True
        bar.update(rows.stop - rows.start)
        with _small_op_threads(device):
            q_pid, q_cam = q_pid_all[rows], q_cam_all[rows]
            members, mask = identities.members(q_pid)
            junk = g_cam_t[members] == q_cam[:, None]
            ranks, hit_index, is_match = _match_ranks(dist, members, mask, junk)
            num_matches = is_match.sum(1)
            valid = num_matches > 0
            if not valid.any():
                continue
            ap = _average_precision(ranks, hit_index, is_match, ap_mode)
            per_query_ap[torch.arange(rows.start, rows.stop)[valid.cpu()]] = ap[valid].cpu()
            last_rank = torch.where(is_match, ranks, torch.zeros_like(ranks)).max(1).values
            inp_total += float((num_matches[valid].double() / last_rank[valid].double()).sum())
            positions = torch.arange(1, max_rank + 1, device=device)
            if single_gallery_shot:
                keep = ~((g_pid_t == q_pid[:, None]) & (g_cam_t == q_cam[:, None]))
                q_groups = identities.group_of[members[:, 0]]
                keys = _ordered_keys(dist[valid])
                cmc = sum((positions >= _single_shot_first_ranks(
                    keys, keep[valid], identities.group_of, q_groups[valid], generator)[:, None]).double()
                    for _ in range(num_repeats)) / num_repeats
            else:
                first_rank = torch.where(is_match, ranks, torch.full_like(ranks, num_g + 1)).min(1).values
                cmc = (positions >= first_rank[valid][:, None]).double()
            cmc_total += cmc.sum(0).cpu()
    bar.close()
    if not bool(seen.all()):
        raise ValueError(f'distance blocks covered {int(seen.sum())} of {num_q} queries')
    num_valid = int((~torch.isnan(per_query_ap)).sum())
    if num_valid == 0:
        raise InputError('no query has a true match in the gallery (same identity, another camera); check pids/camids')
    return dict(
        mAP=float(torch.nansum(per_query_ap) / num_valid),
        cmc=(cmc_total / num_valid).numpy(),
        mINP=inp_total / num_valid,
        num_valid_queries=num_valid,
        per_query_ap=per_query_ap.numpy(),
    )


def evaluate_rank(
        q_feats: ArrayLike,
        g_feats: ArrayLike,
        q_pids: ArrayLike,
        g_pids: ArrayLike,
        q_camids: ArrayLike,
        g_camids: ArrayLike,
        metric: str = 'cosine',
        max_rank: int = 50,
        ap_mode: str = 'default',
        chunk_size: int = 256,
        device: Optional[Union[str, torch.device]] = None,
        single_gallery_shot: bool = False,
        num_repeats: int = 10,
        seed: int = 0,
        progress: bool = False,
) -> Dict[str, object]:
    """mAP, CMC and mINP of query features against gallery features (see the module notes).

    Works a block of ``chunk_size`` query rows at a time on ``device`` (CUDA when present by default);
    peak memory is a few ``chunk_size`` × gallery buffers on top of the features.
    """
    chunks = pairwise_distance_chunks(q_feats, g_feats, metric=metric, chunk_size=chunk_size, device=device)
    return evaluate_distance_chunks(
        chunks, q_pids, g_pids, q_camids, g_camids, max_rank=max_rank, ap_mode=ap_mode,
        single_gallery_shot=single_gallery_shot, num_repeats=num_repeats, seed=seed, progress=progress)


def evaluate_distmat(
        distmat: ArrayLike,
        q_pids: ArrayLike,
        g_pids: ArrayLike,
        q_camids: ArrayLike,
        g_camids: ArrayLike,
        chunk_size: int = 256,
        device: Optional[Union[str, torch.device]] = None,
        **kwargs,
) -> Dict[str, object]:
    """The same metrics from a precomputed query × gallery distance matrix (e.g. re-ranked);
    ``kwargs`` are those of ``evaluate_distance_chunks``."""
    distmat = distmat if isinstance(distmat, torch.Tensor) else torch.from_numpy(np.asarray(distmat))
    device = resolve_device(device)
    if distmat.ndim != 2 or distmat.shape[0] != len(q_pids):
        raise InputError(f'distmat must be (num_query, num_gallery), got {tuple(distmat.shape)} for {len(q_pids)} queries')
    chunks = ((slice(s, min(s + chunk_size, distmat.shape[0])), distmat[s:s + chunk_size].to(device=device, dtype=torch.float32))
              for s in range(0, distmat.shape[0], chunk_size))
    return evaluate_distance_chunks(chunks, q_pids, g_pids, q_camids, g_camids, **kwargs)
