"""``ptl-timm`` command line: a thin layer over the library.

Each sub-command lives in its own module of this package and exposes
``add_parser(subparsers) -> argparse.ArgumentParser`` that sets ``func=run`` on its parser.
``run(args) -> int`` returns the exit status. Shared flags come from :mod:`ptl_timm.cli.options`.

The error contract (:mod:`ptl_timm.errors`): a :class:`~ptl_timm.errors.PTLError` (a problem the user
can fix) is printed as one ``error:`` line with exit status 2; any other exception is a bug and keeps
its traceback (exit status 1). ``--debug`` or ``PTL_TIMM_DEBUG=1`` prints the traceback of user errors too.
"""
import argparse
import difflib
import importlib
import os
import sys
import traceback
from typing import List, Optional

from ptl_timm.errors import DEBUG_ENV, PTLError
from .options import ArgumentParser, add_debug

# Sub-command modules, in the order ``ptl-timm --help`` lists them.
COMMAND_MODULES = (
    'info',
    'actmap',
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
    'calibrate',
    'verify',
    'index',
)


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog='ptl-timm',
        description='Progressive Transfer Learning for person re-identification on timm backbones.',
    )
    from ptl_timm.version import __version__
    parser.add_argument('--version', action='version', version=f'ptl_timm {__version__}')
    add_debug(parser)
    subparsers = parser.add_subparsers(dest='command', metavar='COMMAND')
    subparsers.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(f'{__name__}.{name}').add_parser(subparsers)
    return parser


def _refuse_unknown(parser: argparse.ArgumentParser, command: str, unknown: List[str]) -> None:
    """Exit 2 with the sub-command's usage (not the top level's) and the closest flag it has."""
    subparser = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    flags = [s for a in subparser._actions if a.help != argparse.SUPPRESS for s in a.option_strings]
    hints = []
    for arg in unknown:
        close = difflib.get_close_matches(arg.split('=', 1)[0], flags, n=1) if arg.startswith('-') else []
        if close:
            hints.append(f'{arg}: did you mean {close[0]}?')
    subparser.error(f'unrecognized arguments: {" ".join(unknown)}' + (f' ({"; ".join(hints)})' if hints else ''))


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        _refuse_unknown(parser, args.command, unknown)
    try:
        return int(args.func(args) or 0)
    except PTLError as e:
        if getattr(args, 'debug', False) or os.environ.get(DEBUG_ENV, '') not in ('', '0'):
            traceback.print_exc()
        print(f'ptl-timm {args.command}: error: {e}', file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f'ptl-timm {args.command}: interrupted', file=sys.stderr)
        return 130
