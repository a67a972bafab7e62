"""``ptl-timm synth``: write a synthetic ReID dataset of one domain in a real dataset layout."""
import argparse
import time

from ptl_timm.data.datasets import build_dataset
from ptl_timm.data.synth import LAYOUTS, SYNTH_DOMAINS, generate_synthetic


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        'synth', help='generate a synthetic ReID dataset (a domain, in a real on-disk layout)',
        description='Identities with persistent appearance seen by several cameras of one synthetic domain; '
                    'written to ROOT/DOMAIN in the chosen layout, readable with --dataset LAYOUT.')
    parser.add_argument('--root', required=True, help='parent folder; the dataset goes to ROOT/DOMAIN')
    parser.add_argument('--domain', choices=SYNTH_DOMAINS, default=SYNTH_DOMAINS[0], help='imaging domain')
    parser.add_argument('--layout', choices=LAYOUTS, default='market1501', help='on-disk format to write')
    parser.add_argument('--num-ids', type=int, default=100, help='identities (alternately train and test)')
    parser.add_argument('--images-per-id', type=int, default=8, help='images of each identity')
    parser.add_argument('--num-cams', type=int, default=4, help='cameras of the domain')
    parser.add_argument('--img-size', type=int, nargs=2, default=(128, 64), metavar=('H', 'W'), help='image size')
    parser.add_argument('--seed', type=int, default=0, help='the people and their images')
    parser.add_argument('--quiet', action='store_true', help='no progress bar or summary')
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    path = generate_synthetic(
        args.root, args.domain, layout=args.layout, num_ids=args.num_ids, images_per_id=args.images_per_id,
        num_cams=args.num_cams, img_size=args.img_size, seed=args.seed, progress=not args.quiet)
    if not args.quiet:
        print(build_dataset(args.layout, path).summary())
        print(f'written in {time.perf_counter() - started:.1f}s; '
              f'read it with --dataset {args.layout} --data-root {path}')
    return 0
