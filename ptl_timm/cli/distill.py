"""``ptl-timm distill``: Student-Teacher Distillation of a trained PTL model (``ptl_timm.engine.run_distill``)."""
import argparse

from ptl_timm.engine import DistillConfig, run_distill
from .options import add_command
from .train import add_config_arguments, config_from_args, print_config

_FLAGS = (
    ('--teacher', 'teacher', str, 'checkpoint folder of the trained PTL model'),
    ('--lam', 'lam', float, 'λ of Eq. 4'),
)


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = add_command(
        subparsers, 'distill', help='distil a trained PTL teacher into a plain reid_* student (paper Eq. 4)',
        description='Loss (1-λ)·CE + λ·L1(student embedding, teacher embedding); the teacher stays in eval mode.',
        example='ptl-timm distill --model reid_resnet50 --teacher runs/ptl_r50/last '
                '--init-checkpoint runs/r50/last --data-root data/market1501 --output runs/std')
    add_config_arguments(parser, DistillConfig, _FLAGS)
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(DistillConfig, args, 'distill', _FLAGS)
    if args.print_config:
        return print_config(cfg)
    result = run_distill(cfg)
    print(f'student checkpoints: {result["output"]}/last (best: {result["output"]}/best)')
    return 0
