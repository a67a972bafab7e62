"""Distil a trained PTL teacher into a plain reid_* student (paper Eq. 4).

Loss (1-λ)·CE + λ·L1(student embedding, teacher embedding); the teacher stays in eval mode. Settings resolve
as in ptl-timm train: recipe, --config FILE, --set key=value and the flags; --print-config shows the result.

Example: ptl-timm distill --model reid_resnet50 --teacher runs/ptl_r50/last --init-checkpoint runs/r50/last
    --data-root data/market1501 --output runs/std
"""
import argparse

from ptl_timm.engine import DistillConfig, run_distill
from .options import add_command
from .train import add_config_arguments, resolve_and_run

_FLAGS = (
    ('--teacher', 'teacher', str, 'checkpoint folder of the trained PTL model'),
    ('--lam', 'lam', float, 'λ of Eq. 4'),
)


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = add_command(subparsers, __name__, __doc__)
    add_config_arguments(parser, DistillConfig, _FLAGS)
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    result = resolve_and_run(DistillConfig, args, run_distill, _FLAGS)
    if result:
        print(f'student checkpoints: {result["output"]}/last (best: {result["output"]}/best)')
    return 0
