"""Decide whether two images show the same person, with the model's calibrated threshold.

The distance of the two images' embeddings is compared with the threshold that ptl-timm calibrate stored in
the model's config.json at the chosen false-positive rate (--fpr; default the lowest calibrated one). A model
without calibration, or an FPR it was not calibrated at, is refused.

Example: ptl-timm verify --model runs/x/best --images a.jpg b.jpg --fpr 0.001
"""
import argparse

from ptl_timm.eval.calibration import verify
from ptl_timm.utils import atomic_save_json
from .options import add_command, add_device, add_model, number, output_file


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = add_command(subparsers, __name__, __doc__)
    add_model(parser, required=True, help='calibrated checkpoint folder, local-dir:FOLDER or hf-hub:ORG/NAME')
    parser.add_argument('--images', nargs=2, required=True, metavar=('A', 'B'), help='the two images to compare')
    parser.add_argument('--fpr', type=number(0.0, 1.0), help='operating point (default: the lowest calibrated FPR)')
    add_device(parser)
    parser.add_argument('--json', metavar='FILE', type=output_file, help='also write the answer as JSON')
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    answer = verify(args.model, *args.images, fpr=args.fpr, device=args.device)
    verdict = 'same person' if answer.same else 'different people'
    relation = '<' if answer.same else '>='
    distance = 0.0 if abs(answer.distance) < 5e-5 else answer.distance  # no '-0.0000' for an image with itself
    print(f'{verdict}: {answer.metric} distance {distance:.4f} {relation} threshold {answer.threshold:.4f} '
          f'(operating point FPR {answer.fpr:g}, TPR {100 * answer.tpr:.1f}% at calibration)')
    if args.json:
        atomic_save_json(dict(answer._asdict(), images=list(args.images)), args.json)
    return 0
