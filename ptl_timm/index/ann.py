"""Approximate search with faiss (optional extra: ``pip install faiss-cpu``), kept beside the exact shards.

The faiss index is derived data: each generation that changes the gallery writes a new faiss file (ids are
the image ids, so results map to the same metadata), named in that generation's metadata, so it is crash-safe
the same way as the shards. Below :data:`IVF_MIN` images it is an exact flat index (an inverted file cannot
be trained on fewer points). From then on it is an inverted file (``IVF<nlist>``, nlist ≈ √N, a power of
two) storing the vectors as ``SQfp16`` (float16: half the memory of the vectors it holds), its centroids
trained on a random sample of the whole gallery (64 points per list). Centroids trained on a gallery's first
tenth place the people added later badly (recall@10 fell to 0.43 at 1M in ``benchmarks/index_speed.py``), so
the writer trains it again, from the shards, whenever the gallery has doubled since the last training: the
cost is amortised to about two trainings' worth of the final size.

How many lists a query visits (``nprobe``) decides its recall, and the right number depends on the data
(a fixed nlist/32 gave recall@10 0.59 on the benchmark's ReID-like gallery at 100k). So after each training
the writer measures it: :data:`TUNE_QUERIES` stored images are searched exactly and with faiss at doubling
nprobe, and the smallest nprobe whose recall@10 reaches :data:`TARGET_RECALL` is recorded with the recall it
gave (``ptl-timm index info`` shows both; ``--nprobe`` overrides). Readers map the faiss file
(``IO_FLAG_MMAP``) instead of loading it. The exact search stays the default.
"""
import math
from pathlib import Path
from typing import Optional, Sequence, Tuple

import numpy as np
import torch

from ptl_timm.errors import CorruptFileError, MissingExtraError, reading
from ptl_timm.utils import atomic_path

__all__ = ['faiss_module', 'IVF_MIN', 'RETRAIN_GROWTH', 'TARGET_RECALL', 'new_index', 'build_ivf', 'tune_nprobe',
           'load', 'save', 'search', 'default_nprobe']

IVF_MIN = 50_000
RETRAIN_GROWTH = 2  # train the inverted file again once the gallery has doubled since its last training
TRAIN_PER_LIST = 64  # training points per list (faiss warns below 39)
TARGET_RECALL = 0.95
TUNE_QUERIES = 200
TOP_K = 10


def faiss_module():
    try:
        import faiss
    except ImportError:
        raise MissingExtraError('the faiss option needs faiss installed: pip install faiss-cpu (or ptl_timm[faiss])'
                                ) from None
    return faiss


def nlist_for(count: int) -> int:
    return 2 ** min(14, max(4, round(math.log2(math.sqrt(count)))))


def default_nprobe(nlist: int) -> int:
    """Where :func:`tune_nprobe` starts (a file written before tuning falls back to it)."""
    return max(1, nlist // 64)


def new_index(dim: int):
    """The exact flat index of a small gallery (inner product = cosine on unit vectors)."""
    faiss = faiss_module()
    return faiss.IndexIDMap2(faiss.IndexFlatIP(dim))


def build_ivf(dim: int, shards: Sequence, dtype: torch.dtype, seed: int = 0):
    """An inverted file of every row of ``shards`` (:class:`~ptl_timm.index.store.Shard`), trained on a
    random sample of them; one shard in memory at a time."""
    faiss = faiss_module()
    total = sum(s.rows for s in shards)
    nlist = nlist_for(total)
    chosen = torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:nlist * TRAIN_PER_LIST].sort().values
    sample, start = [], 0
    for shard in shards:
        rows = chosen[(chosen >= start) & (chosen < start + shard.rows)] - start
        if len(rows):
            sample.append(shard.read(dim, dtype)['embeddings'][rows].float())
        start += shard.rows
    index = faiss.index_factory(dim, f'IVF{nlist},SQfp16', faiss.METRIC_INNER_PRODUCT)
    index.train(np.ascontiguousarray(torch.cat(sample).numpy()))
    for shard in shards:
        tensors = shard.read(dim, dtype)
        index.add_with_ids(np.ascontiguousarray(tensors['embeddings'].float().numpy()), tensors['ids'].numpy())
    return index


def tune_nprobe(index, shards: Sequence, dim: int, dtype: torch.dtype, seed: int = 0) -> Tuple[int, float]:
    """The smallest nprobe (doubling from nlist / 64) whose recall@10 against the exact search reaches
    :data:`TARGET_RECALL` on :data:`TUNE_QUERIES` stored images used as queries (each excluding itself),
    and that recall; nlist (exhaustive) if none does."""
    from types import SimpleNamespace
    from .search import exact_search
    total = sum(s.rows for s in shards)
    chosen = torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:TUNE_QUERIES].sort().values
    queries, ids, start = [], [], 0
    for shard in shards:
        rows = chosen[(chosen >= start) & (chosen < start + shard.rows)] - start
        if len(rows):
            tensors = shard.read(dim, dtype)
            queries.append(tensors['embeddings'][rows].float())
            ids.append(tensors['ids'][rows])
        start += shard.rows
    queries, ids = torch.cat(queries), torch.cat(ids)
    exact = exact_search(SimpleNamespace(shards=shards, dim=dim, dtype=dtype), queries, TOP_K, exclude_ids=ids).ids
    nprobe, recall = default_nprobe(index.nlist) // 2, 0.0
    while nprobe < index.nlist and recall < TARGET_RECALL:
        nprobe = min(index.nlist, max(1, nprobe * 2))
        _, found = search(index, queries, TOP_K + 1, nprobe)
        found = [[i for i in row if i != own][:TOP_K] for row, own in zip(found.tolist(), ids.tolist())]
        recall = float(sum(len(set(f) & set(e)) for f, e in zip(found, exact.tolist())) / exact.numel())
    return nprobe, recall


def is_ivf(index) -> bool:
    return hasattr(index, 'nlist')


def load(path: Path, mapped: bool = False):
    """The faiss index in ``path``; ``mapped``: read-only, its lists mapped from the file (readers)."""
    faiss = faiss_module()
    with reading(path, what='faiss index', fix='the index is damaged: build it again (ptl-timm index build)'):
        try:
            if mapped:
                return faiss.read_index(str(path), faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)
            return faiss.read_index(str(path))
        except RuntimeError as e:
            raise CorruptFileError(f'cannot read faiss index {path}: {e}; build the index again') from e


def save(index, path: Path) -> None:
    faiss = faiss_module()
    with atomic_path(path) as tmp:
        faiss.write_index(index, str(tmp))


def search(index, queries: torch.Tensor, k: int, nprobe: Optional[int] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Scores and ids (Q × k; -inf / -1 where the index has fewer results)."""
    faiss = faiss_module()
    params = faiss.SearchParametersIVF(nprobe=nprobe or default_nprobe(index.nlist)) if is_ivf(index) else None
    scores, ids = index.search(np.ascontiguousarray(queries.float().numpy()), k, params=params)
    scores, ids = torch.from_numpy(scores), torch.from_numpy(ids)
    return scores.masked_fill(ids < 0, float('-inf')), ids
