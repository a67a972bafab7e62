"""Save a model's embeddings of a dataset split or an image folder.

A model's L2-normalised embeddings of a dataset's splits or of a folder of images, saved as .safetensors or
.npz for ptl-timm eval / search.

Example: ptl-timm extract --model runs/x/best --dataset market1501 --data-root data/market1501 --output
    feats.safetensors
"""
import argparse
from typing import Dict, List, Optional

import torch

from ptl_timm.data.datasets import DATASETS, ReIDDataset, build_dataset, labels_from_names
from ptl_timm.errors import InputError
from ptl_timm.eval.extract import FeatureExtractor, image_files
from ptl_timm.eval.features import FeatureSet, save_features
from .options import (
    add_batch_size, add_command, add_data_root, add_dataset, add_device, add_img_size, add_model, add_output, add_quiet,
    add_random_weights, add_workers,
)


def add_model_args(parser: argparse.ArgumentParser, required: bool = True) -> None:
    """The model options of extract, eval and search."""
    group = parser.add_argument_group('model')
    add_model(group, required=required)
    add_random_weights(group)
    add_img_size(group, help="input height and width (default: the one the model's config.json records, i.e. its "
                             'training size; another size warns)')
    add_batch_size(group, 64)
    group.add_argument('--flip', action='store_true', help='flip test-time augmentation (sum with the mirror image)')
    add_device(group)
    add_workers(group)
    group.add_argument('--channels-last', action='store_true', help='channels-last memory format')


def add_dataset_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group('dataset')
    add_dataset(group, choices=sorted(DATASETS))
    add_data_root(group)
    group.add_argument('--variant', choices=('detected', 'labeled'), help='cuhk03_np boxes')


def make_extractor(args: argparse.Namespace) -> FeatureExtractor:
    return FeatureExtractor(args.model, device=args.device, batch_size=args.batch_size, img_size=args.img_size,
                            flip=args.flip, num_workers=args.workers, channels_last=args.channels_last,
                            progress=not args.quiet, random_weights=args.random_weights)


def load_dataset(args: argparse.Namespace) -> Optional[ReIDDataset]:
    """The dataset named by --dataset/--data-root, or None when neither is given."""
    if not args.dataset and not args.data_root:
        return None
    if not (args.dataset and args.data_root):
        raise InputError('--dataset and --data-root go together (the layout and the folder holding it)')
    return build_dataset(args.dataset, args.data_root, **({'variant': args.variant} if args.variant else {}))


def split_features(extractor: FeatureExtractor, dataset: ReIDDataset, splits=('query', 'gallery')) -> Dict[str, FeatureSet]:
    sets = {}
    for split in splits:
        records = getattr(dataset, split)
        feats, pids, camids = extractor.extract_records(records, desc=f'extract {split}')
        sets[split] = FeatureSet(feats, pids, camids, [r.path for r in records])
    return sets


def image_features(extractor: FeatureExtractor, paths: List[str], name: str) -> FeatureSet:
    """Features of image files (the set ``name``: its progress bar says it), with identities and cameras when
    the file names carry them in a dataset's convention (``0002_c1s1_000451_01.jpg``), else unknown (-1)."""
    labels = labels_from_names(paths)
    pids, camids = (torch.tensor(x, dtype=torch.int64) for x in labels) if labels else (
        torch.full((len(paths),), -1, dtype=torch.int64) for _ in range(2))
    return FeatureSet(extractor(paths, desc=f'extract {name}'), pids, camids, paths)


def folder_features(extractor: FeatureExtractor, folder: str, name: str) -> FeatureSet:
    """Features of every image under ``folder`` (see :func:`image_features`)."""
    return image_features(extractor, image_files(folder), name)


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = add_command(subparsers, __name__, __doc__)
    add_model_args(parser)
    add_dataset_args(parser)
    parser.add_argument('--folder', help='a folder of images instead of a dataset (saved as the set "images")')
    parser.add_argument('--splits', nargs='+', default=['query', 'gallery'], choices=('train', 'query', 'gallery'),
                        help='dataset splits to extract')
    add_output(parser, 'output file (.safetensors or .npz)', folder=False, required=True)
    add_quiet(parser)
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    dataset = load_dataset(args)
    if (dataset is None) == (args.folder is None):
        raise InputError('give either --dataset/--data-root or --folder')
    extractor = make_extractor(args)
    sets = (split_features(extractor, dataset, args.splits) if dataset
            else {'images': folder_features(extractor, args.folder, 'images')})
    save_features(sets, args.output)
    if not args.quiet:
        sizes = ', '.join(f'{name} {tuple(s.feats.shape)}' for name, s in sets.items())
        print(f'wrote {args.output}: {sizes}')
    return 0
