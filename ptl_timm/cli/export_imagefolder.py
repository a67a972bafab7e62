"""``ptl-timm export-imagefolder``: a ReID training split as an ImageFolder tree for timm's train.py."""
import argparse

from ptl_timm.engine.data import load_dataset
from ptl_timm.engine.imagefolder import LINK_MODES, export_imagefolder


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        'export-imagefolder', help='write a ReID training split as train/ and validation/ class folders',
        description='One class folder per training identity, for `python train.py --device-modules ptl_timm ...`.')
    parser.add_argument('--dataset', required=True, help='market1501, dukemtmc, msmt17, cuhk03_np, folder')
    parser.add_argument('--data-root', required=True, help="the dataset's folder")
    parser.add_argument('--output', required=True, help='folder to create (holds train/ and validation/)')
    parser.add_argument('--val-per-id', type=int, default=1, help='images per identity held out for validation')
    parser.add_argument('--mode', choices=LINK_MODES, default='copy', help='copy the images or link to them')
    parser.add_argument('--overwrite', action='store_true', help='replace an existing output folder')
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    dataset = load_dataset(args.dataset, args.data_root, {})
    counts = export_imagefolder(dataset, args.output, args.val_per_id, args.mode, args.overwrite)
    print(f'{args.output}: {counts["classes"]} classes, {counts["train"]} train and '
          f'{counts["validation"]} validation images (--num-classes {counts["classes"]})')
    return 0
