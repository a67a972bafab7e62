"""Retrieval: a gallery index, ranked lists for queries, and their table and picture.

Features are L2-normalised, so the score is the cosine similarity (the inner product). The index is
faiss's exact ``IndexFlatIP`` when faiss is installed (``pip install ptl_timm[faiss]``) and a blocked
torch top-k otherwise; both return the same items in the same order (score descending, then gallery
index ascending).

When the identities of query and gallery are known (dataset splits, saved dataset features), the
ranked lists follow the evaluation protocol: gallery images of the query's identity *and* camera are
junk and skipped (without cameras: only the query image itself, :mod:`ptl_timm.eval.protocol`), each result is marked correct or wrong, and each query gets its AP (so the worst
queries can be listed first).
"""
import csv
import io
import math
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageOps

from ptl_timm.errors import InputError, MissingExtraError
from ptl_timm.utils import PathLike, atomic_path, atomic_save_json, atomic_write, to_rgb
from .features import FeatureSet
from .metrics import _ordered_keys, evaluate_rank
from .protocol import resolve_protocol

__all__ = ['GalleryIndex', 'faiss_available', 'search', 'write_rankings', 'draw_rankings', 'RANKING_FORMATS']

RANKING_FORMATS = ('.json', '.csv')
BACKENDS = ('auto', 'faiss', 'torch')
COLOURS = dict(query=(40, 90, 220), correct=(30, 170, 60), wrong=(220, 40, 40), unknown=(150, 150, 150))
LEGEND = dict(query='query', correct='same identity', wrong='other identity', unknown='identity unknown')
HEADER_HEIGHT, SWATCH, LEGEND_STEP = 34, 10, 110
LEGEND_WIDTH = LEGEND_STEP * len(LEGEND)


def faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


