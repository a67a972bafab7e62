"""Documentation that runs: every command block of README.md, docs/recipes.md and configs/README.md, and the
usage lines of examples/, work as written, in order, on a scratch copy of the repository.

The fast tests parse every documented ``ptl-timm`` command with the real parser (no unknown flag, no
deprecated spelling, no missing argument), and check that README's models table is ``ptl-timm info``'s
output. The slow ones run the blocks, with scale-down flags appended (tiny synthetic data, one epoch, small
images, no downloads, the named architectures in miniature: the same entrypoints with a block per stage), and
real datasets that a command or config reads replaced by synthetic data in the same layout. A block marked
``<!-- docs-test: verbatim -->`` (README's "try it small") runs exactly as written, nothing appended. A block
that cannot run here says why in a ``<!-- docs-test: skip (reason) -->`` line right above it; ``text`` blocks
show output and are not run.
"""
import contextlib
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import List, NamedTuple, Optional, Tuple

import pytest
import yaml
from PIL import Image

from ptl_timm.cli import build_parser
from ptl_timm.data.synth import LAYOUTS, SYNTH_DOMAINS, generate_synthetic

from engine_support import MINIATURE

REPO = Path(__file__).resolve().parent.parent
SKIP = re.compile(r'<!-- docs-test: skip \((.+)\) -->')
VERBATIM = '<!-- docs-test: verbatim -->'
TINY_IMG = ['96', '32']
TRAINING = ['--epochs', '1', '--no-pretrained', '--img-size', *TINY_IMG, '--batch-size', '8', '--workers', '0',
            '--quiet', '--set', 'eval_batch_size=32']
EXTRACTING = ['--batch-size', '32', '--workers', '0', '--quiet']
TRAINING_COMMANDS = ('train', 'distill', 'transfer')
# appended to each documented command: last flag wins, so the command keeps its meaning at tiny scale
SCALE_DOWN = {
    'synth': ['--num-ids', '12', '--images-per-id', '4', '--num-cams', '2', '--img-size', *TINY_IMG, '--quiet'],
    'train': TRAINING, 'distill': TRAINING, 'transfer': TRAINING,
    'eval': EXTRACTING, 'extract': EXTRACTING, 'search': EXTRACTING,
    'export-imagefolder': ['--quiet'], 'publish': ['--quiet'], 'export': ['--quiet'],
}


class Block(NamedTuple):
    language: str
    lines: List[str]
    skip: Optional[str]  # why it is not run, from the line above it
    verbatim: bool = False  # run as written, without scale-down flags


def blocks(name: str) -> List[Block]:
    """The fenced blocks of a markdown file."""
    found, current, previous = [], None, ''
    for line in (REPO / name).read_text().splitlines():
        if line.startswith('```') and current is None:
            skip = SKIP.search(previous)
            current = Block(line[3:].strip(), [], skip.group(1) if skip else None, previous.strip() == VERBATIM)
        elif line.startswith('```'):
            found.append(current)
            current = None
        elif current is not None:
            current.lines.append(line)
        if line.strip():
            previous = line
    return found


def shell_commands(block: Block) -> List[str]:
    """The commands of a shell block, continuation lines (``\\``) joined."""
    if block.language not in ('', 'bash'):
        return []
    return [c.strip() for c in '\n'.join(block.lines).replace('\\\n', ' ').splitlines() if c.strip()]


# the user's guide and its recipes page: their blocks run in this order, on one folder
RUN_IN_ORDER = ('README.md', 'docs/recipes.md')
DOCUMENTED = RUN_IN_ORDER + ('configs/README.md',)


def documented_commands() -> List[str]:
    return [c for name in DOCUMENTED for b in blocks(name) if not b.skip for c in shell_commands(b)]


def example_commands() -> List[str]:
    """The usage lines of examples/*.py docstrings (finetune before retrieval, which reads its output)."""
    lines = []
    for path in sorted((REPO / 'examples').glob('*.py')):
        lines += [line.split('#')[0].strip() for line in path.read_text().split('"""')[1].splitlines()
                  if line.strip().startswith('python examples/')]
    return lines


def _cli_args(tokens: List[str]) -> Optional[List[str]]:
    """The ``ptl-timm`` arguments of a command line (direct or under torchrun), or None."""
    if tokens[0] == 'ptl-timm':
        return tokens[1:]
    if tokens[0] == 'torchrun' and '-m' in tokens and tokens[tokens.index('-m') + 1] == 'ptl_timm':
        return tokens[tokens.index('-m') + 2:]
    return None


def test_documented_blocks_are_run_or_say_why_they_are_not():
    for name in DOCUMENTED:
        for block in blocks(name):
            assert block.language in ('', 'bash', 'python', 'bibtex', 'text'), (name, block.language)
            if block.language in ('', 'bash') and not block.skip:
                for command in shell_commands(block):
                    assert shlex.split(command)[0] in ('ptl-timm', 'torchrun', 'python'), command
    assert len(documented_commands()) >= 15 and len(example_commands()) >= 4


