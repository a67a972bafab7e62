"""A persistent gallery of person images that grows and shrinks: build, add, remove, query, info.

The index knows the model it was built with (:mod:`ptl_timm.index.store`'s ``index.json``): its
architecture, embedding width, preprocessing (input size, interpolation, mean, std, crop, flip) and the
embeddings it gives a fixed probe batch. Adding and querying take the model again, and a model whose
preprocessing, width or probe embeddings differ is refused before anything is written: embeddings of two
models are not comparable, and an index silently mixing them would return nonsense.

Search protocol (printed with the results): the query image itself is never a result when it is in the
index (same file); with ``exclude_camera`` the items of the query's own camera are skipped too (the
standard ReID protocol; the camera comes from ``camera=``, the query's record in the index, or a
dataset-style file name). Identities, when known on both sides, mark each result right or wrong.

Identities have one spelling (:func:`identity_label`) wherever one enters or is compared: an all-digit label is
its number, so ``--identity 0007``, a file named ``0007_c1s1_...`` and ``remove --identities 7`` all mean
person 7 (labels stored verbatim by older versions are compared the same way).

A file added again is embedded again when its content changed since it was indexed (a camera overwriting
``latest.jpg``): :func:`file_content` records its size and modification time.
"""
import math
import os
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ptl_timm.data.datasets import labels_from_names
from ptl_timm.errors import DatasetNotFoundError, InputError
from ptl_timm.eval.extract import FeatureExtractor, image_files
from ptl_timm.utils import PathLike
from . import ann
from .search import Hits, exact_search, rerank_hits
from .store import (
    DTYPES, Snapshot, Writer, check_new, create, discard, known_paths, now, open_snapshot, read_manifest, writer)

__all__ = ['ImageIndex', 'BACKENDS', 'ROWS_PER_SHARD', 'describe_model', 'collect_images', 'identity_label',
           'file_content']

BACKENDS = ('exact', 'faiss')
ROWS_PER_SHARD = 16384  # 32 MB of float32 512-d embeddings: what one query step maps
ADD_BATCH = 50_000  # images embedded and committed per generation when adding many
PROBE_IMAGES = 2
PROBE_TOLERANCE = 1e-3  # cosine distance between probe embeddings still taken as the same model (GPU vs CPU)
INFO_IDENTITIES = 5  # identities info shows, to tell how they are spelled
_PREPROCESSING = ('input_size', 'interpolation', 'mean', 'std', 'crop_pct', 'crop_mode')


def collect_images(images: Union[PathLike, Sequence[PathLike]]) -> List[str]:
    """Image files and every image under folders (sorted), as resolved paths; a missing one is an error."""
    items = [images] if isinstance(images, (str, os.PathLike)) else list(images)
    paths = []
    for item in items:
        path = Path(item).expanduser()
        if path.is_dir():
            paths += image_files(path)
        elif path.is_file():
            paths.append(str(path))
        else:
            raise DatasetNotFoundError(f'image {item} does not exist')
    if not paths:
        raise InputError('no images given')
    return list(dict.fromkeys(os.path.realpath(p) for p in paths))


def identity_label(identity: Any) -> Optional[str]:
    """The one spelling of an identity: an all-digit label as its number ('0007' and 7 are '7', as dataset file
    names count people), any other label as given, None (unknown) as None."""
    if identity is None:
        return None
    text = str(identity).strip()
    return str(int(text)) if text.isascii() and text.isdigit() else text


def file_content(path: PathLike) -> str:
    """What tells that an image file changed since it was embedded: its size and modification time (ns). A stat
    costs nothing beside embedding, where a hash would read every known image at every add; the price is that
    a rewrite keeping both (same size, time restored by ``cp -p``/``rsync -t``) goes unseen."""
    stat = os.stat(path)
    return f'{stat.st_size}:{stat.st_mtime_ns}'


