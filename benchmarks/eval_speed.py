"""Evaluation speed and memory: the chunked exact evaluator against torchreid's full-matrix algorithm.

Market-1501 scale (3,368 queries × 15,913 gallery): the same random features are evaluated by
``ptl_timm.eval.evaluate_rank`` and by a full-matrix reference (the whole distance matrix, one
argsort of it, torchreid's per-query loop), and the two results are checked to agree. Two ratios:
end to end (features → metrics; both spend the same time in the distance matmul) and the ranking
stage alone (a precomputed distance matrix → metrics; ``evaluate_distmat`` vs the reference).
Target: ranking ≥ 5× faster in one run.

MSMT17 scale (11,659 × 82,161): ``evaluate_rank`` in a fresh subprocess, whose peak resident memory
(``VmHWM`` of ``/proc/self/status``: the whole process, Python, torch, the features and the
evaluation) is reported, with the features' own size. (``getrusage().ru_maxrss`` would not do: Linux
carries the parent's peak over into a forked and exec'd child.) Target: ≤ 2 GB. The full-matrix
reference is not run there (its distance matrix alone is 3.8 GB, its argsort 7.7 GB).

k-reciprocal re-ranking (k1=20, k2=6, λ=0.3), streamed into the evaluator, the same way: at MSMT17
scale (target ≤ 4 GB peak; the classic code would hold ~100 GB of N × N matrices there), and at
Market scale against the classic numpy implementation (Zhong et al.'s ``re_ranking`` as torchreid and
BoT ship it: dense N × N distances, V and argsort, ~10 GB), each in its own subprocess on the same
features; the table gives the difference of their mAPs. When the machine has not the memory free for the classic
code, both run on a smaller split (the row says which).

Features are random float32 Gaussians of width ``--dim`` (default 2048, ResNet-50's pooled width),
cosine distance (re-ranking: L2-normalised features); identities and cameras are random (751 ids,
6 cameras for Market; 3,060 ids, 15 cameras for MSMT17). ``--scale`` shrinks every split (a quick check
that writes a scratch report, never BENCHMARKS.md).

    python -m benchmarks.eval_speed [--dim 2048] [--scale 1.0] [--skip-msmt17] [--skip-rerank]
"""
import argparse
import json
import resource
import subprocess
import sys
import time
from typing import Dict, Optional, Tuple

import numpy as np
import torch

from benchmarks.report import add_report_argument, markdown_table, report_path, write_section
from ptl_timm.eval.metrics import evaluate_distance_chunks, evaluate_distmat, evaluate_rank
from ptl_timm.eval.rerank import iter_re_ranking
from tests.rerank_reference import classic_re_ranking

MARKET = dict(num_query=3368, num_gallery=15913, num_ids=751, num_cams=6)
MSMT17 = dict(num_query=11659, num_gallery=82161, num_ids=3060, num_cams=15)