@pytest.mark.parametrize('command', documented_commands() + [
    c for name in DOCUMENTED for b in blocks(name) if b.skip for c in shell_commands(b)] + [
    c for b in blocks('docs/deploy.md') for c in shell_commands(b)])
def test_documented_ptl_timm_commands_parse_without_deprecated_spellings(command):
    args = _cli_args(shlex.split(command))
    if args is None:
        return
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            build_parser().parse_args(args)
        except SystemExit as e:
            pytest.fail(f'{command!r} does not parse: {err.getvalue()[-500:]} (exit {e.code})')
    assert 'deprecated' not in err.getvalue(), f'{command!r}: {err.getvalue()}'


def _config_datasets(config: Path) -> List[str]:
    """The dataset names a config file reads."""
    data = yaml.safe_load(config.read_text())
    names = []

    def collect(value) -> None:
        if isinstance(value, str):
            names.append(value)
        elif isinstance(value, list):
            for v in value:
                collect(v)
        elif isinstance(value, dict):
            collect(value.get('name', value.get('dataset')))
    for section in [data] + list(data.get('steps') or []) + [data.get('distill') or {}]:
        collect(section.get('dataset'))
        collect(section.get('test_datasets'))
    return [n for n in names if n in LAYOUTS]


def _read_datasets(work: Path, tokens: List[str]) -> List[str]:
    """The real datasets a command reads from data/<name>: its config's, --data-root data/<name>'s, and a
    transfer's --steps under --data-root data."""
    if '--config' in tokens:
        return _config_datasets(work / tokens[tokens.index('--config') + 1])
    root = tokens[tokens.index('--data-root') + 1] if '--data-root' in tokens else ''
    if tokens[0] == 'transfer' and root == 'data':
        return [t for t in tokens[tokens.index('--steps') + 1:] if t in LAYOUTS]
    name = root[len('data/'):] if root.startswith('data/') else ''
    return [name] if name in LAYOUTS else []


def _synthetic_stand_ins(work: Path, tokens: List[str]) -> None:
    """Real datasets a command reads, as tiny synthetic data in their layout under data/<name>."""
    for index, name in enumerate(_read_datasets(work, tokens)):
        if not (work / 'data' / name).exists():
            # 12 identities: 24 query and gallery images, enough for re-ranking's default k1=20
            generate_synthetic(work / 'data', SYNTH_DOMAINS[index % len(SYNTH_DOMAINS)], layout=name, name=name,
                               num_ids=12, images_per_id=4, num_cams=2, img_size=[int(s) for s in TINY_IMG])


def _miniature(args: List[str]) -> List[str]:
    """``--set model_args=...`` of the trained ``--model`` in miniature (the config's model is left alone:
    test_engine runs every config in miniature)."""
    if args[0] not in TRAINING_COMMANDS or '--model' not in args or args[args.index('--model') + 1] not in MINIATURE:
        return []
    model_args = yaml.safe_dump(MINIATURE[args[args.index('--model') + 1]], default_flow_style=True).strip()
    return ['--set', f'model_args={model_args}']


# One interpreter runs a sequence of direct ``ptl-timm`` commands (through the console script's own function),
# Python blocks and example scripts (as ``python -c`` and ``python examples/X.py`` would run them): importing torch and timm once rather than
# once per command takes minutes off the documentation tests.
DRIVER = """
import json, runpy, shlex, sys
from ptl_timm_launcher import main
for argv in json.loads(sys.argv[1]):
    print('$ ' + shlex.join(argv), file=sys.stderr, flush=True)
    if argv[0] == 'ptl-timm':
        code = main(argv[1:])
    elif argv[0] == '-c':
        exec(compile(argv[1], '<documented Python block>', 'exec'), {'__name__': '__main__'})
        code = 0
    else:
        sys.argv = argv
        runpy.run_path(argv[0], run_name='__main__')
        code = 0
    if code:
        sys.exit(f'exit status {code}: ' + shlex.join(argv))
"""


def _argv(work: Path, command: str, verbatim: bool = False) -> Tuple[bool, List[str]]:
    """``(True, argv)`` for what the driver runs (``ptl-timm ARGS``, ``-c CODE``, ``examples/X.py ARGS``), else
    ``(False, the subprocess's argv)``; the real datasets a command reads are made first, as synthetic stand-ins."""
    tokens = shlex.split(command)
    args = _cli_args(tokens)
    if args is not None:
        _synthetic_stand_ins(work, args)
        args = args + ([] if verbatim else SCALE_DOWN.get(args[0], []) + _miniature(args))
        if tokens[0] == 'ptl-timm':
            return True, ['ptl-timm'] + args
        return False, [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '1', '-m', 'ptl_timm'] + args
    if tokens[:2] == ['python', '-c']:
        return True, tokens[1:]
    assert tokens[0] == 'python' and tokens[1].startswith('examples/'), command
    return True, tokens[1:] + ['--num-ids', '6', '--epochs', '1'] + (
        [] if '--backbone' in tokens else ['--backbone', 'test_resnet'])