def _labels(paths: Sequence[str], identity: Optional[str], camera: Optional[str]) -> Tuple[List, List]:
    """Identity and camera of each image: the given ones, else from dataset-style file names, else None."""
    named = labels_from_names(paths)
    identities = [identity_label(identity)] * len(paths) if identity is not None else (
        [identity_label(p) for p in named[0]] if named else [None] * len(paths))
    cameras = [camera] * len(paths) if camera is not None else (
        [f'c{c + 1}' for c in named[1]] if named else [None] * len(paths))
    return identities, cameras


def describe_model(extractor: FeatureExtractor, source: str) -> Dict[str, Any]:
    """What an index records of the model that embeds its images (see the module notes)."""
    cfg = extractor.data_config
    probe = extractor(torch.randn((PROBE_IMAGES, *cfg['input_size']), generator=torch.Generator().manual_seed(0)))
    architecture = (getattr(extractor.model, 'pretrained_cfg', None) or {}).get('architecture',
                                                                                 type(extractor.model).__name__)
    return dict(
        model=dict(source=source, architecture=architecture, embedding_dim=int(probe.shape[1]), probe=probe.tolist()),
        preprocessing=dict({k: list(cfg[k]) if isinstance(cfg[k], tuple) else cfg[k] for k in _PREPROCESSING},
                           flip=extractor.flip))


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, (int, float)) and isinstance(b, (int, float)) and math.isclose(a, b, rel_tol=1e-6)
    return a == b


