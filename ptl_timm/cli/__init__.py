"""``ptl-timm`` command line: a thin layer over the library.

Each sub-command lives in its own module of this package and exposes
``add_parser(subparsers) -> argparse.ArgumentParser`` that sets ``func=run`` on its parser.
``run(args) -> int`` returns the exit status. Errors a user can fix (bad paths, bad configs,
wrong checkpoints) are raised as ``ValueError``/``FileNotFoundError``/``KeyError`` subclasses by the
library; here they become one clear ``error:`` line and exit status 2, never a traceback.
"""
import argparse
import importlib
import sys
from typing import List, Optional

# Sub-command modules, in the order ``ptl-timm --help`` lists them.
COMMAND_MODULES = (
    'info',
    'publish',
    'export',
    'synth',
    'demo',
    'train',
    'distill',
    'transfer',
    'export_imagefolder',
    'extract',
    'eval',
    'search',
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='ptl-timm',
        description='Progressive Transfer Learning for person re-identification on timm backbones.',
    )
    from ptl_timm.version import __version__
    parser.add_argument('--version', action='version', version=f'ptl_timm {__version__}')
    subparsers = parser.add_subparsers(dest='command', metavar='COMMAND')
    subparsers.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(f'{__name__}.{name}').add_parser(subparsers)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, NotADirectoryError, KeyError, RuntimeError) as e:
        message = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f'ptl-timm {args.command}: error: {message}', file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f'ptl-timm {args.command}: interrupted', file=sys.stderr)
        return 130
