"""Rank a gallery for query images (JSON/CSV + PNG).

Query images -> ranked gallery images with scores (JSON or CSV) and a ranked-list picture (PNG). Queries:
image files or folders (--query), or the query split of --dataset / saved --features. Gallery: an image folder
(--gallery), or the gallery split of --dataset / saved --features. When identities and cameras are known on
both sides (dataset splits, or file names in a dataset's naming such as 0002_c1s1_000451_01.jpg), same-camera
matches are skipped, results are framed green/red and --worst-first lists the queries with the lowest AP
first; otherwise only a query image that is also in the gallery is skipped. Saved --features are ranked against
images embedded now only when the file records the same weights, input size and flip as --model and its
options (ptl-timm extract records them).

Example: ptl-timm search --model runs/x/best --query me.jpg --gallery photos/ --output ranks.json
"""
import argparse
from pathlib import Path
from typing import Dict

from ptl_timm.errors import InputError
from ptl_timm.eval.extract import image_files
from ptl_timm.eval.features import FeatureSet, check_same_extraction, load_features, saved_extraction
from ptl_timm.eval.protocol import resolve_protocol
from ptl_timm.eval.retrieval import BACKENDS, draw_rankings, search, write_rankings
from .options import (
    add_command, add_dataset_args, add_model_args, add_quiet, add_ranking_outputs, dataset_from_args,
    extractor_from_args, integer, ranking_picture)


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = add_command(subparsers, __name__, __doc__)
    add_model_args(parser, required=False)
    add_dataset_args(parser)
    parser.add_argument('--query', nargs='+', help='query image files or folders')
    parser.add_argument('--gallery', help='gallery image folder')
    parser.add_argument('--features', help='saved features (query/gallery sets, or images as the gallery)')
    parser.add_argument('--num-queries', type=integer(1), help='only N queries: the first N, or with --worst-first the N worst')
    parser.add_argument('--top-k', type=integer(1), default=10, help='results per query')
    parser.add_argument('--worst-first', action='store_true', help='queries with the lowest AP first (of all queries)')
    parser.add_argument('--backend', choices=BACKENDS, default='auto', help='gallery index (auto: faiss when installed)')
    add_ranking_outputs(parser)
    add_quiet(parser)
    parser.set_defaults(func=run)
    return parser


def _query_paths(items) -> list:
    return [p for item in items for p in (image_files(item) if Path(item).is_dir() else [item])]


def _sets(args: argparse.Namespace) -> Dict[str, FeatureSet]:
    """Query and gallery feature sets from the sources the options name (images need --model)."""
    sets = dict(load_features(args.features)) if args.features else {}
    if 'gallery' not in sets and 'images' in sets:
        sets['gallery'] = sets.pop('images')
    dataset = dataset_from_args(args)
    needs_model = dataset is not None or args.query or args.gallery
    if needs_model and not args.model:
        raise InputError('extracting features of images needs --model')
    extractor = extractor_from_args(args) if needs_model else None
    if args.features and extractor is not None:
        check_same_extraction(saved_extraction(args.features), extractor.extraction(), args.features)
    if dataset is not None:
        sets.update(extractor.extract_splits(dataset))
    if args.gallery:
        sets['gallery'] = extractor.extract_folder(args.gallery, 'gallery')
    if args.query:
        sets['query'] = extractor.extract_images(_query_paths(args.query), 'query')
    missing = [name for name in ('query', 'gallery') if name not in sets]
    if missing:
        raise InputError(f'no {" and no ".join(missing)} images: give --query/--gallery, --dataset/--data-root or --features')
    return sets


def run(args: argparse.Namespace) -> int:
    picture = ranking_picture(args)
    sets = _sets(args)
    rankings = search(sets['query'], sets['gallery'], top_k=args.top_k, backend=args.backend,
                      worst_first=args.worst_first, num_queries=args.num_queries)
    out = write_rankings(rankings, args.output)
    if all(bool((s.pids >= 0).all()) for s in (sets['query'], sets['gallery'])) and not args.quiet:
        print(resolve_protocol([sets["query"], sets["gallery"]]).description)
    order = 'worst first' if args.worst_first else 'in query order'
    title = f'{args.model or args.features}: top {args.top_k} of each query ({order})'
    picture = draw_rankings(rankings, picture, max_queries=args.max_rows, title=title)
    if not args.quiet:
        print(f'wrote {out} ({len(rankings)} queries, top {args.top_k}) and {picture}')
    return 0