class ImageIndex:
    """The index in ``folder`` (see :mod:`ptl_timm.index`); ``ImageIndex.build`` makes one."""

    def __init__(self, folder: PathLike):
        self.folder = Path(folder)
        self.manifest = read_manifest(self.folder)
        self._faiss: Tuple[Optional[str], Any] = (None, None)  # the last faiss file read, kept for the next query

    # -- making one ---------------------------------------------------------------------------------------
    @classmethod
    def create(cls, folder: PathLike, description: Mapping[str, Any], dtype: str = 'float32',
               rows_per_shard: int = ROWS_PER_SHARD, faiss: bool = False) -> 'ImageIndex':
        """An empty index for embeddings of the model ``description`` (:func:`describe_model`) in a new
        or empty ``folder``, or one whose build never committed."""
        folder = Path(folder)
        if dtype not in DTYPES:
            raise InputError(f'dtype must be one of {sorted(DTYPES)}, got {dtype!r}')
        if rows_per_shard < 1:
            raise InputError(f'rows_per_shard must be positive, got {rows_per_shard}')
        if faiss:
            ann.faiss_module()
        create(folder, dict(description, storage=dict(dtype=dtype, rows_per_shard=int(rows_per_shard)),
                            metric='cosine', faiss=bool(faiss), created=now()))
        return cls(folder)

    @classmethod
    def build(cls, folder: PathLike, model: Union[PathLike, nn.Module], images: Union[PathLike, Sequence[PathLike]],
              identity: Optional[str] = None, camera: Optional[str] = None, flip: bool = False,
              dtype: str = 'float32', rows_per_shard: int = ROWS_PER_SHARD, faiss: bool = False,
              **extract: Any) -> 'ImageIndex':
        """A new index in ``folder`` holding ``images`` (files or folders) embedded by ``model``.

        ``identity``/``camera`` label every image (default: read from dataset-style file names, else
        unknown); ``flip`` is flip test-time augmentation (recorded: every later add and query uses it);
        ``extract``: ``batch_size``, ``device``, ``num_workers``, ``progress`` of the extraction.

        A build that fails (an unreadable image, an interrupt) deletes the index it made, so that it can be
        run again; what was in ``folder`` before stays."""
        folder = Path(folder)
        check_new(folder)
        paths = collect_images(images)
        if faiss:
            ann.faiss_module()
        extractor = FeatureExtractor(model, flip=flip, **extract)
        created = [f for f in (folder, *folder.parents) if not f.exists()]  # deepest first
        index = cls.create(folder, describe_model(extractor, _source(model)), dtype, rows_per_shard, faiss)
        try:
            index._embed_and_add(extractor, paths, *_labels(paths, identity, camera), [file_content(p) for p in paths])
        except BaseException:
            discard(folder, created)
            raise
        return index

    # -- the model ----------------------------------------------------------------------------------------
    def extractor(self, model: Union[PathLike, nn.Module], **extract: Any) -> FeatureExtractor:
        """A feature extractor of ``model`` set up as at build, refused when the model is not the one the
        index was built with (preprocessing, width or probe embeddings differ)."""
        extractor = FeatureExtractor(model, flip=self.manifest['preprocessing']['flip'], **extract)
        built, given = self.manifest, describe_model(extractor, _source(model))
        problems = [f'{key} {given["preprocessing"][key]} instead of {built["preprocessing"][key]}' for key in
                    _PREPROCESSING if not _same(given['preprocessing'][key], built['preprocessing'].get(key))]
        dim, built_dim = given['model']['embedding_dim'], built['model']['embedding_dim']
        if dim != built_dim:
            problems.append(f'{dim}-d embeddings instead of {built_dim}-d')
        else:
            probe, reference = torch.tensor(given['model']['probe']), torch.tensor(built['model']['probe'])
            distance = float((1 - (F.normalize(probe, dim=1) * F.normalize(reference, dim=1)).sum(1)).max())
            if distance > PROBE_TOLERANCE:
                problems.append(f'other embeddings (cosine distance {distance:.3g} on the probe images, '
                                f'tolerance {PROBE_TOLERANCE:g})')
        if problems:
            raise InputError(
                f'{_source(model)} is not the model the index {self.folder} was built with '
                f'({built["model"]["source"]}, {built["model"]["architecture"]}): it has {"; ".join(problems)}. Use '
                f'that model, or build a new index for this one')
        return extractor

    # -- writing ------------------------------------------------------------------------------------------
    def add(self, model: Union[PathLike, nn.Module], images: Union[PathLike, Sequence[PathLike]],
            identity: Optional[str] = None, camera: Optional[str] = None, **extract: Any) -> Dict[str, int]:
        """Embed and add the images not yet in the index (by resolved path), and embed again those whose file
        changed since (:func:`file_content`; an entry recorded without it counts as unchanged); returns
        ``{added, updated, skipped}``."""
        paths = collect_images(images)
        contents = [file_content(p) for p in paths]  # before embedding: a change while embedding is seen next time
        with open_snapshot(self.folder, self.manifest) as snapshot:
            known = known_paths(snapshot.db, paths)
        todo = [i for i, (p, c) in enumerate(zip(paths, contents)) if p not in known or known[p][1] not in (None, c)]
        if todo:
            new = [paths[i] for i in todo]
            self._embed_and_add(self.extractor(model, **extract), new, *_labels(new, identity, camera),
                                [contents[i] for i in todo])
        updated = sum(paths[i] in known for i in todo)
        return dict(added=len(todo) - updated, updated=updated, skipped=len(paths) - len(todo))

    def _embed_and_add(self, extractor: FeatureExtractor, paths: List[str], identities: List, cameras: List,
                       contents: List[str]) -> None:
        for start in range(0, len(paths), ADD_BATCH):  # a killed add keeps its finished batches
            part = slice(start, start + ADD_BATCH)
            self.add_embeddings(extractor(paths[part]), paths[part], identities[part], cameras[part], contents[part])

    def add_embeddings(self, embeddings: torch.Tensor, paths: Sequence[str], identities: Optional[Sequence] = None,
                       cameras: Optional[Sequence] = None, contents: Optional[Sequence[str]] = None) -> int:
        """Add precomputed embeddings (N × dim, L2-normalised here) of images ``paths`` in one generation.

        A path already in the index is skipped, unless ``contents`` (:func:`file_content` of each file) differs
        from the one recorded: its entry is then replaced, in the same generation. Unknown contents (None given
        or recorded) count as unchanged. Returns the number of embeddings written (added or replaced)."""
        embeddings = torch.as_tensor(embeddings, dtype=torch.float32)
        dim = self.manifest['model']['embedding_dim']
        if embeddings.ndim != 2 or embeddings.shape[1] != dim or len(embeddings) != len(paths):
            raise InputError(f'{len(paths)} paths need {len(paths)} × {dim} embeddings, got {tuple(embeddings.shape)}')
        identities = [identity_label(i) for i in identities] if identities is not None else [None] * len(paths)
        cameras = list(cameras) if cameras is not None else [None] * len(paths)
        contents = list(contents) if contents is not None else [None] * len(paths)
        with writer(self.folder) as w:
            known = known_paths(w.db, paths)
            keep, stale, seen = [], [], set()
            for i, path in enumerate(paths):
                image, recorded = known.get(path, (None, None))
                unchanged = image is not None and (None in (recorded, contents[i]) or recorded == contents[i])
                if path in seen or unchanged:
                    continue
                seen.add(path)
                keep.append(i)
                if image is not None:
                    stale.append(image)
            if not keep:
                return 0
            stale = torch.tensor(stale, dtype=torch.int64)
            if len(stale):
                self._drop(w, stale)
            added = F.normalize(embeddings[keep], dim=1)
            columns = ([column[i] for i in keep] for column in (paths, identities, cameras, contents))
            ids = self._append(w, added, *columns)
            self._update_faiss(w, added=(added, ids), removed=stale if len(stale) else None)
        return len(keep)

    def _append(self, w: Writer, embeddings: torch.Tensor, paths: List[str], identities: List, cameras: List,
                contents: List) -> torch.Tensor:
        """New rows: the last shard refilled (a new file), then new shards; returns the new image ids."""
        dtype, per_shard = DTYPES[self.manifest['storage']['dtype']], self.manifest['storage']['rows_per_shard']
        ids = w.take_ids(len(paths))
        codes = torch.tensor([w.camera_code(c) for c in cameras], dtype=torch.int32)
        places, start = [], 0
        last_id = w.db.execute('SELECT max(id) FROM shards').fetchone()[0]
        with w.shards([last_id]) as opened:  # as this generation left it (a replacement may have rewritten it)
            last = opened[0] if opened and opened[0].rows < per_shard else None
            if last is not None:
                old = last.read(w.snapshot.dim, w.snapshot.dtype)
                take = min(per_shard - last.rows, len(paths))
                w.write_shard(last.id, torch.cat([old['embeddings'], embeddings[:take].to(dtype)]),
                              torch.cat([old['ids'], ids[:take]]), torch.cat([old['cameras'], codes[:take]]))
                places += [(last.id, last.rows + i) for i in range(take)]
                start = take
        while start < len(paths):
            shard, part = w.new_shard_id(), slice(start, start + per_shard)
            w.write_shard(shard, embeddings[part].to(dtype), ids[part], codes[part])
            places += [(shard, i) for i in range(len(ids[part]))]
            start += per_shard
        added = now()
        w.db.executemany(
            'INSERT INTO images (id, path, identity, camera, added, shard, position, content) '
            'VALUES (?, ?, ?, ?, ?, ?, ?, ?)',
            [(int(i), p, ident, cam, added, shard, position, content) for i, p, ident, cam, (shard, position), content
             in zip(ids.tolist(), paths, identities, cameras, places, contents)])
        return ids

    def remove(self, paths: Sequence[PathLike] = (), identities: Sequence[str] = ()) -> int:
        """Remove images by path and/or every image of the given identities; returns how many. Nothing
        matching is an error (and nothing changes)."""
        if not paths and not identities:
            raise InputError('name the images to remove: paths and/or identities')
        resolved = [os.path.realpath(p) for p in paths]
        with open_snapshot(self.folder, self.manifest) as snapshot:
            found = _matching(snapshot.db, resolved, identities)
        if not found:
            raise InputError(f'nothing in {self.folder} matches the paths {list(map(str, paths))} or identities '
                             f'{list(identities)}; see `ptl-timm index info --index {self.folder}`')
        with writer(self.folder) as w:
            ids = torch.tensor(sorted(_matching(w.db, resolved, identities)), dtype=torch.int64)
            self._drop(w, ids)
            self._update_faiss(w, removed=ids)
        return len(ids)

    @staticmethod
    def _drop(w: Writer, ids: torch.Tensor) -> None:
        """Images ``ids`` out of the generation being written: each shard holding some rewritten without them
        (dropped when none is left), their metadata deleted; the faiss file is the caller's."""
        listed = ','.join(map(str, ids.tolist()))
        affected = [row[0] for row in w.db.execute(f'SELECT DISTINCT shard FROM images WHERE id IN ({listed})')]
        with w.shards(affected) as shards:
            for shard in shards:
                tensors = shard.read(w.snapshot.dim, w.snapshot.dtype)
                keep = ~torch.isin(tensors['ids'], ids)
                if not keep.any():
                    w.drop_shard(shard.id)
                    continue
                w.write_shard(shard.id, tensors['embeddings'][keep], tensors['ids'][keep], tensors['cameras'][keep])
                w.place(tensors['ids'][keep], shard.id)
        w.db.execute(f'DELETE FROM images WHERE id IN ({listed})')

    def _update_faiss(self, w: Writer, added: Optional[Tuple[torch.Tensor, torch.Tensor]] = None,
                      removed: Optional[torch.Tensor] = None) -> None:
        """The faiss file of the new generation: the current one changed by the same rows (or built anew)."""
        if not self.manifest.get('faiss'):
            return
        faiss = ann.faiss_module()
        current = w.snapshot.state('faiss_file')
        index = ann.load(self.folder / current) if current else ann.new_index(w.snapshot.dim)
        if removed is not None:
            index.remove_ids(faiss.IDSelectorBatch(removed.numpy().astype(np.int64)))
        if added is not None:
            index.add_with_ids(np.ascontiguousarray(added[0].numpy()), added[1].numpy().astype(np.int64))
        trained = int(w.state('faiss_trained', '0'))
        if index.ntotal >= ann.IVF_MIN and (not ann.is_ivf(index) or index.ntotal >= ann.RETRAIN_GROWTH * trained):
            with w.shards() as shards:
                index = ann.build_ivf(w.snapshot.dim, shards, w.snapshot.dtype)
                nprobe, recall = ann.tune_nprobe(index, shards, w.snapshot.dim, w.snapshot.dtype)
            w.set_state('faiss_trained', index.ntotal)
            w.set_state('faiss_nprobe', nprobe)
            w.set_state('faiss_recall', f'{recall:.4f}')
        name = f'faiss-{w.generation:06d}.index'
        ann.save(index, self.folder / name)
        w.set_state('faiss_file', name)

    # -- reading ------------------------------------------------------------------------------------------
    def search(self, snapshot: Snapshot, queries: torch.Tensor, k: int = 10, backend: str = 'exact',
               exclude_ids: Optional[torch.Tensor] = None, exclude_cameras: Optional[torch.Tensor] = None,
               rerank: bool = False, candidates: int = 100, nprobe: Optional[int] = None) -> Hits:
        """Top-``k`` hits of unit-norm ``queries`` in ``snapshot`` (exclusions as in :func:`exact_search`)."""
        if backend not in BACKENDS:
            raise InputError(f'backend must be one of {BACKENDS}, got {backend!r}')
        if k < 1 or (rerank and candidates < k):
            raise InputError(f'need 1 <= top-k <= candidates, got top-k {k}, candidates {candidates}')
        queries = F.normalize(torch.as_tensor(queries, dtype=torch.float32), dim=1)
        depth = candidates if rerank else k
        if backend == 'exact':
            hits = exact_search(snapshot, queries, depth, exclude_ids, exclude_cameras, keep_embeddings=rerank)
        else:
            hits = self._faiss_search(snapshot, queries, depth, exclude_ids, exclude_cameras, nprobe, rerank)
        return rerank_hits(queries, hits, k) if rerank else hits

    def _faiss_search(self, snapshot: Snapshot, queries: torch.Tensor, k: int, exclude_ids: Optional[torch.Tensor],
                      exclude_cameras: Optional[torch.Tensor], nprobe: Optional[int], embeddings: bool) -> Hits:
        name = snapshot.state('faiss_file')
        if not self.manifest.get('faiss') or name is None:
            raise InputError(f'{self.folder} was built without faiss (ptl-timm index build --faiss); use the exact '
                             f'search')
        nprobe = nprobe or int(snapshot.state('faiss_nprobe', '0')) or None  # the one measured at training
        if self._faiss[0] != name:  # files are immutable: one read per generation
            self._faiss = (name, ann.load(self.folder / name, mapped=True))
        index = self._faiss[1]
        exclude_ids = torch.full((len(queries),), -1) if exclude_ids is None else exclude_ids
        exclude_cameras = torch.full((len(queries),), -1) if exclude_cameras is None else exclude_cameras
        scores, ids = torch.empty(len(queries), 0), torch.empty(len(queries), 0, dtype=torch.int64)
        keep = torch.empty(len(queries), 0, dtype=torch.bool)  # what an empty index finds (faiss refuses k = 0)
        depth = k + 1
        while index.ntotal:  # fetch deeper until k results survive the exclusions, or the index is exhausted
            scores, ids = ann.search(index, queries, min(depth, index.ntotal), nprobe)
            cameras = _camera_codes(snapshot, ids)
            keep = (ids >= 0) & (ids != exclude_ids[:, None]) & ~(
                (cameras == exclude_cameras[:, None]) & (exclude_cameras[:, None] >= 0))
            if bool((keep.sum(1) >= min(k, index.ntotal)).all()) or depth >= index.ntotal:
                break
            depth *= 4
        order = torch.sort((~keep).to(torch.int8), dim=1, stable=True).indices[:, :k]
        scores = scores.gather(1, order).masked_fill(~keep.gather(1, order), float('-inf'))
        ids = ids.gather(1, order).masked_fill(~keep.gather(1, order), -1)
        if scores.shape[1] < k:
            pad = k - scores.shape[1]
            scores, ids = F.pad(scores, (0, pad), value=float('-inf')), F.pad(ids, (0, pad), value=-1)
        return Hits(scores, ids, fetch_embeddings(snapshot, ids) if embeddings else None)

    def query(self, model: Union[PathLike, nn.Module], images: Union[PathLike, Sequence[PathLike]], top_k: int = 10,
              backend: str = 'exact', rerank: bool = False, candidates: int = 100, exclude_camera: bool = False,
              camera: Optional[str] = None, nprobe: Optional[int] = None, **extract: Any) -> Dict[str, Any]:
        """Ranked lists of the index for query images, in the format of :func:`ptl_timm.eval.retrieval.search`
        (``write_rankings`` / ``draw_rankings`` take them): ``{'protocol': sentence, 'rankings': [...]}``."""
        paths = collect_images(images)
        if backend == 'faiss':
            ann.faiss_module()
        feats = self.extractor(model, **extract)(paths)
        with open_snapshot(self.folder, self.manifest) as snapshot:
            indexed = {path: image for path, (image, _) in known_paths(snapshot.db, paths).items()}
            records = snapshot.images(indexed.values())
            named_ids, named_cams = _labels(paths, None, camera)
            q_identity = [identity_label(records[indexed[p]]['identity']) if p in indexed else named_ids[i]
                          for i, p in enumerate(paths)]
            q_camera = [records[indexed[p]]['camera'] if p in indexed and camera is None else named_cams[i]
                        for i, p in enumerate(paths)]
            codes = snapshot.camera_codes()
            exclude_ids = torch.tensor([indexed.get(p, -1) for p in paths])
            exclude_cameras = torch.tensor([codes.get(c, -2) if c is not None else -1 for c in q_camera]) \
                if exclude_camera else None
            hits = self.search(snapshot, feats, top_k, backend, exclude_ids, exclude_cameras, rerank, candidates,
                               nprobe)
            found = snapshot.images(hits.ids[hits.ids >= 0].tolist())
        rankings = []
        for q, path in enumerate(paths):
            results = []
            for rank, (score, image) in enumerate(zip(hits.scores[q].tolist(), hits.ids[q].tolist()), 1):
                if image < 0:
                    break
                record = found[image]
                identity = identity_label(record['identity'])
                known = identity is not None and q_identity[q] is not None
                item = dict(rank=rank, path=record['path'], score=score, pid=identity, camid=record['camera'],
                            correct=identity == q_identity[q] if known else None, added=record['added'], id=image)
                if hits.distances is not None:
                    item['rerank_distance'] = float(hits.distances[q, rank - 1])
                results.append(item)
            rankings.append(dict(query=path, pid=-1 if q_identity[q] is None else q_identity[q],
                                 camid=-1 if q_camera[q] is None else q_camera[q], ap=None, results=results))
        unknown = sum(c is None for c in q_camera)
        protocol = 'the query image itself is excluded when it is in the index (same file)'
        if exclude_camera:
            protocol += '; results from the query\'s own camera are excluded (camera protocol)'
            if unknown:
                protocol += f' ({unknown} of {len(paths)} queries have no camera: only themselves are excluded)'
        else:
            protocol += '; results from the query\'s own camera are kept'
        if rerank:
            protocol += f'; re-ranked (k-reciprocal) among the {candidates} nearest items of each query'
        return dict(protocol=protocol, backend=backend, rankings=rankings)

    def export(self) -> Iterator[Tuple[torch.Tensor, torch.Tensor, List[Dict[str, Any]]]]:
        """Every image, one shard at a time, as ``(ids, embeddings (float32, unit rows), metadata records)``
        of one consistent generation: what a vector database needs to take the gallery over."""
        with open_snapshot(self.folder, self.manifest) as snapshot:
            for shard in snapshot.shards:
                tensors = shard.read(snapshot.dim, snapshot.dtype)
                records = snapshot.images(tensors['ids'].tolist())
                yield tensors['ids'].clone(), tensors['embeddings'].float().clone(), [
                    records[i] for i in tensors['ids'].tolist()]

    def info(self, verify: bool = False) -> Dict[str, Any]:
        """What the index holds: model, preprocessing, storage, counts (images, identities, cameras, shards),
        the first identities (how they are spelled), size on disk; ``verify`` reads every shard (a damaged one
        raises)."""
        with open_snapshot(self.folder, self.manifest) as snapshot:
            db = snapshot.db
            count = db.execute('SELECT count(*) FROM images').fetchone()[0]
            unlabelled = db.execute('SELECT count(*) FROM images WHERE identity IS NULL').fetchone()[0]
            identities = sorted({identity_label(i) for i in _identities(db)},
                                key=lambda i: (not i.isdigit(), int(i) if i.isdigit() else 0, i))
            cameras = dict(db.execute("SELECT coalesce(camera, '(unknown)'), count(*) FROM images GROUP BY camera"))
            if verify:
                for shard in snapshot.shards:
                    shard.read(snapshot.dim, snapshot.dtype)
            files = [s.path for s in snapshot.shards] + [self.folder / f'meta-{snapshot.generation:06d}.sqlite']
            if snapshot.state('faiss_file'):
                files.append(self.folder / snapshot.state('faiss_file'))
            size = sum(f.stat().st_size for f in files)
            info = dict(
                index=str(self.folder), generation=snapshot.generation, images=count,
                identities=len(identities), identity_examples=identities[:INFO_IDENTITIES],
                images_without_identity=unlabelled, cameras=cameras,
                shards=len(snapshot.shards), rows_per_shard=self.manifest['storage']['rows_per_shard'],
                dtype=self.manifest['storage']['dtype'], bytes=size,
                model={k: v for k, v in self.manifest['model'].items() if k != 'probe'},
                preprocessing=self.manifest['preprocessing'], created=self.manifest['created'],
                faiss=None if not self.manifest.get('faiss') else _faiss_info(self.folder, snapshot),
                verified=verify)
        return info


