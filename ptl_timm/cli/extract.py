"""``ptl-timm extract``: a model's L2-normalised embeddings of a dataset's query/gallery split or of a
folder of images, saved as ``.safetensors`` or ``.npz`` for ``ptl-timm eval`` / ``ptl-timm search``.

The model and dataset options defined here are shared by ``eval`` and ``search``.
"""
import argparse
from typing import Dict, Optional

import torch

from ptl_timm.data.datasets import DATASETS, ReIDDataset, build_dataset
from ptl_timm.eval.extract import FeatureExtractor, image_files
from ptl_timm.eval.features import FeatureSet, save_features


def add_model_args(parser: argparse.ArgumentParser, required: bool = True) -> None:
    group = parser.add_argument_group('model')
    group.add_argument('--model', required=required,
                       help='timm name (with pretrained tag), hf-hub:/local-dir: id, checkpoint folder or .safetensors')
    group.add_argument('--img-size', type=int, nargs=2, metavar=('H', 'W'),
                       help="input size (default: the model's pretrained_cfg)")
    group.add_argument('--batch-size', type=int, default=64)
    group.add_argument('--flip', action='store_true', help='flip test-time augmentation (sum with the mirror image)')
    group.add_argument('--device', help='cuda or cpu (default: cuda when available)')
    group.add_argument('--workers', type=int, default=0, help='DataLoader workers decoding images')
    group.add_argument('--channels-last', action='store_true')


def add_dataset_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group('dataset')
    group.add_argument('--dataset', choices=sorted(DATASETS), help='dataset layout of --data-root')
    # --data-root as in `ptl-timm train`; --root kept as a short alias
    group.add_argument('--data-root', '--root', dest='root', help='folder holding the dataset')
    group.add_argument('--variant', choices=('detected', 'labeled'), help='cuhk03_np boxes')


def make_extractor(args: argparse.Namespace) -> FeatureExtractor:
    return FeatureExtractor(args.model, device=args.device, batch_size=args.batch_size, img_size=args.img_size,
                            flip=args.flip, num_workers=args.workers, channels_last=args.channels_last,
                            progress=not args.quiet)


def load_dataset(args: argparse.Namespace) -> Optional[ReIDDataset]:
    """The dataset named by --dataset/--data-root, or None when neither is given."""
    if not args.dataset and not args.root:
        return None
    if not (args.dataset and args.root):
        raise ValueError('--dataset and --data-root go together (the layout and the folder holding it)')
    return build_dataset(args.dataset, args.root, **({'variant': args.variant} if args.variant else {}))


def split_features(extractor: FeatureExtractor, dataset: ReIDDataset, splits=('query', 'gallery')) -> Dict[str, FeatureSet]:
    sets = {}
    for split in splits:
        records = getattr(dataset, split)
        feats, pids, camids = extractor.extract_records(records)
        sets[split] = FeatureSet(feats, pids, camids, [r.path for r in records])
    return sets


def folder_features(extractor: FeatureExtractor, folder: str) -> FeatureSet:
    """Features of every image under ``folder``; identities and cameras unknown (-1)."""
    paths = image_files(folder)
    feats = extractor(paths)
    unknown = torch.full((len(paths),), -1, dtype=torch.int64)
    return FeatureSet(feats, unknown, unknown.clone(), paths)


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser('extract', help='save a model\'s embeddings of a dataset split or an image folder',
                                   description=__doc__.split('\n\n')[0])
    add_model_args(parser)
    add_dataset_args(parser)
    parser.add_argument('--folder', help='a folder of images instead of a dataset (saved as the set "images")')
    parser.add_argument('--splits', nargs='+', default=['query', 'gallery'], choices=('train', 'query', 'gallery'),
                        help='dataset splits to extract')
    parser.add_argument('--out', required=True, help='output file (.safetensors or .npz)')
    parser.add_argument('--quiet', action='store_true', help='no progress bars')
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    dataset = load_dataset(args)
    if (dataset is None) == (args.folder is None):
        raise ValueError('give either --dataset/--data-root or --folder')
    extractor = make_extractor(args)
    sets = split_features(extractor, dataset, args.splits) if dataset else {'images': folder_features(extractor, args.folder)}
    save_features(sets, args.out)
    if not args.quiet:
        sizes = ', '.join(f'{name} {tuple(s.feats.shape)}' for name, s in sets.items())
        print(f'wrote {args.out}: {sizes}')
    return 0
