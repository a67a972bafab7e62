"""``ptl-timm eval``: mAP, CMC and mINP of a model on a dataset's query/gallery split, or of saved
features (``ptl-timm extract``), optionally with k-reciprocal re-ranking."""
import argparse

from ptl_timm.eval.extract import evaluate_features
from ptl_timm.eval.features import load_features
from ptl_timm.eval.metrics import AP_MODES, METRICS
from ptl_timm.utils import atomic_save_json
from .extract import add_dataset_args, add_model_args, load_dataset, make_extractor, split_features


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser('eval', help='mAP / CMC / mINP of a model on a dataset, or of saved features',
                                   description=__doc__)
    add_model_args(parser, required=False)
    add_dataset_args(parser)
    parser.add_argument('--features', help='saved features with query and gallery sets (instead of model + dataset)')
    parser.add_argument('--metric', choices=METRICS, default='cosine')
    parser.add_argument('--ap-mode', choices=AP_MODES, default='default',
                        help='default: torchreid/fast-reid AP; official: Market-1501 trapezoid AP')
    parser.add_argument('--rerank', action='store_true', help='k-reciprocal re-ranking (k1=20, k2=6, λ=0.3)')
    parser.add_argument('--single-gallery-shot', action='store_true',
                        help='classic CUHK03 CMC: one random gallery image per identity, averaged over draws')
    parser.add_argument('--seed', type=int, default=0, help='seed of the single-gallery-shot draws')
    parser.add_argument('--max-rank', type=int, default=50)
    parser.add_argument('--json', metavar='FILE', help='also write the metrics (percent) as JSON')
    parser.add_argument('--quiet', action='store_true', help='no progress bars')
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    dataset = load_dataset(args)
    if (dataset is None) == (args.features is None) or (dataset is not None and not args.model):
        raise ValueError('give either --model with --dataset/--data-root, or --features')
    if args.features:
        sets = load_features(args.features)
        if not {'query', 'gallery'} <= set(sets):
            raise ValueError(f'{args.features} holds the sets {sorted(sets)}; evaluation needs query and gallery '
                             f'(extract them from a dataset)')
    else:
        sets = split_features(make_extractor(args), dataset)
    query, gallery = sets['query'], sets['gallery']
    if not (query.has_labels and gallery.has_labels):
        raise ValueError('evaluation needs the identities and cameras of every query and gallery image')
    result = evaluate_features(
        query.feats, gallery.feats, query.pids, gallery.pids, query.camids, gallery.camids, metric=args.metric,
        rerank=args.rerank, device=args.device, ap_mode=args.ap_mode, max_rank=args.max_rank,
        single_gallery_shot=args.single_gallery_shot, seed=args.seed, progress=not args.quiet)
    cmc = result['cmc']
    metrics = dict(mAP=100 * result['mAP'], **{f'rank{r}': 100 * float(cmc[min(r, len(cmc)) - 1]) for r in (1, 5, 10)},
                   mINP=100 * result['mINP'], num_query=len(query.feats), num_gallery=len(gallery.feats),
                   num_valid_queries=result['num_valid_queries'], rerank=args.rerank, ap_mode=args.ap_mode,
                   cmc=[100 * float(c) for c in cmc])
    print(f'mAP {metrics["mAP"]:.2f}  Rank-1 {metrics["rank1"]:.2f}  Rank-5 {metrics["rank5"]:.2f}  '
          f'Rank-10 {metrics["rank10"]:.2f}  mINP {metrics["mINP"]:.2f}  '
          f'({metrics["num_valid_queries"]} queries × {metrics["num_gallery"]} gallery{", re-ranked" if args.rerank else ""})')
    if args.json:
        atomic_save_json(metrics, args.json)
    return 0
