"""Save a model's embeddings of a dataset split or an image folder.

A model's L2-normalised embeddings of a dataset's splits or of a folder of images, saved as .safetensors or
.npz for ptl-timm eval / search, with the weights' sha256, input size and flip they were extracted with (search
refuses to rank images embedded otherwise against them).

Example: ptl-timm extract --model runs/x/best --dataset market1501 --data-root data/market1501 --output
    feats.safetensors
"""
import argparse

from ptl_timm.errors import InputError
from ptl_timm.eval.features import FEATURE_SUFFIXES, save_features
from .options import (
    add_command, add_dataset_args, add_model_args, add_output, add_quiet, dataset_from_args, extractor_from_args)


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = add_command(subparsers, __name__, __doc__)
    add_model_args(parser)
    add_dataset_args(parser)
    parser.add_argument('--folder', help='a folder of images instead of a dataset (saved as the set "images")')
    parser.add_argument('--splits', nargs='+', default=['query', 'gallery'], choices=('train', 'query', 'gallery'),
                        help='dataset splits to extract')
    add_output(parser, 'output file (.safetensors or .npz)', required=True, suffixes=FEATURE_SUFFIXES)
    add_quiet(parser)
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    dataset = dataset_from_args(args)
    if (dataset is None) == (args.folder is None):
        raise InputError('give either --dataset/--data-root or --folder')
    extractor = extractor_from_args(args)
    if dataset is not None:
        sets = extractor.extract_splits(dataset, args.splits)
    else:
        sets = {'images': extractor.extract_folder(args.folder)}
    save_features(sets, args.output, extraction=extractor.extraction())
    if not args.quiet:
        sizes = ', '.join(f'{name} {tuple(s.feats.shape)}' for name, s in sets.items())
        print(f'wrote {args.output}: {sizes}')
    return 0
