"""Exact top-k over an index, streamed one shard at a time, and k-reciprocal re-ranking of the candidates.

Memory is one mapped shard (``rows_per_shard`` × dim; float16 shards widened into one reused float32 buffer)
and a queries × shard score block, plus the running top-k: independent of the gallery size. Results are
ordered by score descending, then image id ascending (ties resolve the same way in every run and for every
shard layout: the selection compares unique (score, id) keys, as :class:`ptl_timm.eval.retrieval.GalleryIndex`
does).

Re-ranking (Zhong et al. 2017) needs every item's neighbourhood, i.e. the whole N × N distance graph; over
a growing gallery that is neither bounded nor incremental. Here it runs over a bounded candidate set per
query (its ``candidates`` nearest items by cosine score, ``re_ranking`` on query + candidates), the usual
deployment form: it reorders the head of the list at a cost of O(candidates²) per query, and an item outside
the candidate set cannot enter the results.
"""
from typing import NamedTuple, Optional

import numpy as np
import torch
import torch.nn.functional as F

from ptl_timm.eval.metrics import _ordered_keys
from ptl_timm.eval.rerank import re_ranking
from .store import Snapshot

__all__ = ['Hits', 'exact_search', 'rerank_hits']

QUERY_BLOCK = 1024  # queries scored against a shard at once (scores: QUERY_BLOCK × rows_per_shard floats)


class Hits(NamedTuple):
    """Per query, best first (k wide): ``scores`` (cosine similarity; -inf where fewer than k items qualify), image
    ``ids`` (-1 there), optional ``embeddings`` of the hits (Q × k × dim) and re-ranked ``distances``."""
    scores: torch.Tensor
    ids: torch.Tensor
    embeddings: Optional[torch.Tensor] = None
    distances: Optional[torch.Tensor] = None


def _select(keys: torch.Tensor, k: int) -> torch.Tensor:
    return torch.topk(keys, min(k, keys.shape[1]), dim=1, largest=False, sorted=True).indices


def exact_search(snapshot: Snapshot, queries: torch.Tensor, k: int, exclude_ids: Optional[torch.Tensor] = None,
                 exclude_cameras: Optional[torch.Tensor] = None, keep_embeddings: bool = False) -> Hits:
    """The ``k`` items of highest cosine score for each query (unit-norm rows, Q × dim), skipping per
    query the image ``exclude_ids[q]`` and the items of camera code ``exclude_cameras[q]`` (-1: none)."""
    queries = torch.as_tensor(queries, dtype=torch.float32)
    num = len(queries)
    exclude_ids = torch.full((num,), -1) if exclude_ids is None else exclude_ids.long()
    exclude_cameras = torch.full((num,), -1) if exclude_cameras is None else exclude_cameras.long()
    keys = torch.empty(num, 0, dtype=torch.int64)
    scores, ids = torch.empty(num, 0), torch.empty(num, 0, dtype=torch.int64)
    embeddings = torch.empty(num, 0, snapshot.dim)
    widened = np.empty((max((s.rows for s in snapshot.shards), default=0), snapshot.dim), dtype=np.float32)
    for shard in snapshot.shards:
        tensors = shard.read(snapshot.dim, snapshot.dtype)
        rows, row_ids, row_cams = tensors['embeddings'], tensors['ids'], tensors['cameras'].long()
        if rows.dtype != torch.float32:  # float16 scored in float32 (CPU half products round to float16);
            np.copyto(widened[:len(rows)], rows.numpy())  # numpy widens faster than torch, into one buffer
            rows = torch.from_numpy(widened[:len(rows)])
        blocks = []
        for start in range(0, num, QUERY_BLOCK):
            part = slice(start, start + QUERY_BLOCK)
            block = queries[part] @ rows.T
            excluded = (row_ids[None] == exclude_ids[part, None]) | (
                (row_cams[None] == exclude_cameras[part, None]) & (exclude_cameras[part, None] >= 0))
            block.masked_fill_(excluded, float('-inf'))
            block_keys = _ordered_keys(block.neg(), index=row_ids)
            top = _select(block_keys, k)
            blocks.append((block_keys.gather(1, top), block.gather(1, top), top))
        shard_keys = torch.cat([b[0] for b in blocks])
        top = torch.cat([b[2] for b in blocks])
        merged = _select(torch.cat([keys, shard_keys], 1), k)
        keys = torch.cat([keys, shard_keys], 1).gather(1, merged)
        scores = torch.cat([scores, torch.cat([b[1] for b in blocks])], 1).gather(1, merged)
        ids = torch.cat([ids, row_ids[top]], 1).gather(1, merged)
        if keep_embeddings:
            embeddings = torch.cat([embeddings, rows[top].float()], 1)[torch.arange(num)[:, None], merged]
    pad = k - scores.shape[1]  # fewer items than k in the whole index
    scores, ids = F.pad(scores, (0, pad), value=float('-inf')), F.pad(ids, (0, pad), value=-1)
    embeddings = F.pad(embeddings, (0, 0, 0, pad)) if keep_embeddings else None
    return Hits(scores, ids.masked_fill(torch.isinf(scores), -1), embeddings)


def rerank_hits(queries: torch.Tensor, hits: Hits, k: int, k1: int = 20, k2: int = 6,
                lambda_value: float = 0.3) -> Hits:
    """The ``k`` best of each query's candidates (``hits`` with embeddings) after k-reciprocal re-ranking
    among the query and its candidates; ``k1`` and ``k2`` shrink to fit a short candidate list."""
    if hits.embeddings is None:
        raise ValueError('re-ranking needs the embeddings of the candidates (keep_embeddings=True)')
    scores, ids, distances = [], [], []
    for q in range(len(queries)):
        valid = hits.ids[q] >= 0
        count = int(valid.sum())
        width = min(k, count)
        if count < 2:
            order = torch.arange(width)
            dist = 1 - hits.scores[q, :width]
        else:
            candidates = F.normalize(hits.embeddings[q, :count], dim=1)
            small_k1 = min(k1, count)
            dist = re_ranking(queries[q:q + 1], candidates, k1=small_k1, k2=min(k2, small_k1 + 1),
                              lambda_value=lambda_value, device='cpu')[0]
            order = torch.from_numpy(np.lexsort((hits.ids[q, :count].numpy(), dist.numpy())))[:width]
            dist = dist[order]
        scores.append(F.pad(hits.scores[q, order], (0, k - width), value=float('-inf')))
        ids.append(F.pad(hits.ids[q, order], (0, k - width), value=-1))
        distances.append(F.pad(dist, (0, k - width), value=float('inf')))
    return Hits(torch.stack(scores), torch.stack(ids), None, torch.stack(distances))
