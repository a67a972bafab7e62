"""Fine-tune a PTL (or any) model on a ReID dataset.

Settings come from the model's recipe (the paper's; MGN's for MGN models, BoT's for bot_* models; see
configs/), then --config FILE, then --set key=value (any config key) and the flags below, resolved and checked
by the same constructor as TrainConfig(...) in Python; --print-config prints the result as YAML and exits.
--output DIR --resume alone continues a run from its saved config.yaml. torchrun --nproc_per_node N -m
ptl_timm train ... runs DDP.

Example: ptl-timm train --model ptl_resnet50 --dataset market1501 --data-root data/market1501 --output
    runs/ptl_r50
"""
import argparse
import dataclasses
from typing import Any, Callable, Dict, Optional, Sequence, Tuple, Type

from ptl_timm.engine import TrainConfig, build_config, fine_tune, load_config, parse_overrides
from ptl_timm.engine.config import RECIPES, T, config_to_yaml
from ptl_timm.engine.run_folder import run_config
from .options import add_command, add_data_root, add_device, add_img_size, add_output, add_quiet, add_workers

# flag → config key, type and help, for the settings changed most often (the others: --set)
ValueFlag = Tuple[str, str, type, str]
_VALUE_FLAGS: Tuple[ValueFlag, ...] = (
    ('--model', 'model', str, 'timm model name, e.g. ptl_resnet50, ptl_net (with --set model_args={backbone: ...})'),
    ('--dataset', 'dataset', str, 'dataset name: market1501, dukemtmc, msmt17, cuhk03_np, folder'),
    ('--init-checkpoint', 'init_checkpoint', str, 'ReID checkpoint folder to fine-tune from'),
    ('--epochs', 'epochs', int, 'training epochs'),
    ('--batch-size', 'batch_size', int, 'images per batch and process'),
    ('--lr', 'lr', float, 'learning rate'),
    ('--seed', 'seed', int, 'random seed'),
)
_SWITCHES = (
    ('--resume', 'resume', 'continue the run in --output from its config.yaml and last/ (no other flag needed)'),
    ('--overwrite', 'overwrite', 'replace an earlier run in --output (all it wrote goes first)'),
    ('--amp', 'amp', 'mixed precision (float16 on GPU, bfloat16 on CPU)'),
    ('--channels-last', 'channels_last', 'channels_last memory format'),
    ('--deterministic', 'deterministic', 'deterministic algorithms (bit-exact resume)'),
)
# keys set by the shared flags of cli.options
_SHARED_KEYS = ('output', 'data_root', 'img_size', 'device', 'num_workers')


def _default_text(key: str, cls: Type[TrainConfig]) -> str:
    """' (default: 50; the mgn recipe: 80)': the dataclass default and the recipes that change it."""
    def show(value: Any) -> str:
        return ' '.join(map(str, value)) if isinstance(value, (tuple, list)) else str(value)
    default = cls.__dataclass_fields__[key].default
    if default in (None, '', dataclasses.MISSING):
        return ''
    recipes = ''.join(f'; the {name} recipe: {show(values[key])}' for name, values in RECIPES.items() if key in values)
    return f' (default: {show(default)}{recipes})'


def add_config_arguments(parser: argparse.ArgumentParser, cls: Type[TrainConfig],
                         extra: Sequence[ValueFlag] = (), without: Sequence[str] = ()) -> None:
    """The config flags of ``train``, ``distill`` and ``transfer``; ``extra``: the command's own; ``without``:
    the keys of the shared flags the command has no use for (a transfer's steps name their datasets)."""
    parser.add_argument('--config', metavar='FILE', help='YAML or JSON config (configs/ holds the paper recipes)')
    parser.add_argument('--set', metavar='KEY=VALUE', action='append', default=[], dest='overrides',
                        help='override any config key (value parsed as YAML), repeatable')
    parser.add_argument('--print-config', action='store_true',
                        help='print the resolved config as a config file (YAML, without --resume/--overwrite) and '
                             'exit (reads no data, writes nothing)')
    add_output(parser, folder=True, help='run folder for config.yaml, last/, best/, metrics.jsonl, curves.png'
                            + _default_text('output', cls))
    add_data_root(parser, help="the dataset's folder (or a folder holding <dataset>/)")
    add_img_size(parser, help=f'training and evaluation input height and width{_default_text("img_size", cls)}')
    add_device(parser, default=None, here=False)
    add_workers(parser, dest='num_workers', from_config=True)
    for flag, key, kind, help_text in (*(f for f in _VALUE_FLAGS if f[1] not in without), *extra):
        parser.add_argument(flag, dest=key, type=kind, help=help_text + _default_text(key, cls))
    for flag, key, help_text in _SWITCHES:
        parser.add_argument(flag, dest=key, action='store_true', default=None, help=help_text)
    parser.add_argument('--no-pretrained', dest='pretrained', action='store_false', default=None,
                        help='start from random weights instead of the backbone\'s ImageNet weights')
    add_quiet(parser)


def config_from_args(cls: Type[T], args: argparse.Namespace, extra: Sequence[ValueFlag] = (),
                     values: Optional[Dict[str, Any]] = None) -> T:
    """Recipe → ``--config`` → ``--set`` → flags (and ``values`` the command derived from its own),
    resolved and checked into ``cls`` exactly as ``cls(...)`` would."""
    file_data: Dict[str, Any] = load_config(args.config) if args.config else {}
    overrides = parse_overrides(args.overrides)
    keys = [*_SHARED_KEYS, *(key for _, key, _, _ in (*_VALUE_FLAGS, *extra)), *(key for _, key, _ in _SWITCHES),
            'pretrained']
    overrides.update({key: getattr(args, key) for key in keys if getattr(args, key, None) is not None})
    overrides.update(values or {})
    if args.quiet:
        overrides['progress'] = False
    return build_config(cls, file_data, overrides, source=args.config)


def resolve_and_run(cls: Type[T], args: argparse.Namespace, runner: Callable[[T], Dict[str, Any]],
                    extra: Sequence[ValueFlag] = (), values: Optional[Dict[str, Any]] = None) -> Optional[Dict[str, Any]]:
    """The config of :func:`config_from_args` run by ``runner``; with ``--print-config`` printed as YAML
    (readable back with ``--config``; with ``--resume``, the run's saved config) instead, returning None. Under
    torchrun only rank 0 gets the result (the others None), so a command reports once, not once per process."""
    cfg = config_from_args(cls, args, extra, values)
    if args.print_config:
        print(config_to_yaml(run_config(cfg)), end='')
        return None
    result = runner(cfg)
    return result if result['main_process'] else None


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = add_command(subparsers, __name__, __doc__)
    add_config_arguments(parser, TrainConfig)
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    result = resolve_and_run(TrainConfig, args, fine_tune)
    if result:
        print(f'checkpoints: {result["output"]}/last (best: {result["output"]}/best)')
    return 0
