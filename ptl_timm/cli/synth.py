"""Generate a synthetic ReID dataset (a domain, in a real on-disk layout).

Identities with persistent appearance seen by several cameras of one synthetic domain, written to --data-root
in the chosen layout; read it back with the same --dataset LAYOUT --data-root FOLDER in train, eval, extract
and search.

Example: ptl-timm synth --data-root data/street --domain street --num-ids 100
"""
import argparse
import time
from pathlib import Path

from ptl_timm.data.datasets import build_dataset
from ptl_timm.data.synth import LAYOUTS, SYNTH_DOMAINS, generate_synthetic
from ptl_timm.errors import InputError
from .options import add_command, add_data_root, add_img_size, add_quiet, integer


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = add_command(subparsers, __name__, __doc__)
    add_data_root(parser, help='the dataset folder to write (it holds the layout\'s split folders)')
    parser.add_argument('--domain', choices=SYNTH_DOMAINS, default=SYNTH_DOMAINS[0], help='imaging domain')
    parser.add_argument('--layout', choices=LAYOUTS, default='market1501',
                        help='on-disk format to write (the --dataset name that reads it)')
    parser.add_argument('--num-ids', type=integer(2), default=100, help='identities (alternately train and test)')
    parser.add_argument('--images-per-id', type=integer(2), default=8, help='images of each identity')
    parser.add_argument('--num-cams', type=integer(2), default=4, help='cameras of the domain')
    add_img_size(parser, default=(128, 64), help='image height and width')
    parser.add_argument('--seed', type=integer(), default=0, help='the people and their images')
    add_quiet(parser)
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    if args.data_root is None:
        raise InputError('give the dataset folder to write with --data-root FOLDER')
    folder = Path(args.data_root).expanduser().resolve()
    started = time.perf_counter()
    path = generate_synthetic(
        folder.parent, args.domain, layout=args.layout, num_ids=args.num_ids, images_per_id=args.images_per_id,
        num_cams=args.num_cams, img_size=args.img_size, seed=args.seed, progress=not args.quiet, name=folder.name)
    if not args.quiet:
        print(build_dataset(args.layout, path).summary())
        print(f'written in {time.perf_counter() - started:.1f}s; '
              f'read it with --dataset {args.layout} --data-root {path}')
    return 0
