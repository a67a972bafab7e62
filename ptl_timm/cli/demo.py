"""Synthetic end-to-end demo: fine-tune baseline and PTL, distil, evaluate on two domains.

Generates two synthetic ReID domains, trains on the first from random weights (nothing is downloaded) and
evaluates on both; CPU-friendly.

Example: ptl-timm demo --output ptl_timm_demo
"""
import argparse

from ptl_timm.tools.demo import run_demo
from .options import add_command, add_output, add_quiet, integer


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = add_command(subparsers, __name__, __doc__)
    add_output(parser, help='folder for data, checkpoints, curves and table', folder=True, default='ptl_timm_demo')
    scale = parser.add_mutually_exclusive_group()
    scale.add_argument('--quick', dest='quick', action='store_true', default=True,
                       help='the small setting, a few CPU minutes (the default)')
    scale.add_argument('--full', dest='quick', action='store_false',
                       help='more identities and epochs (tens of CPU minutes; still one seed on a small split)')
    parser.add_argument('--backbone', default='resnet18', help='timm backbone of both networks')
    parser.add_argument('--seed', type=integer(), default=0, help='the data and the initial weights')
    add_quiet(parser)
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    result = run_demo(args.output, 'quick' if args.quick else 'full', backbone=args.backbone,
                      progress=not args.quiet, seed=args.seed)
    print(f"\n{result['table']}")
    print(result['caveat'])
    print(f'checkpoints, curves.png and metrics.jsonl of each run: {result["output"]}/{{baseline,ptl,ptl_std}}')
    print(f'ranked lists of the distilled student: {result["ranked"]}')
    return 0
