"""Write a ReID training split as train/ and validation/ class folders.

One class folder per training identity, for timm's train.py (python train.py --device-modules ptl_timm ...).
An existing output is replaced whole (--overwrite), never left half-written.

Example: ptl-timm export-imagefolder --dataset market1501 --data-root data/market1501 --output
    data/market1501_if
"""
import argparse

from ptl_timm.data.datasets import DATASETS
from ptl_timm.data.imagefolder import LINK_MODES, export_imagefolder
from ptl_timm.data.specs import load_dataset
from .options import add_command, add_data_root, add_dataset, add_output, add_quiet, integer


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = add_command(subparsers, __name__, __doc__)
    add_dataset(parser, choices=sorted(DATASETS), required=True)
    add_data_root(parser, required=True)
    add_output(parser, help='folder to create (holds train/ and validation/)', folder=True, required=True)
    parser.add_argument('--val-per-id', type=integer(0), default=1, help='images per identity held out for validation')
    parser.add_argument('--mode', choices=LINK_MODES, default='copy', help='copy the images or link to them')
    parser.add_argument('--overwrite', action='store_true', help='replace an existing output folder')
    add_quiet(parser)
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    dataset = load_dataset(args.dataset, args.data_root, {})
    counts = export_imagefolder(dataset, args.output, args.val_per_id, args.mode, args.overwrite)
    if not args.quiet:
        print(f'{args.output}: {counts["classes"]} classes, {counts["train"]} train and '
              f'{counts["validation"]} validation images (--num-classes {counts["classes"]})')
    return 0
