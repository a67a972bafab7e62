"""Gallery index at scale: build and add throughput, query latency (p50/p99, top-10) and peak memory of the
exact search at 100k and 1M synthetic 512-d embeddings, and faiss beside it (latency, recall@10 vs exact).

Embeddings are synthetic and shaped like a ReID gallery: identities of 10 images, each image its identity's
random unit centre plus Gaussian noise (cosine ≈ 0.6 within an identity, ≈ 0 across), L2-normalised; queries
are new images of random gallery identities. An inverted file (faiss IVF) relies on such cluster structure;
uniformly random vectors, which have none, are its worst case: their recall is reported at the smaller size.

Each measurement runs in a fresh subprocess, and its peak resident memory (``VmHWM``: Python, torch, the
metadata, the mapped shard being scored) is reported. The OS page cache that holds the shard files is not
process memory (a 1M float32 gallery needs 2 GB of it to answer from memory; a cold cache reads from disk).
Latency: one query at a time (batch 1, top-10), each opening the index's current generation as a service
answering one request at a time would, after one warm-up query; faiss keeps its index loaded between
queries (its load time is reported apart). Build: ``ImageIndex.create`` + ``add_embeddings`` in batches of
100k, each a committed generation; add: one generation of 10k new images into the built index.

The machine's cores may be shared with other jobs: the load average at the start and end of the run is
reported with the table, and timings under load are upper bounds.

    python -m benchmarks.index_speed [--quick] [--sizes 100000 1000000] [--queries 100] [--skip-faiss]

``--quick`` (20k, 10 queries) and any changed setting write a scratch report; the full run rewrites its
section of BENCHMARKS.md.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.report import ROOT, add_report_argument, markdown_table, report_path, write_section

IMAGES_PER_ID = 10
NOISE = 0.8
BATCH = 100_000
ADD = 10_000
TOP_K = 10
MODEL = dict(source='synthetic', architecture='none', probe=[])
PREPROCESSING = dict(input_size=[3, 256, 128], interpolation='bilinear', mean=[0.485, 0.456, 0.406],
                     std=[0.229, 0.224, 0.225], crop_pct=1.0, crop_mode='squash', flip=False)


def gallery_batch(index: int, size: int, dim: int, kind: str) -> torch.Tensor:
    """Images ``index * size`` ... of the synthetic gallery (deterministic per batch)."""
    noise = torch.Generator().manual_seed(1_000_000 + index)
    if kind == 'uniform':
        return F.normalize(torch.randn(size, dim, generator=noise), dim=1)
    centres = F.normalize(torch.randn(size // IMAGES_PER_ID, dim, generator=torch.Generator().manual_seed(index)), dim=1)
    images = centres.repeat_interleave(IMAGES_PER_ID, 0) + NOISE * torch.randn(size, dim, generator=noise) / dim ** 0.5
    return F.normalize(images, dim=1)


def queries(count: int, gallery: int, batch: int, dim: int, kind: str) -> torch.Tensor:
    """New images of random gallery identities (uniform: random vectors)."""
    generator = torch.Generator().manual_seed(7)
    if kind == 'uniform':
        return F.normalize(torch.randn(count, dim, generator=generator), dim=1)
    identities = torch.randint(0, gallery // IMAGES_PER_ID, (count,), generator=generator)
    per_batch, blocks = batch // IMAGES_PER_ID, {}
    for b in set((identities // per_batch).tolist()):  # the centres of gallery_batch(b)
        blocks[b] = F.normalize(torch.randn(per_batch, dim, generator=torch.Generator().manual_seed(b)), dim=1)
    centres = torch.stack([blocks[int(i) // per_batch][int(i) % per_batch] for i in identities])
    return F.normalize(centres + NOISE * torch.randn(count, dim, generator=generator) / dim ** 0.5, dim=1)


def peak_mb() -> float:
    for line in open('/proc/self/status'):
        if line.startswith('VmHWM:'):
            return int(line.split()[1]) / 1024
    return float('nan')


def _paths(start: int, count: int) -> List[str]:
    return [f'/synthetic/{i:08d}.jpg' for i in range(start, start + count)]


def child_build(folder: str, size: int, batch: int, dim: int, dtype: str, faiss: bool, kind: str) -> Dict[str, Any]:
    from ptl_timm.index import ImageIndex
    start = time.perf_counter()
    index = ImageIndex.create(folder, dict(model=dict(MODEL, embedding_dim=dim), preprocessing=PREPROCESSING),
                              dtype=dtype, faiss=faiss)
    for b in range(size // batch):
        first = b * batch
        index.add_embeddings(gallery_batch(b, batch, dim, kind), _paths(first, batch),
                             [str(i // IMAGES_PER_ID) for i in range(first, first + batch)],
                             [f'c{i % 6 + 1}' for i in range(first, first + batch)])
    seconds = time.perf_counter() - start
    return dict(seconds=seconds, per_s=size / seconds, peak_mb=peak_mb(), bytes=index.info()['bytes'])


def child_add(folder: str, size: int, dim: int, kind: str) -> Dict[str, Any]:
    from ptl_timm.index import ImageIndex
    index = ImageIndex(folder)
    new = gallery_batch(10_000, ADD, dim, kind)  # identities no gallery batch uses
    start = time.perf_counter()
    index.add_embeddings(new, _paths(size, ADD))
    seconds = time.perf_counter() - start
    return dict(seconds=seconds, per_s=ADD / seconds, peak_mb=peak_mb())


def child_query(folder: str, size: int, batch: int, dim: int, count: int, backend: str, kind: str,
                nprobe: int = 0) -> Dict[str, Any]:
    from ptl_timm.index import ImageIndex
    from ptl_timm.index.store import open_snapshot
    index = ImageIndex(folder)
    probes = queries(count + 1, size, batch, dim, kind)
    load = 0.0
    times, ids = [], []
    for q in range(count + 1):
        start = time.perf_counter()
        with open_snapshot(index.folder, index.manifest) as snapshot:
            hits = index.search(snapshot, probes[q:q + 1], TOP_K, backend=backend, nprobe=nprobe or None)
        elapsed = time.perf_counter() - start
        if q == 0:
            load = elapsed  # warm-up (and, for faiss, reading its index)
            continue
        times.append(elapsed)
        ids.append(hits.ids[0].tolist())
    times = np.array(times) * 1000
    faiss = index.info()['faiss'] if backend == 'faiss' else None
    kind = 'exact' if faiss is None else (
        f'{faiss["kind"]}, nprobe {faiss["nprobe"]} of {faiss["lists"]} lists' if faiss['lists'] else faiss['kind'])
    return dict(p50_ms=float(np.percentile(times, 50)), p99_ms=float(np.percentile(times, 99)), first_s=load,
                peak_mb=peak_mb(), ids=ids, kind=kind)


CHILDREN = dict(build=child_build, add=child_add, query=child_query)


def run_child(task: str, **kwargs: Any) -> Dict[str, Any]:
    """``task`` in a fresh interpreter (its own peak memory), on the same threads."""
    command = [sys.executable, '-m', 'benchmarks.index_speed', '--child', json.dumps(dict(task=task, **kwargs))]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f'{task} failed:\n{done.stderr[-3000:]}')
    return json.loads(done.stdout.strip().splitlines()[-1])


def recall(found: List[List[int]], exact: List[List[int]]) -> float:
    return float(np.mean([len(set(f) & set(e)) / len(e) for f, e in zip(found, exact)]))


def load_average() -> str:
    return ' '.join(Path('/proc/loadavg').read_text().split()[:3]) if Path('/proc/loadavg').exists() else '?'


def measure(size: int, args: argparse.Namespace, work: Path) -> List[List[str]]:
    batch = min(BATCH, size)
    rows = []
    common = dict(size=size, batch=batch, dim=args.dim)

    def row(label: str, built: Dict, added: Dict, query: Dict, recall_text: str) -> None:
        rows.append([f'{size:,}', label, f'{built["per_s"]:,.0f}' if built else '–',
                     f'{added["per_s"]:,.0f}' if added else '–', f'{query["p50_ms"]:.1f}', f'{query["p99_ms"]:.1f}',
                     f'{max(q["peak_mb"] for q in (built, added, query) if q):,.0f} / {query["peak_mb"]:,.0f}',
                     f'{built["bytes"] / 2 ** 30:.2f}' if built else '–', recall_text])

    exact_dir = work / f'exact-{size}'
    built = run_child('build', folder=str(exact_dir), dtype='float32', faiss=False, kind='reid', **common)
    added = run_child('add', folder=str(exact_dir), size=size, dim=args.dim, kind='reid')
    exact = run_child('query', folder=str(exact_dir), count=args.queries, backend='exact', kind='reid', **common)
    row('exact (float32)', built, added, exact, '1 (exact)')
    shutil.rmtree(exact_dir)
    if size == min(args.sizes):
        half_dir = work / f'half-{size}'
        built_half = run_child('build', folder=str(half_dir), dtype='float16', faiss=False, kind='reid', **common)
        half = run_child('query', folder=str(half_dir), count=args.queries, backend='exact', kind='reid', **common)
        row('exact (float16 storage)', built_half, None, half, f'{recall(half["ids"], exact["ids"]):.3f} vs float32')
        shutil.rmtree(half_dir)
    if args.skip_faiss:
        return rows
    kinds = ('reid', 'uniform') if size == min(args.sizes) else ('reid',)
    for kind in kinds:
        faiss_dir = work / f'faiss-{kind}-{size}'
        built_faiss = run_child('build', folder=str(faiss_dir), dtype='float32', faiss=True, kind=kind, **common)
        reference = exact if kind == 'reid' else run_child(
            'query', folder=str(faiss_dir), count=args.queries, backend='exact', kind=kind, **common)
        approximate = run_child('query', folder=str(faiss_dir), count=args.queries, backend='faiss', kind=kind, **common)
        label = f'faiss ({approximate["kind"]})' + (', uniform vectors' if kind == 'uniform' else '')
        row(label, built_faiss, None, approximate,
            f'{recall(approximate["ids"], reference["ids"]):.3f} (first query {approximate["first_s"]:.1f} s: loads it)')
        shutil.rmtree(faiss_dir)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--sizes', type=int, nargs='+', default=[100_000, 1_000_000], help='gallery sizes')
    parser.add_argument('--queries', type=int, default=100, help='timed queries per measurement')
    parser.add_argument('--dim', type=int, default=512, help='embedding width')
    parser.add_argument('--skip-faiss', action='store_true', help='exact search only')
    parser.add_argument('--quick', action='store_true', help='20k gallery, 10 queries: a check that it runs')
    parser.add_argument('--work', help='scratch folder for the indexes (default: a temporary folder)')
    parser.add_argument('--child', help=argparse.SUPPRESS)
    add_report_argument(parser)
    args = parser.parse_args()
    if args.child:
        spec = json.loads(args.child)
        print(json.dumps(CHILDREN[spec.pop('task')](**spec)))
        return
    report = report_path(parser, args)  # before --quick shrinks the sizes: only the full run writes BENCHMARKS.md
    if args.quick:
        args.sizes, args.queries = [20_000], 10
    work = Path(args.work or tempfile.mkdtemp(prefix='ptl_timm-index-'))
    load_before, rows = load_average(), []
    try:
        for size in sorted(args.sizes):
            rows += measure(size, args, work)
            print(markdown_table(HEADER, rows), flush=True)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    body = (markdown_table(HEADER, rows) + '\n' + NOTES.format(
        threads=torch.get_num_threads(), cores=len(os.sched_getaffinity(0)), before=load_before, after=load_average(),
        queries=args.queries))
    write_section('index_speed', 'Gallery index: build, add, query and memory at scale', body, path=report)
    print(f'wrote {report}')


HEADER = ['gallery', 'search', 'build (images/s)', 'add 10k (images/s)', 'query p50 (ms)', 'query p99 (ms)',
          'peak RSS MB (all / query)', 'on disk (GB)', 'recall@10']
NOTES = """Synthetic 512-d embeddings shaped like a ReID gallery (identities of 10 images, noise around a centre;
uniform random vectors where stated), {queries} queries one at a time (top-10), {threads} torch threads on
{cores} cores; load average {before} at the start, {after} at the end (other jobs share the cores: timings under
load are upper bounds). Peak RSS: the largest of the build, add and query processes / the query process alone,
each a fresh interpreter (the OS page cache holding the shards is not counted). Recall@10: share of the exact
top-10 found. Targets: 1M exact ≤ 1 s per query on 2 cores and ≤ 2 GB peak; faiss recall@10 ≥ 0.95.
"""

if __name__ == '__main__':
    main()