def _faiss_info(folder: Path, snapshot: Snapshot) -> Dict[str, Any]:
    name = snapshot.state('faiss_file')
    index = ann.load(folder / name, mapped=True) if name else None
    ivf = index is not None and ann.is_ivf(index)
    return dict(file=name, kind='inverted file' if ivf else 'flat (exact)', lists=index.nlist if ivf else None,
                nprobe=int(snapshot.state('faiss_nprobe', '0')) or None,
                recall_at_10=float(snapshot.state('faiss_recall', 'nan')) if ivf else 1.0,
                trained_on=int(snapshot.state('faiss_trained', '0')) or None)


def _source(model: Union[PathLike, nn.Module]) -> str:
    return type(model).__name__ if isinstance(model, nn.Module) else os.fspath(model)


def _identities(db) -> List[str]:
    """Every identity label as stored (older versions stored some unnormalised)."""
    return [row[0] for row in db.execute('SELECT DISTINCT identity FROM images WHERE identity IS NOT NULL')]


def _matching(db, paths: Sequence[str], identities: Sequence[str]) -> List[int]:
    """Ids of the images at ``paths`` or of ``identities`` (matched as :func:`identity_label` spells both)."""
    wanted = {identity_label(i) for i in identities}
    spellings = [i for i in _identities(db) if identity_label(i) in wanted] if wanted else []
    ids = set()
    for column, values in (('path', list(paths)), ('identity', spellings)):
        for start in range(0, len(values), 500):
            part = values[start:start + 500]
            ids.update(r[0] for r in db.execute(
                f'SELECT id FROM images WHERE {column} IN ({",".join("?" * len(part))})', part))
    return sorted(ids)


