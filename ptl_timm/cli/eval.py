"""mAP / CMC / mINP of a model on a dataset, or of saved features.

mAP, CMC and mINP of a model on a dataset's query/gallery split (at the image size its config.json records),
or of saved features (ptl-timm extract), optionally after average query expansion (--aqe) and/or with
k-reciprocal re-ranking (--rerank); --roc adds TPR at low FPR and --camera-pairs the per-camera-pair mAP
table. Data without camera ids (a folder dataset without camera folders) is evaluated excluding only the
query image itself; the protocol used is printed with the result.

Example: ptl-timm eval --model runs/x/best --dataset market1501 --data-root data/market1501
"""
import argparse
import math
from typing import Any, Dict, List

from ptl_timm.data.datasets import camera_name
from ptl_timm.errors import InputError
from ptl_timm.eval.aqe import AQE_ALPHA, AQE_K, AQE_TIMES, query_expansion
from ptl_timm.eval.analysis import camera_pair_map
from ptl_timm.eval.extract import evaluate_features
from ptl_timm.eval.features import load_features
from ptl_timm.eval.metrics import AP_MODES, METRICS
from ptl_timm.eval.protocol import PROTOCOLS, resolve_protocol
from ptl_timm.eval.rerank import RERANK_K1, RERANK_K2, RERANK_LAMBDA
from ptl_timm.utils import atomic_save_json, resolve_device
from .options import (
    add_command, add_dataset_args, add_model_args, add_quiet, dataset_from_args, extractor_from_args, integer, number,
    output_file)


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = add_command(subparsers, __name__, __doc__)
    add_model_args(parser, required=False)
    add_dataset_args(parser)
    parser.add_argument('--features', help='saved features with query and gallery sets (instead of model + dataset)')
    parser.add_argument('--metric', choices=METRICS, default='cosine', help='distance between embeddings')
    parser.add_argument('--ap-mode', choices=AP_MODES, default='default',
                        help='default: torchreid/fast-reid AP; official: Market-1501 trapezoid AP')
    parser.add_argument('--rerank', action='store_true', help='k-reciprocal re-ranking (Zhong et al. 2017)')
    parser.add_argument('--k1', type=integer(1), default=RERANK_K1, help='re-ranking: size of the k-reciprocal neighbourhoods')
    parser.add_argument('--k2', type=integer(1), default=RERANK_K2,
                        help='re-ranking: neighbours averaged by its local query expansion')
    parser.add_argument('--lambda', dest='lambda_value', type=number(0, 1), default=RERANK_LAMBDA,
                        help='re-ranking: weight of the original distance against the Jaccard distance')
    parser.add_argument('--aqe', action='store_true',
                        help='average query expansion (fast-reid\'s αQE) of query and gallery features before ranking')
    parser.add_argument('--aqe-k', type=integer(1), default=AQE_K, help='αQE: neighbours averaged per feature, itself included')
    parser.add_argument('--aqe-alpha', type=number(0), default=AQE_ALPHA, help='αQE: exponent of the similarity weights')
    parser.add_argument('--aqe-times', type=integer(1), default=AQE_TIMES, help='αQE: rounds of expansion')
    parser.add_argument('--roc', action='store_true',
                        help='also TPR at FPR 1e-4, 1e-3, 1e-2 over every query-gallery pair (fast-reid\'s ROC report)')
    parser.add_argument('--camera-pairs', action='store_true',
                        help='also the mAP of each query camera against each gallery camera alone '
                             '(plain distances, after αQE)')
    parser.add_argument('--protocol', choices=PROTOCOLS, default='auto',
                        help='matches excluded: camera (same identity and camera), self (only the query image '
                             'itself, for data without cameras), auto (camera when every camera is known)')
    parser.add_argument('--single-gallery-shot', action='store_true',
                        help='classic CUHK03 CMC: one random gallery image per identity, averaged over draws')
    parser.add_argument('--seed', type=integer(), default=0, help='seed of the single-gallery-shot draws')
    parser.add_argument('--max-rank', type=integer(1), default=50, help='length of the CMC curve')
    parser.add_argument('--json', metavar='FILE', type=output_file, help='also write the metrics (percent) as JSON')
    add_quiet(parser)
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    dataset = dataset_from_args(args)
    if (dataset is None) == (args.features is None) or (dataset is not None and not args.model):
        raise InputError('give either --model with --dataset/--data-root, or --features')
    if args.features:
        sets = load_features(args.features)
        if not {'query', 'gallery'} <= set(sets):
            raise InputError(f'{args.features} holds the sets {sorted(sets)}; evaluation needs query and gallery '
                             f'(extract them from a dataset)')
    else:
        sets = extractor_from_args(args).extract_splits(dataset)
    query, gallery = sets['query'], sets['gallery']
    empty = [name for name in ('query', 'gallery') if not len(sets[name].feats)]
    if empty:
        raise InputError(f'{args.features or args.data_root}: the {" and the ".join(empty)} set{"s are" if len(empty) > 1 else " is"} '
                         f'empty (0 images), so there is nothing to evaluate; extract features of a dataset with '
                         f'query and gallery images')
    rule = resolve_protocol([query, gallery], args.protocol)
    if args.camera_pairs and rule.name != 'camera':
        raise InputError('--camera-pairs needs the camera of every image, and these images have none')
    q_keys, g_keys = rule.keys
    device = resolve_device(args.device)
    q_feats, g_feats = query.feats, gallery.feats
    if args.aqe:
        q_feats, g_feats = query_expansion(q_feats, g_feats, args.aqe_k, args.aqe_alpha, args.aqe_times, device=device)
    rerank_args = dict(k1=args.k1, k2=args.k2, lambda_value=args.lambda_value)
    result = evaluate_features(
        q_feats, g_feats, query.pids, gallery.pids, q_keys, g_keys, metric=args.metric,
        rerank=args.rerank, device=device, rerank_args=rerank_args, roc=args.roc, ap_mode=args.ap_mode,
        max_rank=args.max_rank, single_gallery_shot=args.single_gallery_shot, seed=args.seed, progress=not args.quiet)
    cmc = result['cmc']
    metrics = dict(mAP=100 * result['mAP'], **{f'rank{r}': 100 * float(cmc[min(r, len(cmc)) - 1]) for r in (1, 5, 10)},
                   mINP=100 * result['mINP'], num_query=len(query.feats), num_gallery=len(gallery.feats),
                   num_valid_queries=result['num_valid_queries'], protocol=rule.name, rerank=args.rerank,
                   ap_mode=args.ap_mode,
                   cmc=[100 * float(c) for c in cmc])
    if args.rerank:
        metrics['rerank_args'] = rerank_args
    if args.aqe:
        metrics['aqe_args'] = dict(k=args.aqe_k, alpha=args.aqe_alpha, times=args.aqe_times)
    metrics['post_processing'] = _post_processing(args)
    print(f'mAP {metrics["mAP"]:.2f}  Rank-1 {metrics["rank1"]:.2f}  Rank-5 {metrics["rank5"]:.2f}  '
          f'Rank-10 {metrics["rank10"]:.2f}  mINP {metrics["mINP"]:.2f}  '
          f'({metrics["num_valid_queries"]} queries × {metrics["num_gallery"]} gallery; '
          f'{", ".join(metrics["post_processing"]) or "no post-processing"})')
    print(rule.description)  # it names its protocol
    if args.roc:
        metrics['tpr_at_fpr'] = {f'{fpr:.0e}': 100 * tpr for fpr, tpr in result['tpr_at_fpr'].items()}
        print('  '.join(f'TPR@FPR={fpr} {tpr:.2f}' for fpr, tpr in metrics['tpr_at_fpr'].items()))
    if args.camera_pairs:
        table = camera_pair_map(q_feats, g_feats, query.pids, gallery.pids, query.camids, gallery.camids,
                                metric=args.metric, device=device)
        metrics['camera_pairs'] = _print_camera_table(table)
    if args.json:
        atomic_save_json(metrics, args.json)
    return 0


