"""``ptl-timm train``: fine-tune a model on a ReID dataset (``ptl_timm.engine.fine_tune``).

Settings come from the recipe defaults, then ``--config FILE``, then the flags below and
``--set key=value`` (any config key). ``torchrun --nproc_per_node N -m ptl_timm train ...`` runs DDP.
The helpers here are shared by ``distill`` and ``transfer``.
"""
import argparse
from typing import Any, Dict, Type

from ptl_timm.engine import TrainConfig, build_config, fine_tune, load_config, parse_overrides
from ptl_timm.engine.config import T, config_task

# flag → config key, for the settings changed most often
_VALUE_FLAGS = (
    ('--model', 'model', str, 'timm model name, e.g. ptl_resnet50, ptl_net (with --set model_args={backbone: ...})'),
    ('--dataset', 'dataset', str, 'dataset name: market1501, dukemtmc, msmt17, cuhk03_np, folder'),
    ('--data-root', 'data_root', str, "the dataset's folder (or a folder holding <dataset>/)"),
    ('--output', 'output', str, 'folder for last/, best/, metrics.jsonl, curves.png'),
    ('--init-checkpoint', 'init_checkpoint', str, 'ReID checkpoint folder to fine-tune from'),
    ('--epochs', 'epochs', int, None),
    ('--batch-size', 'batch_size', int, 'per process'),
    ('--lr', 'lr', float, None),
    ('--seed', 'seed', int, None),
    ('--workers', 'num_workers', int, 'data loader workers'),
    ('--device', 'device', str, "'auto', 'cpu', 'cuda', 'cuda:1', ..."),
)
_SWITCHES = (
    ('--resume', 'resume', 'continue the run in --output from last/'),
    ('--overwrite', 'overwrite', 'replace the checkpoints of an earlier run in --output'),
    ('--amp', 'amp', 'mixed precision (float16 on GPU, bfloat16 on CPU)'),
    ('--channels-last', 'channels_last', 'channels_last memory format'),
    ('--deterministic', 'deterministic', 'deterministic algorithms (bit-exact resume)'),
)


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--config', metavar='FILE', help='YAML or JSON config (configs/ holds the paper recipes)')
    parser.add_argument('--set', metavar='KEY=VALUE', action='append', default=[], dest='overrides',
                        help='override any config key (value parsed as YAML), repeatable')
    for flag, key, kind, help_text in _VALUE_FLAGS:
        parser.add_argument(flag, dest=key, type=kind, help=help_text)
    for flag, key, help_text in _SWITCHES:
        parser.add_argument(flag, dest=key, action='store_true', default=None, help=help_text)
    parser.add_argument('--no-pretrained', dest='pretrained', action='store_false', default=None,
                        help='start from random weights instead of the backbone\'s ImageNet weights')
    parser.add_argument('--quiet', action='store_true', help='no progress bars')


def config_from_args(cls: Type[T], args: argparse.Namespace, task: str) -> T:
    """Recipe → ``--config`` → ``--set`` → flags, validated into ``cls``."""
    file_data: Dict[str, Any] = load_config(args.config) if args.config else {}
    if config_task(file_data, task) != task:
        raise ValueError(f'{args.config} is a {file_data["task"]!r} config; run it with `ptl-timm {file_data["task"]}`')
    overrides = parse_overrides(args.overrides)
    keys = [key for _, key, _, _ in _VALUE_FLAGS] + [key for _, key, _ in _SWITCHES] + ['pretrained']
    overrides.update({key: getattr(args, key) for key in keys if getattr(args, key, None) is not None})
    if args.quiet:
        overrides['progress'] = False
    return build_config(cls, file_data, overrides)


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        'train', help='fine-tune a PTL (or any) model on a ReID dataset',
        description='Fine-tune with the paper recipe (or MGN\'s for MGN models); see configs/.')
    add_config_arguments(parser)
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    result = fine_tune(config_from_args(TrainConfig, args, 'finetune'))
    print(f'checkpoints: {result["output"]}/last (best: {result["output"]}/best)')
    return 0
