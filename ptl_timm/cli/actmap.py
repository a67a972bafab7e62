"""Draw where a model's last feature map responds, over a few images.

Channel-wise energy of the last feature map (forward_features), upsampled over each image (torchreid's
visualize_actmap), for a few images of a dataset split or a folder: each image and its overlay side by side,
in one PNG grid.

Example: ptl-timm actmap --model runs/bot/last --dataset market1501 --data-root data/market1501 --output
    actmap.png
"""
import argparse
from typing import List

import numpy as np

from ptl_timm.data.datasets import DATASETS, build_dataset
from ptl_timm.utils import resolve_device
from ptl_timm.errors import InputError
from ptl_timm.eval.actmap import save_actmap_grid
from ptl_timm.eval.extract import image_files
from ptl_timm.hub import load_model
from .options import add_command, add_data_root, add_dataset, add_device, add_img_size, add_model, add_output


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = add_command(subparsers, __name__, __doc__)
    add_model(parser, required=True)
    add_dataset(parser, choices=sorted(DATASETS))
    add_data_root(parser)
    parser.add_argument('--split', choices=('train', 'query', 'gallery'), default='query',
                        help='dataset split to draw images from')
    parser.add_argument('--folder', help='a folder of images instead of a dataset')
    parser.add_argument('--num-images', type=int, default=8, help='images in the grid, spread evenly over the split')
    parser.add_argument('--columns', type=int, default=4, help='image/overlay pairs per row')
    add_img_size(parser)
    add_device(parser)
    add_output(parser, required=True, help='the PNG file to write')
    parser.set_defaults(func=run)
    return parser


def _chosen_images(args: argparse.Namespace) -> List[str]:
    """``--num-images`` paths spread evenly over the split or folder (so several identities and cameras show)."""
    if args.num_images < 1 or args.columns < 1:
        raise InputError(f'--num-images and --columns must be >= 1, got {args.num_images} and {args.columns}')
    if (args.folder is None) == (args.dataset is None and args.data_root is None):
        raise InputError('give either --dataset with --data-root, or --folder')
    if args.folder is not None:
        paths = image_files(args.folder)
    elif not (args.dataset and args.data_root):
        raise InputError('--dataset and --data-root go together (the layout and the folder holding it)')
    else:
        paths = [r.path for r in getattr(build_dataset(args.dataset, args.data_root), args.split)]
        if not paths:
            raise InputError(f'the {args.split} split of {args.data_root} is empty; choose another --split')
    picks = np.unique(np.linspace(0, len(paths) - 1, min(args.num_images, len(paths))).round().astype(int))
    return [paths[i] for i in picks]


def run(args: argparse.Namespace) -> int:
    paths = _chosen_images(args)
    model = load_model(args.model, num_classes=0).to(resolve_device(args.device))
    output = save_actmap_grid(model, paths, args.output, args.img_size, args.columns)
    print(f'wrote {output} ({len(paths)} images)')
    return 0
