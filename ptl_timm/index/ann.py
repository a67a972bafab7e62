"""Approximate search with faiss (optional extra: ``pip install faiss-cpu``), kept beside the exact shards.

The faiss index is derived data: each generation that changes the gallery writes a new faiss file (ids are
the image ids, so results map to the same metadata), named in that generation's metadata, so it is crash-safe
the same way as the shards. Below :data:`IVF_MIN` images it is an exact flat index (an inverted file cannot
be trained on fewer points); once the gallery reaches that size it is rebuilt as an inverted file
(``IVF<nlist>``, nlist ≈ 4√N, its centroids trained on a sample of the gallery at that moment) storing the
vectors as ``SQfp16`` (float16: half the memory of the vectors it holds, all of them, in the querying process). ``nprobe`` lists are visited per query (default nlist / 64):
more is slower and closer to exact. Its recall@10 against the exact search is measured by
``benchmarks/index_speed.py``; the exact search stays the default.
"""
import math
from pathlib import Path
from typing import Iterable, Optional, Tuple

import numpy as np
import torch

from ptl_timm.errors import CorruptFileError, MissingExtraError, reading
from ptl_timm.utils import atomic_path

__all__ = ['faiss_module', 'IVF_MIN', 'new_index', 'train_index', 'load', 'save', 'search', 'default_nprobe']

IVF_MIN = 50_000
TRAIN_SAMPLE = 64  # training points per list (faiss warns below 39)


def faiss_module():
    try:
        import faiss
    except ImportError:
        raise MissingExtraError('the faiss option needs faiss installed: pip install faiss-cpu (or ptl_timm[faiss])') from None
    return faiss


def nlist_for(count: int) -> int:
    return 2 ** max(4, round(math.log2(4 * math.sqrt(count))))


def default_nprobe(nlist: int) -> int:
    return max(1, nlist // 64)


def new_index(dim: int):
    """The exact flat index of a small gallery (inner product = cosine on unit vectors)."""
    faiss = faiss_module()
    return faiss.IndexIDMap2(faiss.IndexFlatIP(dim))


def train_index(dim: int, count: int, sample: torch.Tensor, batches: Iterable[Tuple[torch.Tensor, torch.Tensor]]):
    """An inverted-file index of ``count`` vectors, trained on ``sample`` and filled from ``batches`` of
    (embeddings, ids)."""
    faiss = faiss_module()
    nlist = nlist_for(count)
    index = faiss.index_factory(dim, f'IVF{nlist},SQfp16', faiss.METRIC_INNER_PRODUCT)
    index.train(np.ascontiguousarray(sample.float().numpy()))
    for embeddings, ids in batches:
        index.add_with_ids(np.ascontiguousarray(embeddings.float().numpy()), ids.numpy().astype(np.int64))
    return index


def is_ivf(index) -> bool:
    return hasattr(index, 'nlist')


def load(path: Path):
    faiss = faiss_module()
    with reading(path, what='faiss index', fix='the index is damaged: build it again (ptl-timm index build)'):
        try:
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
