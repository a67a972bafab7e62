"""``ptl-timm transfer``: fine-tune on several datasets in order (``ptl_timm.engine.transfer``)."""
import argparse

from ptl_timm.engine import TransferConfig, transfer
from .train import add_config_arguments, config_from_args


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        'transfer', help='multi-step transfer (e.g. Duke → Market → MSMT17), optionally followed by STD',
        description='Each step starts from the previous one; prints mAP/Rank-1 after every step on every test set.')
    add_config_arguments(parser)
    parser.add_argument('--steps', nargs='+', metavar='DATASET',
                        help='datasets in fine-tuning order (else the config\'s steps)')
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    if args.steps:
        args.overrides.append('steps=[' + ', '.join(f'{{dataset: {name}}}' for name in args.steps) + ']')
    result = transfer(config_from_args(TransferConfig, args, 'transfer'))
    print(result['table'], end='')
    return 0
