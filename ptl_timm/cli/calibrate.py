"""Measure a model's same-person thresholds at target false-positive rates and store them in its config.json.

Every pair of distinct images of a labelled split (default: the dataset's query and gallery images) is a
trial: impostor when the identities differ, genuine when they agree (same-camera pairs excluded when cameras
are known, else only the image with itself). The threshold at each target FPR, and the TPR it gives, are
written into the checkpoint's config.json under "reid_calibration" (publish copies them into the model
card); half of the identities are held out and the FPR/TPR the thresholds give there are printed beside the
targets. ptl-timm verify decides with them.

Example: ptl-timm calibrate --model runs/x/best --dataset market1501 --data-root data/market1501
"""
import argparse

from ptl_timm.errors import InputError
from ptl_timm.eval.calibration import CALIBRATION_KEY, DEFAULT_FPRS, calibrate
from ptl_timm.hub.calibration import checkpoint_config
from ptl_timm.eval.metrics import METRICS
from ptl_timm.eval.protocol import PROTOCOLS
from ptl_timm.utils import atomic_save_json
from .options import add_command, add_dataset_args, add_model_args, add_quiet, number, output_file


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = add_command(subparsers, __name__, __doc__)
    add_model_args(parser)
    add_dataset_args(parser)
    parser.add_argument('--fprs', nargs='+', type=number(0.0, 1.0), default=list(DEFAULT_FPRS), help='target false-positive rates')
    parser.add_argument('--splits', nargs='+', default=['query', 'gallery'], choices=('train', 'query', 'gallery'),
                        help='dataset splits pooled into the calibration set')
    parser.add_argument('--holdout', type=number(0.0, 1.0), default=0.5,
                        help='share of the identities held out to measure the FPR/TPR each threshold gives (0: none)')
    parser.add_argument('--protocol', choices=PROTOCOLS, default='auto',
                        help='pairs excluded: camera (same identity and camera), self (only the same file), '
                             'auto (camera when every camera is known)')
    parser.add_argument('--metric', choices=METRICS, default='cosine', help='distance between embeddings')
    parser.add_argument('--seed', type=int, default=0, help='which identities are held out')
    parser.add_argument('--json', metavar='FILE', type=output_file, help='also write the calibration as JSON')
    add_quiet(parser)
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    if not (args.dataset and args.data_root):
        raise InputError('calibration needs a labelled split: give --dataset and --data-root')
    result = calibrate(
        args.model, args.dataset, args.data_root, fprs=args.fprs, splits=args.splits, holdout=args.holdout,
        protocol=args.protocol, seed=args.seed, metric=args.metric, batch_size=args.batch_size, img_size=args.img_size,
        flip=args.flip, device=args.device, num_workers=args.workers, progress=not args.quiet)
    pairs = result['num_pairs']
    print(f'operating points of {args.model} on {result["dataset"]} ({result["split"]}): {result["num_images"]} images '
          f'of {result["num_identities"]} identities, {pairs["genuine"]:,} genuine / {pairs["impostor"]:,} impostor pairs')
    print(f'{result["protocol_description"]}; {result["metric"]} distance, {result["decision"]}')
    heldout = result.get('heldout')
    print(f'{"target FPR":>10} {"threshold":>10} {"TPR %":>7}' + (f' {"held-out FPR":>13} {"held-out TPR %":>15}'
                                                                  if heldout else ''))
    for p in result['points']:
        line = f'{p["fpr"]:>10g} {p["threshold"]:>10.4f} {100 * p["tpr"]:>7.2f}'
        if heldout:
            line += f' {p["heldout_fpr"]:>13.2e} {100 * p["heldout_tpr"]:>15.2f}'
        print(line)
    if heldout:
        print(f'held out: {heldout["num_images"]} images of {heldout["num_identities"]} other identities, '
              f'{heldout["num_pairs"]["impostor"]:,} impostor pairs')
    print(f'written into {checkpoint_config(args.model)} ("{CALIBRATION_KEY}")')
    if result['num_distractors_left_out']:
        print(f'left out {result["num_distractors_left_out"]} distractor images (no labelled person)')
    if args.json:
        atomic_save_json(result, args.json)
    return 0
