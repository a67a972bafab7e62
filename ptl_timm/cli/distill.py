"""``ptl-timm distill``: Student-Teacher Distillation of a trained PTL model (``ptl_timm.engine.distill``)."""
import argparse

from ptl_timm.engine import DistillConfig, distill
from .train import add_config_arguments, config_from_args


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        'distill', help='distil a trained PTL teacher into a plain reid_* student (paper Eq. 4)',
        description='Loss (1-λ)·CE + λ·L1(student embedding, teacher embedding); the teacher stays in eval mode.')
    add_config_arguments(parser)
    parser.add_argument('--teacher', help='checkpoint folder of the trained PTL model')
    parser.add_argument('--lam', type=float, help='λ of Eq. 4 (default 0.8)')
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    if args.teacher is not None:
        args.overrides.append(f'teacher={args.teacher}')
    if args.lam is not None:
        args.overrides.append(f'lam={args.lam}')
    result = distill(config_from_args(DistillConfig, args, 'distill'))
    print(f'student checkpoints: {result["output"]}/last (best: {result["output"]}/best)')
    return 0