def _camera_codes(snapshot: Snapshot, ids: torch.Tensor) -> torch.Tensor:
    """Camera code of each image id (-1: unknown or no image)."""
    records = snapshot.images(ids[ids >= 0].tolist())
    codes = snapshot.camera_codes()
    flat = [codes.get(records[i]['camera'], -1) if i in records else -1 for i in ids.flatten().tolist()]
    return torch.tensor(flat, dtype=torch.int64).reshape(ids.shape)


def fetch_embeddings(snapshot: Snapshot, ids: torch.Tensor) -> torch.Tensor:
    """Stored embeddings (float32) of image ids (any shape; zeros for -1), reading only their shards."""
    out = torch.zeros(*ids.shape, snapshot.dim)
    records = snapshot.images(ids[ids >= 0].tolist())
    by_shard: Dict[int, List[Tuple[int, int]]] = {}
    for flat, image in enumerate(ids.flatten().tolist()):
        if image >= 0:
            by_shard.setdefault(records[image]['shard'], []).append((flat, records[image]['position']))
    flat_out = out.view(-1, snapshot.dim)
    for shard in snapshot.shards:
        if shard.id in by_shard:
            rows = shard.read(snapshot.dim, snapshot.dtype)['embeddings']
            targets, positions = zip(*by_shard[shard.id])
            flat_out[list(targets)] = rows[list(positions)].float()
    return out