class GalleryIndex:
    """Exact nearest gallery items by inner product (cosine similarity on L2-normalised features).

    Args:
        feats: gallery features (G × D).
        backend: 'faiss', 'torch', or 'auto' (faiss when installed).
        block_size: query rows scored at once by the torch backend.
    """

    def __init__(self, feats: torch.Tensor, backend: str = 'auto', block_size: int = 256):
        if backend not in BACKENDS:
            raise InputError(f'backend must be one of {BACKENDS}, got {backend!r}')
        if backend == 'faiss' and not faiss_available():
            raise MissingExtraError('backend faiss needs faiss installed: pip install faiss-cpu (or ptl_timm[faiss])')
        self.backend = 'faiss' if backend == 'auto' and faiss_available() else backend.replace('auto', 'torch')
        self.feats = torch.as_tensor(feats, dtype=torch.float32).contiguous()
        self.block_size = block_size
        if self.backend == 'faiss':
            import faiss
            self._faiss = faiss.IndexFlatIP(self.feats.shape[1])
            self._faiss.add(self.feats.numpy())

    def __len__(self) -> int:
        return len(self.feats)

    def _top_k_block(self, queries: torch.Tensor, k: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """Top-k by unique (score descending, index) keys: torch.topk alone may drop the lowest index
        among items tied at the k-th score (duplicate gallery images)."""
        scores = queries @ self.feats.T
        top = torch.topk(_ordered_keys(scores.neg()), k, dim=1, largest=False).indices
        return scores.gather(1, top), top

    def search(self, queries: torch.Tensor, k: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """Scores and gallery indices (Q × k, best first) of the ``k`` nearest items of each query."""
        queries = torch.as_tensor(queries, dtype=torch.float32).contiguous()
        k = min(k, len(self))
        if self.backend == 'faiss':
            scores, indices = (torch.from_numpy(a) for a in self._faiss.search(queries.numpy(), k))
        else:
            blocks = [self._top_k_block(q, k) for q in queries.split(self.block_size)]
            scores, indices = torch.cat([b[0] for b in blocks]), torch.cat([b[1] for b in blocks])
        # one order for both backends: score descending, then gallery index
        order = torch.from_numpy(np.lexsort((indices.numpy(), -scores.numpy()), axis=1))
        return scores.gather(1, order), indices.long().gather(1, order)


def _count_in(keys: torch.Tensor, pool: torch.Tensor) -> torch.Tensor:
    """How many entries of ``pool`` equal each key (by sorting the pool: no keys × pool matrix)."""
    values, counts = torch.unique(pool, return_counts=True)
    pos = torch.searchsorted(values, keys).clamp_max(len(values) - 1)
    return torch.where(values[pos] == keys, counts[pos], torch.zeros_like(keys))


def _match_counts(query: FeatureSet, gallery: FeatureSet) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per query: gallery items of its identity and camera (junk), and of its identity on another camera."""
    num_cams = int(torch.cat([query.camids, gallery.camids]).max()) + 1
    junk = _count_in(query.pids * num_cams + query.camids, gallery.pids * num_cams + gallery.camids)
    return junk, _count_in(query.pids, gallery.pids) - junk


def search(
        query: FeatureSet,
        gallery: FeatureSet,
        top_k: int = 10,
        backend: str = 'auto',
        worst_first: bool = False,
        num_queries: Optional[int] = None,
) -> List[Dict[str, Any]]:
    """Ranked gallery lists, one per query: ``{query, pid, camid, ap, results: [{rank, path, score,
    pid, camid, correct}]}``. With known identities on both sides junk is skipped, ``correct`` is
    set and ``ap`` is the query's AP (None when it has no true match); otherwise both are None.

    ``worst_first`` orders the queries by AP, lowest first (those without a true match last);
    ``num_queries`` keeps the first N lists of that order: the N worst of all queries, or, without
    ``worst_first``, the first N queries."""
    if query.feats.shape[1] != gallery.feats.shape[1]:
        raise InputError(f'query embeddings are {query.feats.shape[1]}-d and gallery embeddings '
                         f'{gallery.feats.shape[1]}-d: they come from different models; embed both with one')
    labelled = all(bool(len(s.pids)) and bool((s.pids >= 0).all()) for s in (query, gallery))
    if worst_first and not labelled:
        raise InputError('--worst-first needs the identities of queries and gallery (dataset splits, '
                         'features extracted from a dataset, or images named as a dataset names them)')
    if num_queries is not None and not worst_first:
        query = FeatureSet(*(x[:num_queries] for x in query))
    index = GalleryIndex(gallery.feats, backend=backend)
    junk = valid = torch.zeros(len(query.feats), dtype=torch.int64)
    q_keys, g_keys = query.camids, gallery.camids
    if labelled:  # the camera, or without cameras the file, decides what is junk (see ptl_timm.eval.protocol)
        q_keys, g_keys = resolve_protocol([query, gallery]).keys
        junk, valid = _match_counts(query._replace(camids=q_keys), gallery._replace(camids=g_keys))
    # unlabelled, nothing marks junk, but a query image that is also in the gallery is no result of itself
    own = _own_items(query, gallery) if not labelled else [None] * len(query.feats)
    scores, indices = index.search(query.feats, top_k + int(junk.max()) + (not labelled))
    aps = [None] * len(query.feats)
    if bool((valid > 0).any()):  # else every AP stays None (evaluate_rank refuses a split without true matches)
        per_query = evaluate_rank(query.feats, gallery.feats, query.pids, gallery.pids, q_keys, g_keys,
                                  device='cpu')['per_query_ap']
        aps = [None if math.isnan(ap) else float(ap) for ap in per_query]
    rankings = []
    for q in range(len(query.feats)):
        results = []
        for score, g in zip(scores[q].tolist(), indices[q].tolist()):
            if g == own[q]:
                continue
            same_id = labelled and int(gallery.pids[g]) == int(query.pids[q])
            if same_id and int(g_keys[g]) == int(q_keys[q]):
                continue
            results.append(dict(rank=len(results) + 1, path=_path(gallery, g), score=score, pid=int(gallery.pids[g]),
                                camid=int(gallery.camids[g]), correct=same_id if labelled else None))
            if len(results) == top_k:
                break
        rankings.append(dict(query=_path(query, q), pid=int(query.pids[q]), camid=int(query.camids[q]), ap=aps[q],
                             results=results))
    if worst_first:
        rankings.sort(key=lambda r: math.inf if r['ap'] is None else r['ap'])
    return rankings[:num_queries]


def _own_items(query: FeatureSet, gallery: FeatureSet) -> List[Optional[int]]:
    """Per query, the gallery item that is the same file (by resolved path), or None."""
    where = {os.path.realpath(p): g for g, p in enumerate(gallery.paths)}
    return [where.get(os.path.realpath(p)) for p in query.paths] + [None] * (len(query.feats) - len(query.paths))


def _path(features: FeatureSet, i: int) -> str:
    return features.paths[i] if i < len(features.paths) else f'#{i}'


def write_rankings(rankings: Sequence[Dict[str, Any]], path: PathLike) -> Path:
    """Write ranked lists atomically as JSON (nested) or CSV (one row per query and rank)."""
    path = Path(path)
    if path.suffix not in RANKING_FORMATS:
        raise InputError(f'ranking file {path} must end in {" or ".join(RANKING_FORMATS)}')
    if path.suffix == '.json':
        atomic_save_json(list(rankings), path)
        return path
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(['query', 'query_pid', 'query_camid', 'query_ap', 'rank', 'gallery', 'score', 'pid', 'camid',
                     'correct'])
    for r in rankings:
        for item in r['results']:
            writer.writerow([r['query'], r['pid'], r['camid'], '' if r['ap'] is None else f'{r["ap"]:.6f}', item['rank'],
                             item['path'], f'{item["score"]:.6f}', item['pid'], item['camid'],
                             '' if item['correct'] is None else int(item['correct'])])
    with atomic_write(path, 'w') as f:
        f.write(buffer.getvalue())
    return path


def _thumbnail(path: str, size: Tuple[int, int], colour: Tuple[int, int, int], border: int) -> Image.Image:
    height, width = size
    try:
        with Image.open(path) as image:
            picture = to_rgb(image, path).resize((width - 2 * border, height - 2 * border), Image.BILINEAR)
    except OSError:  # a path that is gone: keep the grid readable
        picture = Image.new('RGB', (width - 2 * border, height - 2 * border), (235, 235, 235))
    return ImageOps.expand(picture, border=border, fill=colour)


def _draw_header(draw: ImageDraw.ImageDraw, title: str) -> None:
    """The title line, then one colour swatch + meaning per frame colour."""
    draw.text((2, 2), title, fill=(0, 0, 0))
    for i, (state, meaning) in enumerate(LEGEND.items()):
        left = 2 + i * LEGEND_STEP
        draw.rectangle((left, 18, left + SWATCH, 18 + SWATCH), fill=COLOURS[state])
        draw.text((left + SWATCH + 4, 17), meaning, fill=(0, 0, 0))


def draw_rankings(
        rankings: Sequence[Dict[str, Any]],
        path: PathLike,
        thumb_size: Tuple[int, int] = (128, 64),
        max_queries: int = 20,
        border: int = 4,
        title: str = 'ranked lists',
) -> Path:
    """One row per query (at most ``max_queries``): the query (blue frame) then its ranked results,
    framed green (correct), red (wrong) or grey (identity unknown), each captioned with rank and
    score (and the query with its AP), under a header with ``title`` and the colour legend, so the
    picture explains itself away from the command that made it. Written atomically as PNG."""
    rows = list(rankings)[:max_queries]
    if not rows:
        raise InputError('no ranked lists to draw')
    height, width = thumb_size
    caption, gap = 14, 12
    columns = 1 + max(len(r['results']) for r in rows)
    canvas_width = max(columns * (width + 4) + gap, LEGEND_WIDTH)
    canvas = Image.new('RGB', (canvas_width, HEADER_HEIGHT + len(rows) * (height + caption + 6)), 'white')
    draw = ImageDraw.Draw(canvas)
    _draw_header(draw, title)
    for row, ranking in enumerate(rows):
        top = HEADER_HEIGHT + row * (height + caption + 6)
        canvas.paste(_thumbnail(ranking['query'], thumb_size, COLOURS['query'], border), (0, top))
        label = 'query' if ranking['pid'] in (None, -1) else f'id {ranking["pid"]}'  # an index's identities are names
        label += '' if ranking['ap'] is None else f' AP {ranking["ap"]:.2f}'
        draw.text((2, top + height + 1), label, fill=(0, 0, 0))
        for column, item in enumerate(ranking['results'], start=1):
            left = column * (width + 4) + gap
            state = 'unknown' if item['correct'] is None else ('correct' if item['correct'] else 'wrong')
            canvas.paste(_thumbnail(item['path'], thumb_size, COLOURS[state], border), (left, top))
            draw.text((left + 2, top + height + 1), f'{item["rank"]}: {item["score"]:.3f}', fill=(0, 0, 0))
    path = Path(path)
    with atomic_path(path) as tmp:
        canvas.save(tmp, format='PNG')
    return path