def synthetic_split(num_query: int, num_gallery: int, num_ids: int, num_cams: int, dim: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    q_feats = rng.standard_normal((num_query, dim), dtype=np.float32)
    g_feats = rng.standard_normal((num_gallery, dim), dtype=np.float32)
    labels = (rng.integers(0, num_ids, num_query), rng.integers(0, num_ids, num_gallery),
              rng.integers(0, num_cams, num_query), rng.integers(0, num_cams, num_gallery))
    return q_feats, g_feats, labels


def cosine_distmat(q_feats: np.ndarray, g_feats: np.ndarray) -> np.ndarray:
    """torchreid's ``cosine_distance``: the full query × gallery matrix at once."""
    q = torch.nn.functional.normalize(torch.from_numpy(q_feats), dim=1)
    g = torch.nn.functional.normalize(torch.from_numpy(g_feats), dim=1)
    return (1 - q @ g.T).numpy()


def reference_eval(distmat, q_pids, g_pids, q_camids, g_camids, max_rank: int = 50) -> Dict[str, float]:
    """torchreid ``eval_market1501`` (Python path) with fast-reid's mINP: full argsort, per-query loop."""
    num_q, num_g = distmat.shape
    indices = np.argsort(distmat, axis=1)
    matches = (g_pids[indices] == q_pids[:, np.newaxis]).astype(np.int32)
    all_cmc, all_ap, all_inp = [], [], []
    for q_idx in range(num_q):
        order = indices[q_idx]
        keep = ~((g_pids[order] == q_pids[q_idx]) & (g_camids[order] == q_camids[q_idx]))
        raw_cmc = matches[q_idx][keep]
        if not np.any(raw_cmc):
            continue
        cmc = raw_cmc.cumsum()
        hardest = np.where(raw_cmc == 1)[0].max()
        all_inp.append(cmc[hardest] / (hardest + 1.0))
        cmc[cmc > 1] = 1
        all_cmc.append(cmc[:max_rank])
        precision = raw_cmc.cumsum() / np.arange(1, len(raw_cmc) + 1)
        all_ap.append((precision * raw_cmc).sum() / raw_cmc.sum())
    return dict(mAP=float(np.mean(all_ap)), cmc=np.mean(all_cmc, axis=0), mINP=float(np.mean(all_inp)))


def timed(fn, *args, **kwargs) -> Tuple[float, object]:
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - start, result


def max_difference(a: Dict, b: Dict) -> float:
    return max(abs(a['mAP'] - b['mAP']), abs(a['mINP'] - b['mINP']), float(np.abs(a['cmc'] - b['cmc']).max()))


def scaled(split: Dict[str, int], scale: float) -> Dict[str, int]:
    """``split`` with ``scale`` × its queries and gallery images (identities and cameras kept)."""
    return dict(split, num_query=max(1, round(split['num_query'] * scale)),
                num_gallery=max(21, round(split['num_gallery'] * scale)))


def market_rows(dim: int, scale: float):
    q_feats, g_feats, labels = synthetic_split(**scaled(MARKET, scale), dim=dim)
    t_chunked, chunked = timed(evaluate_rank, q_feats, g_feats, *labels, metric='cosine', device='cpu')
    t_distmat, distmat = timed(cosine_distmat, q_feats, g_feats)
    t_ranking_ref, reference = timed(reference_eval, distmat, *labels)
    t_ranking, ranked = timed(evaluate_distmat, distmat, *labels, device='cpu')
    diff = max(max_difference(chunked, reference), max_difference(ranked, reference))
    t_reference = t_distmat + t_ranking_ref
    return [
        ['end to end (features → metrics)', f'{t_reference:.2f}', f'{t_chunked:.2f}', f'{t_reference / t_chunked:.1f}×'],
        ['ranking (distance matrix → metrics)', f'{t_ranking_ref:.2f}', f'{t_ranking:.2f}',
         f'{t_ranking_ref / t_ranking:.1f}×'],
    ], diff, reference


def _proc_mb(path: str, field: str) -> Optional[float]:
    """A ``kB`` field of a Linux ``/proc`` status file, in MB; None where there is none."""
    try:
        for line in open(path):
            if line.startswith(field + ':'):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def peak_rss_mb() -> float:
    """Peak resident set size of this process image, in MB (Linux ``VmHWM``; ``ru_maxrss`` elsewhere)."""
    peak = _proc_mb('/proc/self/status', 'VmHWM')
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# classic re-ranking: about seven float32 N × N arrays alive at its peak (distances, V, V_qe, argsort)
CLASSIC_BYTES_PER_PAIR = 28
WORKLOADS = {'msmt17': MSMT17, 'rerank-msmt17': MSMT17, 'rerank-market': MARKET, 'classic-market': MARKET}


def normalize_(x: np.ndarray) -> torch.Tensor:
    """L2-normalise the rows in place (no full-size temporary), as a tensor sharing ``x``'s memory."""
    t = torch.from_numpy(x)
    return t.div_(t.norm(dim=1, keepdim=True).clamp_min_(1e-12))


def euclidean(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    return torch.cdist(a, b).numpy()


def child(workload: str, dim: int, scale: float) -> None:
    """Runs in its own process: prints JSON with the wall time and peak RSS of one large workload."""
    q_feats, g_feats, labels = synthetic_split(**scaled(WORKLOADS[workload], scale), dim=dim)
    features_mb = (q_feats.nbytes + g_feats.nbytes) / 2 ** 20
    if workload == 'msmt17':
        rss_features = peak_rss_mb()
        seconds, result = timed(evaluate_rank, q_feats, g_feats, *labels, metric='cosine', device='cpu')
    elif workload == 'classic-market':
        q, g = normalize_(q_feats), normalize_(g_feats)
        rss_features = peak_rss_mb()
        seconds, result = timed(lambda: evaluate_distmat(classic_re_ranking(
            euclidean(q, g), euclidean(q, q), euclidean(g, g)), *labels, device='cpu'))
    else:
        q, g = normalize_(q_feats), normalize_(g_feats)
        rss_features = peak_rss_mb()
        seconds, result = timed(lambda: evaluate_distance_chunks(iter_re_ranking(q, g, device='cpu'), *labels))
    print(json.dumps(dict(seconds=seconds, peak_rss_mb=peak_rss_mb(), rss_after_features_mb=rss_features,
                          features_mb=features_mb, mAP=result['mAP'], num_valid_queries=result['num_valid_queries'])))


def run_child(workload: str, dim: int, scale: float) -> Dict[str, float]:
    out = subprocess.run([sys.executable, '-m', 'benchmarks.eval_speed', '--child', workload, '--dim', str(dim),
                          '--scale', str(scale)], capture_output=True, text=True, check=True).stdout
    result = json.loads(out.strip().splitlines()[-1])
    print(workload, result)
    return result


def child_row(title: str, result: Dict[str, float], target: str) -> list:
    return [title, f'{result["features_mb"]:.0f}', f'{result["seconds"]:.1f}', f'{result["peak_rss_mb"]:.0f}',
            f'{result["rss_after_features_mb"]:.0f}', target]


def available_mb() -> float:
    """Memory the kernel can give without swapping (``MemAvailable``), in MB; infinite where unknown."""
    available = _proc_mb('/proc/meminfo', 'MemAvailable')
    return available if available is not None else float('inf')


def classic_scale(scale: float) -> float:
    """The largest fraction of ``scale`` × Market at which the classic code fits in 80% of free memory."""
    n = (MARKET['num_query'] + MARKET['num_gallery']) * scale
    needed_mb = CLASSIC_BYTES_PER_PAIR * n * n / 2 ** 20
    return scale * min(1.0, (0.8 * available_mb() / needed_mb) ** 0.5)


def size(split: Dict[str, int]) -> str:
    return f'{split["num_query"]:,} × {split["num_gallery"]:,}'


def scale_name(name: str, scale: float) -> str:
    return f'{name} scale' if scale == 1 else f'{scale:g} × {name}'


def rerank_rows(dim: int, scale: float) -> list:
    msmt17, market = scaled(MSMT17, scale), scaled(MARKET, scale)
    rows = [child_row(f'evaluate + re-ranking, {scale_name("MSMT17", scale)} ({size(msmt17)})',
                      run_child('rerank-msmt17', dim, scale), '≤ 4096 MB peak (classic code: ~100 GB)')]
    streamed = run_child('rerank-market', dim, scale)
    rows.append(child_row(f'evaluate + re-ranking, {scale_name("Market", scale)} ({size(market)})', streamed,
                          'bounded'))
    fraction = classic_scale(scale)
    if fraction < scale:
        print(f'classic re-ranking: only {available_mb():.0f} MB free, comparing at {fraction / scale:.2f} × the split')
        streamed, market = run_child('rerank-market', dim, fraction), scaled(MARKET, fraction)
        rows.append(child_row(f'evaluate + re-ranking ({size(market)}, the classic code\'s size)', streamed,
                              'bounded'))
    classic = run_child('classic-market', dim, fraction)
    rows.append(child_row(
        f'evaluate + classic re-ranking, dense N × N ({size(market)}); mAP differs from the streamed one by '
        f'{abs(classic["mAP"] - streamed["mAP"]):.1e}; {classic["seconds"] / streamed["seconds"]:.1f}× the time, '
        f'{classic["peak_rss_mb"] / streamed["peak_rss_mb"]:.1f}× the memory', classic, 'reference'))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--dim', type=int, default=2048, help='feature width')
    parser.add_argument('--scale', type=float, default=1.0,
                        help='fraction of every split\'s queries and gallery (a quick check below 1)')
    parser.add_argument('--skip-msmt17', action='store_true', help='no MSMT17-scale evaluation')
    parser.add_argument('--skip-rerank', action='store_true', help='no re-ranking rows')
    parser.add_argument('--child', choices=sorted(WORKLOADS), help=argparse.SUPPRESS)
    add_report_argument(parser)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.dim, args.scale)
        return
    rows, diff, reference = market_rows(args.dim, args.scale)
    market = scaled(MARKET, args.scale)
    body = (f'{scale_name("Market-1501", args.scale)}: {size(market)}, random {args.dim}-d float32 '
            f'features, cosine, CPU. Reference: full distance matrix + one argsort + torchreid\'s per-query loop. '
            f'Largest |Δ| between the evaluator and the reference over mAP, mINP and CMC@1..50: {diff:.2e} '
            f'(reference mAP {reference["mAP"]:.4f}). Both spend the same time in the distance matmul, which bounds '
            f'the end-to-end ratio on CPU; the ranking row is the part the two algorithms do differently.\n\n'
            + markdown_table(['stage', 'full-matrix reference (s)', 'ptl_timm chunked (s)', 'speed-up'], rows))
    large = []
    if not args.skip_msmt17:
        msmt17 = scaled(MSMT17, args.scale)
        large.append(child_row(f'evaluate_rank, {scale_name("MSMT17", args.scale)} ({size(msmt17)})',
                               run_child('msmt17', args.dim, args.scale), '≤ 2048 MB peak'))
    if not args.skip_rerank:
        large += rerank_rows(args.dim, args.scale)
    if large:
        body += (f'\nLarge workloads, each in a fresh subprocess on CPU with random {args.dim}-d features; re-ranking: '
                 f'k1=20, k2=6, λ=0.3 on L2-normalised features. Peak memory is the subprocess\'s peak resident set '
                 f'size (`VmHWM` in /proc/self/status: Python + torch + features + evaluation); the column before it '
                 f'is the same peak just before evaluating.\n\n'
                 + markdown_table(['workload', 'features (MB)', 'time (s)', 'peak RSS (MB)',
                                   'peak RSS before evaluating (MB)', 'target'], large))
    print(body)
    write_section('eval_speed', 'Evaluation: chunked exact metrics vs the full-matrix reference', body,
                  path=report_path(parser, args))


if __name__ == '__main__':
    main()
