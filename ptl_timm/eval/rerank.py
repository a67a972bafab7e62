"""k-reciprocal re-ranking (Zhong et al., CVPR 2017) in bounded memory.

The classic implementation (``re_ranking.m`` and its numpy port in torchreid/BoT) holds several dense
N × N matrices (N = queries + gallery): ~10 GB at Market-1501 scale, 35 GB each at MSMT17 scale.
Only short lists are needed, though: each item's k1+1 nearest neighbours, its k-reciprocal expansion
set (a few dozen items) and, after query expansion, a sparse encoding V. Here the N × N distances
are streamed a block of rows at a time to collect the neighbour lists, V is held in compressed rows
(int32 columns, float32 values: 8 bytes an entry) built a block of rows at a time, and the Jaccard
distances are formed one block of query rows at a time from V's inverted index. The features are
used as given, never stacked into a copy (at MSMT17 scale a 2048-d copy is 770 MB). Memory is
O(N · k1 · k2) entries of V plus one block; the result equals the classic code's.

Distances are squared euclidean on the given features (on L2-normalised features 2 - 2·cos, as in the
official PTL code), each row scaled by its maximum, exactly as the classic code does with its input.
"""
from typing import Iterator, NamedTuple, Optional, Tuple, Union

import numpy as np
import torch

from ptl_timm.errors import InputError
from ptl_timm.utils import resolve_device
from .metrics import ArrayLike, _squared_norms

__all__ = ['re_ranking', 'iter_re_ranking', 'RERANK_K1', 'RERANK_K2', 'RERANK_LAMBDA']

# the paper's settings (Zhong et al. 2017): the defaults here, in `ptl-timm eval` and in the training config
RERANK_K1, RERANK_K2, RERANK_LAMBDA = 20, 6, 0.3