def _post_processing(args: argparse.Namespace) -> List[str]:
    """What stands between the model and the numbers, in the order it was applied, with its settings (the flip of
    saved features was decided when they were extracted)."""
    applied = []
    if args.random_weights and args.model:
        applied.append('RANDOM WEIGHTS (--random-weights: the scores mean nothing)')
    if args.flip and args.model:
        applied.append('flip test-time augmentation')
    if args.aqe:
        applied.append(f'average query expansion (k={args.aqe_k}, alpha={args.aqe_alpha}, {args.aqe_times}x)')
    if args.rerank:
        applied.append(f'k-reciprocal re-ranking (k1={args.k1}, k2={args.k2}, lambda={args.lambda_value})')
    if args.single_gallery_shot:
        applied.append('single-gallery-shot CMC')
    if args.ap_mode != 'default':
        applied.append('Market-1501 official (trapezoid) AP')
    return applied


def _print_camera_table(table: Dict[str, Any]) -> Dict[str, Any]:
    """Print the query camera × gallery camera mAP table ('-': no valid query), cameras named as in the file
    names (c1, c2, ...); return it for the JSON."""
    q_cams, g_cams = ([camera_name(c) for c in table[key]] for key in ('query_cameras', 'gallery_cameras'))
    print('mAP by camera pair (rows: query camera, columns: gallery camera, -: no query with a match there)')
    print('q\\g ' + ' '.join(f'{c:>6}' for c in g_cams))
    for cam, row in zip(q_cams, table['map']):
        print(f'{cam:>4} ' + ' '.join('     -' if math.isnan(v) else f'{100 * v:6.2f}' for v in row))
    print("a pair's mAP ranks the queries of camera a against the gallery images of camera b only: a smaller "
          'gallery, so pair values run higher than the overall mAP')
    return dict(query_cameras=q_cams, gallery_cameras=g_cams,
                mAP=[[None if math.isnan(v) else 100 * float(v) for v in row] for row in table['map']],
                num_valid_queries=table['num_valid_queries'].tolist())