def _subprocess(work: Path, argv: List[str], what: str) -> None:
    env = dict(os.environ, HF_HUB_OFFLINE='1', PTL_TIMM_DEBUG='1', PYTHONPATH=str(REPO))
    result = subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f'{what}\n(run as {argv})\n{result.stdout[-1500:]}\n{result.stderr[-3000:]}'


def _run(work: Path, commands: List[Tuple[str, bool]]) -> None:
    """Run ``(command, verbatim)`` in order in ``work``, consecutive ones the driver runs in one interpreter."""
    batch: List[List[str]] = []

    def flush() -> None:
        if batch:
            _subprocess(work, [sys.executable, '-c', DRIVER, json.dumps(batch)], '\n'.join(map(shlex.join, batch)))
            batch.clear()
    for command, verbatim in commands:
        driven, argv = _argv(work, command, verbatim)
        if driven:
            batch.append(argv)
            continue
        flush()
        _subprocess(work, argv, command)
    flush()


@pytest.fixture
def work(tmp_path) -> Path:
    """A scratch copy of what the documentation's commands read from the repository."""
    for name in ('configs', 'examples'):
        shutil.copytree(REPO / name, tmp_path / name)
    shutil.copy(REPO / 'MODEL_CARD.md', tmp_path / 'MODEL_CARD.md')
    return tmp_path


@pytest.mark.slow
def test_readme_command_blocks_run_as_written_in_order(work):
    """README's blocks, then its recipes page's. configs/README.md's commands are only parsed here: they train
    the paper's DenseNet-161 and MGN configs, which ``test_engine.py::test_reproduction_config_runs_one_tiny_step``
    already runs, each at miniature width."""
    commands = []
    for block in (block for name in RUN_IN_ORDER for block in blocks(name)):
        if block.skip:
            continue
        if block.language == 'python':
            commands.append((shlex.join(['python', '-c', '\n'.join(block.lines)]), False))
        commands += [(command, block.verbatim) for command in shell_commands(block)]
    _run(work, commands)


# what each example leaves in the folder its usage line names
EXAMPLE_OUTPUTS = ('runs/distill/student/last/model.safetensors', 'runs/finetune/ptl/last/model.safetensors',
                   'runs/retrieval/ranked.png', 'runs/transfer/runs/transfer.json')


@pytest.mark.slow
def test_example_usage_lines_run_as_written_in_order(work):
    _run(work, [(command, False) for command in example_commands()])
    for output in EXAMPLE_OUTPUTS:
        assert (work / output).is_file(), output
    with Image.open(work / 'runs/retrieval/ranked.png') as picture:
        assert picture.format == 'PNG'
    assert len(json.loads((work / 'runs/transfer/runs/transfer.json').read_text())['rows']) == 2


def _between(name: str, marker: str) -> List[str]:
    lines = (REPO / name).read_text().splitlines()
    return lines[lines.index(f'<!-- {marker}:begin -->') + 1:lines.index(f'<!-- {marker}:end -->')]


def test_readme_models_table_is_what_ptl_timm_info_prints(capsys):
    from ptl_timm.cli import main
    assert main(['info']) == 0
    table = capsys.readouterr().out.splitlines()
    assert _between('README.md', 'models') == table
    assert {'`bot_resnet50`', '`ptl_bot_resnet50`'} <= {line.split('|')[1].strip() for line in table}


def test_the_try_it_small_block_runs_verbatim_and_starts_from_random_weights_on_purpose():
    small = [b for b in blocks('README.md') if b.verbatim]
    assert len(small) == 1 and not small[0].skip
    commands = shell_commands(small[0])
    assert [shlex.split(c)[1] for c in commands][:2] == ['synth', 'train']
    assert '--no-pretrained' in commands[1] and '--epochs' in commands[1]


def test_readme_verdict_is_five_lines_that_link_to_the_tables_and_no_tracker_numbers():
    text = (REPO / 'README.md').read_text()
    section = text[text.index('## Does PTL work?'):].split('\n## ')[0]
    prose = [line for line in section.splitlines()[1:] if line.strip()]
    assert len(prose) <= 5 and '](BENCHMARKS.md#does-ptl-work-what-the-numbers-support)' in section
    assert '## Does PTL work? What the numbers support' in (REPO / 'BENCHMARKS.md').read_text()
    assert not re.search(r'\bissues? \d', text, re.IGNORECASE)
    quickstart = _between('README.md', 'quickstart')
    assert len(shell_commands(next(b for b in blocks('README.md') if b.lines == quickstart[2:-1]))) == 2