class _Features:
    """Query and gallery features, kept as given (no stacked copy), with the squared-euclidean
    distance of any stacked rows (queries first) to all items or to the gallery."""

    def __init__(self, q_feats: ArrayLike, g_feats: ArrayLike, device: torch.device):
        q, g = (torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x) for x in (q_feats, g_feats))
        if q.ndim != 2 or g.ndim != 2 or q.shape[1] != g.shape[1]:
            raise InputError(f'query and gallery features must be 2-D with the same width, got {tuple(q.shape)}, {tuple(g.shape)}')
        self.query, self.gallery = (x.to(device=device, dtype=torch.float32) for x in (q, g))
        self.num_query = len(q)
        self.sq = torch.cat([_squared_norms(self.query), _squared_norms(self.gallery)])

    def __len__(self) -> int:
        return len(self.sq)

    def rows(self, index: torch.Tensor) -> torch.Tensor:
        """The features of stacked items ``index`` (any shape), gathered from the query or the gallery."""
        is_query = index < self.num_query
        out = self.query.new_empty(*index.shape, self.query.shape[1])
        out[is_query] = self.query[index[is_query]]
        out[~is_query] = self.gallery[index[~is_query] - self.num_query]
        return out

    def distances(self, rows: slice, gallery_only: bool = False, out: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Distances of ``rows`` to every item (or the gallery), written into ``out``'s first rows when given:
        a loop reusing one block leaves no freed blocks behind for the allocator to hold on to."""
        index = torch.arange(rows.start, min(rows.stop, len(self)), device=self.sq.device)
        x = self.rows(index)
        columns = (self.gallery,) if gallery_only else (self.query, self.gallery)
        sq = self.sq[self.num_query:] if gallery_only else self.sq
        dist, stop = (x.new_empty(len(x), len(sq)) if out is None else out[:len(x)]), 0
        for part in columns:
            torch.mm(x, part.T, out=dist[:, stop:stop + len(part)])
            stop += len(part)
        return dist.mul_(-2.0).add_(sq).add_(self.sq[index][:, None]).clamp_min_(0.0)

    def paired_distances(self, rows: torch.Tensor, others: torch.Tensor) -> torch.Tensor:
        """Distance of item ``rows[i]`` to each item of ``others[i]`` (B × P), without a B × N block."""
        dots = torch.einsum('bd,bpd->bp', self.rows(rows), self.rows(others))
        return (self.sq[rows][:, None] + self.sq[others] - 2.0 * dots).clamp_min_(0.0)


class _SparseRows(NamedTuple):
    """A sparse N × N matrix in compressed rows: row i's column indices (int32, ascending) and values
    (float32) are ``cols[row_ptr[i]:row_ptr[i + 1]]``; 8 bytes per entry where COO takes 24."""
    row_ptr: torch.Tensor
    cols: torch.Tensor
    values: torch.Tensor

    @classmethod
    def from_counts(cls, counts: torch.Tensor, cols: torch.Tensor, values: torch.Tensor) -> '_SparseRows':
        row_ptr = torch.zeros(len(counts) + 1, dtype=torch.int64, device=counts.device)
        torch.cumsum(counts, 0, out=row_ptr[1:])
        return cls(row_ptr, cols.to(torch.int32), values)

    def entries(self, start: int, stop: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Row index, column index and value of every entry of rows ``start`` to ``stop``."""
        first, last = int(self.row_ptr[start]), int(self.row_ptr[stop])
        counts = self.row_ptr[start + 1:stop + 1] - self.row_ptr[start:stop]
        rows = torch.repeat_interleave(torch.arange(start, stop, device=counts.device), counts)
        return rows, self.cols[first:last].long(), self.values[first:last]


def _neighbours(features: _Features, k: int, chunk_size: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """The k nearest items of every item (itself first), in distance order, and each row's max distance."""
    ranks, row_max = [], []
    block = features.query.new_empty(min(chunk_size, len(features)), len(features))
    for start in range(0, len(features), chunk_size):
        dist = features.distances(slice(start, start + chunk_size), out=block)
        ranks.append(torch.topk(dist, k, dim=1, largest=False, sorted=True).indices)
        row_max.append(dist.max(1).values)
    return torch.cat(ranks), torch.cat(row_max)


def _reciprocal(ranks: torch.Tensor, block: int = 4096) -> torch.Tensor:
    """Mask over ``ranks``: neighbour j of i is kept when i is also among j's neighbours (a block of
    rows at a time: the neighbours' lists are N × k × k)."""
    return torch.cat([(ranks[ranks[start:start + block]] == torch.arange(
        start, min(start + block, len(ranks)), device=ranks.device)[:, None, None]).any(-1)
        for start in range(0, len(ranks), block)])


def _segments(starts: torch.Tensor, counts: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Flatten the index ranges ``[starts[e], starts[e] + counts[e])``: each position and its range e."""
    owner = torch.repeat_interleave(torch.arange(len(counts), device=counts.device), counts)
    within = torch.arange(len(owner), device=counts.device) - (torch.cumsum(counts, 0) - counts)[owner]
    return owner, starts[owner] + within


def _sorted_unique(pool: torch.Tensor, missing: int) -> torch.Tensor:
    """Each row's distinct entries other than ``missing``, ascending, padded with ``missing`` on the right
    to the longest row."""
    pool = torch.sort(pool, dim=1).values
    repeated = torch.zeros_like(pool, dtype=torch.bool)
    repeated[:, 1:] = pool[:, 1:] == pool[:, :-1]
    pool = torch.sort(pool.masked_fill_(repeated, missing), dim=1).values
    return pool[:, :int((pool < missing).sum(1).max())]


def _expansion_sets(initial_rank: torch.Tensor, k1: int, block: int = 1024) -> Tuple[torch.Tensor, torch.Tensor]:
    """Every item's k-reciprocal set grown by the half-size reciprocal sets of its members that overlap
    it by more than 2/3; returned as padded ascending unique indices (N × P, int32) and their mask."""
    forward = initial_rank[:, :k1 + 1]
    half = initial_rank[:, :round(k1 / 2) + 1]
    reciprocal, half_reciprocal = _reciprocal(forward), _reciprocal(half)
    half_sizes = half_reciprocal.sum(1).double()
    n, sets = len(forward), []
    for start in range(0, n, block):
        members, member_mask = forward[start:start + block], reciprocal[start:start + block]
        candidates = half[members]  # B × (k1+1) × (half+1)
        candidate_mask = half_reciprocal[members]
        overlap = ((candidates[..., None] == members[:, None, None, :]) & member_mask[:, None, None, :]).any(-1)
        overlap = (overlap & candidate_mask).sum(-1).double()
        accepted = member_mask & (overlap > 2.0 / 3 * half_sizes[members])
        pool = torch.cat([members, candidates.flatten(1)], 1)
        pool_mask = torch.cat([member_mask, (candidate_mask & accepted[..., None]).flatten(1)], 1)
        sets.append(_sorted_unique(torch.where(pool_mask, pool, n), n).to(torch.int32))
    width = max(s.shape[1] for s in sets)
    pool = torch.cat([torch.nn.functional.pad(s, (0, width - s.shape[1]), value=n) for s in sets])
    mask = pool < n
    return pool.masked_fill_(~mask, 0), mask


def _encoding(features: _Features, sets: torch.Tensor, mask: torch.Tensor, row_max: torch.Tensor,
              block: int = 32) -> _SparseRows:
    """Sparse V: row i holds exp(-d(i, s)) over its expansion set s, normalised to sum 1."""
    values = []
    for start in range(0, len(sets), block):
        rows = torch.arange(start, min(start + block, len(sets)), device=sets.device)
        others, keep = sets[rows].long(), mask[rows]
        dist = features.paired_distances(rows, others) / row_max[rows][:, None]
        weight = torch.where(keep, torch.exp(-dist), torch.zeros_like(dist))
        values.append((weight / weight.sum(1, keepdim=True))[keep])
    return _SparseRows.from_counts(mask.sum(1), sets[mask], torch.cat(values))


def _query_expansion(encoding: _SparseRows, initial_rank: torch.Tensor, k2: int, block: int = 1024) -> _SparseRows:
    """Each row of V replaced by the mean of the rows of its k2 nearest items (itself included), a block
    of rows at a time."""
    n, row_ptr = len(initial_rank), encoding.row_ptr
    counts, cols, values = [], [], []
    for start in range(0, n, block):
        neighbours = initial_rank[start:start + block, :k2].reshape(-1)
        pair, position = _segments(row_ptr[neighbours], row_ptr[neighbours + 1] - row_ptr[neighbours])
        keys, inverse = torch.unique((pair // k2) * n + encoding.cols[position], return_inverse=True)
        summed = torch.zeros(len(keys), dtype=encoding.values.dtype, device=keys.device)
        values.append(summed.index_add_(0, inverse, encoding.values[position] / k2))
        counts.append(torch.bincount(keys // n, minlength=len(neighbours) // k2))
        cols.append(keys % n)
    return _SparseRows.from_counts(torch.cat(counts), torch.cat(cols), torch.cat(values))


class _InvertedIndex:
    """The gallery rows of sparse V grouped by column: for item l, who has it in their encoding."""

    def __init__(self, encoding: _SparseRows, num_query: int):
        rows, cols, values = encoding.entries(num_query, len(encoding.row_ptr) - 1)
        order = torch.argsort(cols, stable=True)
        self.rows, self.values = (rows[order] - num_query).to(torch.int32), values[order]
        counts = torch.bincount(cols, minlength=len(encoding.row_ptr) - 1)
        self.counts, self.starts = counts, torch.cumsum(counts, 0) - counts

    def min_overlap(self, rows: torch.Tensor, cols: torch.Tensor, values: torch.Tensor, out: torch.Tensor,
                    row_offset: int) -> torch.Tensor:
        """``out[i, j] += Σ_l min(V[i, l], V[j, l])`` over the given query entries (i, l, V[i, l])."""
        entry, position = _segments(self.starts[cols], self.counts[cols])
        overlap = torch.minimum(values[entry], self.values[position])
        out.index_put_((rows[entry] - row_offset, self.rows[position].long()), overlap, accumulate=True)
        return out


def iter_re_ranking(q_feats: ArrayLike, g_feats: ArrayLike, k1: int = RERANK_K1, k2: int = RERANK_K2,
                    lambda_value: float = RERANK_LAMBDA, chunk_size: int = 256,
                    device: Optional[Union[str, torch.device]] = None) -> Iterator[Tuple[slice, torch.Tensor]]:
    """Yield ``(query rows, re-ranked distances)`` blocks of the query × gallery matrix, ready for
    :func:`ptl_timm.eval.metrics.evaluate_distance_chunks`; no N × N matrix is ever held."""
    device = resolve_device(device)
    features = _Features(q_feats, g_feats, device)
    if k1 < 1 or k2 < 1 or k1 + 1 > len(features) or k2 > k1 + 1:
        raise InputError(f'need 1 <= k2 <= k1 + 1 <= number of images ({len(features)}), got k1={k1}, k2={k2}')
    initial_rank, row_max = _neighbours(features, k1 + 1, chunk_size)
    encoding = _encoding(features, *_expansion_sets(initial_rank, k1), row_max)
    if k2 > 1:
        encoding = _query_expansion(encoding, initial_rank, k2)
    index = _InvertedIndex(encoding, features.num_query)
    num_gallery = len(features) - features.num_query
    block = max(1, chunk_size // 4)  # the min-overlap pairs grow with the block, keep them small
    overlap_block, denominator_block, original_block = (
        torch.empty(min(block, features.num_query), num_gallery, device=device) for _ in range(3))
    for start in range(0, features.num_query, block):  # the blocks are reused, only the result is new
        stop = min(start + block, features.num_query)
        overlap = overlap_block[:stop - start].zero_()
        index.min_overlap(*encoding.entries(start, stop), overlap, start)
        denominator = torch.sub(2, overlap, out=denominator_block[:stop - start])
        jaccard = torch.rsub(overlap.div_(denominator), 1)
        original = features.distances(slice(start, stop), gallery_only=True, out=original_block)
        original.div_(row_max[start:stop, None]).mul_(lambda_value)
        yield slice(start, stop), jaccard.mul_(1 - lambda_value).add_(original)


def re_ranking(q_feats: ArrayLike, g_feats: ArrayLike, k1: int = RERANK_K1, k2: int = RERANK_K2,
               lambda_value: float = RERANK_LAMBDA, chunk_size: int = 256, device: Optional[Union[str, torch.device]] = None) -> torch.Tensor:
    """The re-ranked query × gallery distance matrix (float32); for large query sets stream it with
    :func:`iter_re_ranking` instead."""
    return torch.cat([block for _, block in iter_re_ranking(
        q_feats, g_feats, k1=k1, k2=k2, lambda_value=lambda_value, chunk_size=chunk_size, device=device)])
