"""Shared reporting for the benchmarks: one BENCHMARKS.md, one section per benchmark.

Each benchmark owns the text between ``<!-- begin:NAME -->`` and ``<!-- end:NAME -->`` and rewrites
only that, so benchmarks can be re-run one at a time without losing the others' tables. Every
section records the command, the commit and the machine it was measured on.

Only the documented full run of a benchmark (no setting changed) updates the tracked BENCHMARKS.md.
``--quick`` (CI size) or any other changed setting writes to a scratch report instead
(:func:`report_path`), so CI-size numbers never overwrite measured ones; ``--report FILE`` names it.
"""
import argparse
import os
import platform
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Sequence

from ptl_timm.utils import atomic_write

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS_MD = ROOT / 'BENCHMARKS.md'
HEADER = (
    '# Benchmarks\n\n'
    'Measured with `bash benchmarks/run_all.sh` (or one script at a time; each rewrites only its own '
    'section). Speed targets are ratios measured in one run on one machine, never absolute timings.\n'
)


# arguments that change where or how quietly a benchmark runs, not what it measures (--reuse and
# --no-train only decide which runs of the same setting are made now: the documented full command of
# the state benchmark is ``--reuse``; its --setting picks a full setting with a report section of its own)
_NEUTRAL_ARGS = ('help', 'report', 'quiet', 'work', 'out', 'no_report', 'child', 'reuse', 'no_train', 'setting')


def scratch_dir() -> Path:
    """Where runs that are not the full benchmark write their report and results."""
    return Path(tempfile.gettempdir()) / 'ptl_timm-benchmarks'


def add_report_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--report', metavar='FILE',
                        help='markdown report whose section this run rewrites (default: BENCHMARKS.md for the full '
                             'run; a scratch file for --quick or changed settings)')


def _same(value: Any, default: Any) -> bool:
    if isinstance(value, (list, tuple)) and isinstance(default, (list, tuple)):
        return list(value) == list(default)
    return value == default


def report_path(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Path:
    """``--report`` if given; BENCHMARKS.md when every setting is the parser's default (the full run);
    else a scratch file (``--quick`` and other reduced runs never touch the tracked numbers)."""
    if getattr(args, 'report', None):
        return Path(args.report)
    changed = [a.dest for a in parser._actions
               if a.dest not in _NEUTRAL_ARGS and not _same(getattr(args, a.dest, a.default), a.default)]
    return scratch_dir() / 'BENCHMARKS.md' if changed else BENCHMARKS_MD


def git_commit() -> str:
    try:
        out = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(['git', 'status', '--porcelain', '--untracked-files=no'], cwd=ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
        return out + ('+dirty' if dirty else '')
    except (OSError, subprocess.CalledProcessError):
        return 'unknown'


def machine() -> str:
    import torch
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path('/proc/cpuinfo').read_text().splitlines():
            if line.startswith('model name'):
                cpu = line.split(':', 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU'
    return (f'{cpu}, {os.cpu_count()} logical cores, torch {torch.__version__} '
            f'({torch.get_num_threads()} threads), {gpu}, Python {platform.python_version()}')


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '|'.join('---' for _ in header) + '|']
    lines += ['| ' + ' | '.join(str(c) for c in row) + ' |' for row in rows]
    return '\n'.join(lines) + '\n'


def write_section(name: str, title: str, body: str, command: str = '', path: Path = BENCHMARKS_MD) -> None:
    """Replace (or append) the section ``name`` of the report ``path`` (see :func:`report_path`) with ``body``."""
    command = command or 'python ' + ' '.join([os.path.relpath(sys.argv[0], ROOT)] + sys.argv[1:])
    section = (f'<!-- begin:{name} -->\n## {title}\n\n'
               f'Command: `{command}`  \nCommit: `{git_commit()}`  \nMachine: {machine()}\n\n'
               f'{body.rstrip()}\n<!-- end:{name} -->\n')
    text = path.read_text() if path.exists() else HEADER
    pattern = re.compile(rf'<!-- begin:{re.escape(name)} -->.*?<!-- end:{re.escape(name)} -->\n?', re.S)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip() + '\n\n' + section
    with atomic_write(path, 'w') as f:
        f.write(text)
    if path != BENCHMARKS_MD:
        print(f'report section {name!r} written to {path} (not BENCHMARKS.md: not the full run)', file=sys.stderr)
