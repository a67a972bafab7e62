"""Multi-step transfer (e.g. Duke → Market → MSMT17), optionally followed by STD.

Each step starts from the previous one; prints mAP/Rank-1 after every step on every test set.

Example: ptl-timm transfer --config configs/transfer/ptl_densenet161_std_duke_market.yaml --data-root data
"""
import argparse

from ptl_timm.engine import TransferConfig, run_transfer
from .options import add_command
from .train import add_config_arguments, resolve_and_run


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = add_command(subparsers, __name__, __doc__)
    add_config_arguments(parser, TransferConfig, without=('dataset',))
    parser.add_argument('--steps', nargs='+', metavar='DATASET',
                        help='datasets in fine-tuning order (else the config\'s steps)')
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    steps = [{'dataset': name} for name in args.steps] if args.steps else None
    result = resolve_and_run(TransferConfig, args, run_transfer, values={'steps': steps} if steps else None)
    if result:
        print(result['table'], end='')
    return 0
