"""``ptl-timm transfer``: fine-tune on several datasets in order (``ptl_timm.engine.run_transfer``)."""
import argparse

from ptl_timm.engine import TransferConfig, run_transfer
from .options import add_command
from .train import add_config_arguments, config_from_args, print_config


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = add_command(
        subparsers, 'transfer',
        help='multi-step transfer (e.g. Duke → Market → MSMT17), optionally followed by STD',
        description='Each step starts from the previous one; prints mAP/Rank-1 after every step on every test set.',
        example='ptl-timm transfer --config configs/transfer/ptl_densenet161_std_duke_market.yaml --data-root data')
    add_config_arguments(parser, TransferConfig)
    parser.add_argument('--steps', nargs='+', metavar='DATASET',
                        help='datasets in fine-tuning order (else the config\'s steps)')
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    steps = [{'dataset': name} for name in args.steps] if args.steps else None
    cfg = config_from_args(TransferConfig, args, 'transfer', values={'steps': steps} if steps else None)
    if args.print_config:
        return print_config(cfg)
    result = run_transfer(cfg)
    print(result['table'], end='')
    return 0
