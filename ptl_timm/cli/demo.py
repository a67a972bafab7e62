"""``ptl-timm demo``: the synthetic end-to-end run (data → PTL fine-tuning → STD → evaluation)."""
import argparse

from ptl_timm.engine.demo import run_demo


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        'demo', help='synthetic end-to-end demo: fine-tune baseline and PTL, distil, evaluate on two domains',
        description='Generates two synthetic ReID domains, trains on the first, evaluates on both; CPU-friendly.')
    parser.add_argument('--output', default='ptl_timm_demo', help='folder for data, checkpoints, curves and table')
    scale = parser.add_mutually_exclusive_group()
    scale.add_argument('--quick', dest='quick', action='store_true', default=True,
                       help='the small setting, a few CPU minutes (default)')
    scale.add_argument('--full', dest='quick', action='store_false',
                       help='more identities and epochs (tens of CPU minutes, clearer PTL/STD differences)')
    parser.add_argument('--backbone', default='resnet18', help='timm backbone of both networks')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--quiet', action='store_true', help='no progress bars')
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    result = run_demo(args.output, 'quick' if args.quick else 'full', backbone=args.backbone,
                      progress=not args.quiet, seed=args.seed)
    print(result['table'], end='')
    print(f'checkpoints, curves.png and metrics.jsonl of each run: {result["output"]}/{{baseline,ptl,ptl_std}}')
    print(f'ranked lists of the distilled student: {result["ranked"]}')
    return 0
