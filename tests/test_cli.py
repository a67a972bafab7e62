"""One command-line vocabulary: one spelling, meaning and default per concept in every sub-command,
defaults and an example in every --help."""
import argparse
import contextlib
import io
import os
import shlex

import pytest

from ptl_timm.cli import build_parser
from ptl_timm.cli.options import add_command
from ptl_timm.utils import default_workers

PARSER = build_parser()


def _commands(parser: argparse.ArgumentParser, prefix: tuple = ()):
    """Every sub-command, nested ones included ('index build'), with its parser."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield ' '.join((*prefix, name)), sub
                yield from _commands(sub, (*prefix, name))


COMMANDS = dict(_commands(PARSER))
# the concepts shared by several sub-commands: flag → the name its value has in the namespace
SHARED = {'--output': 'output', '--data-root': 'data_root', '--img-size': 'img_size', '--device': 'device',
          '--batch-size': 'batch_size', '--model': 'model', '--quiet': 'quiet', '--dataset': 'dataset'}
OLD_SPELLINGS = ('--out', '--root', '--input-size')


def _visible(parser: argparse.ArgumentParser):
    return [a for a in parser._actions if a.help != argparse.SUPPRESS
            and not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction))]


@pytest.mark.parametrize('name', sorted(COMMANDS))
def test_every_command_has_an_example_that_parses(name):
    parser = COMMANDS[name]
    assert parser.epilog and parser.epilog.startswith('example:\n  ptl-timm '), name
    example = shlex.split(parser.epilog.split('\n', 1)[1].strip())
    assert example[1:1 + len(name.split())] == name.split()
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        PARSER.parse_args(example[1:])
    assert 'deprecated' not in err.getvalue()


@pytest.mark.parametrize('name', sorted(COMMANDS))
def test_every_help_shows_the_defaults(name):
    text = COMMANDS[name].format_help()
    for action in _visible(COMMANDS[name]):
        default = action.default
        if action.option_strings and default not in (None, False, [], argparse.SUPPRESS) and action.nargs != 0:
            assert 'default' in (action.help or '') or '(default: ' in text, (name, action.option_strings)
    assert '--debug' in text


@pytest.mark.parametrize('name', sorted(COMMANDS))
def test_shared_concepts_have_one_spelling_and_no_positionals(name):
    parser = COMMANDS[name]
    visible = {s for a in _visible(parser) for s in a.option_strings}
    assert not visible & set(OLD_SPELLINGS), f'{name} shows an old spelling'
    assert not [a.dest for a in _visible(parser) if not a.option_strings], f'{name} has positional arguments'
    for action in _visible(parser):
        for flag in action.option_strings:
            if flag in SHARED and flag != '--workers':
                assert action.dest in (SHARED[flag], 'num_workers'), (name, flag, action.dest)


def test_workers_and_device_have_one_default_everywhere():
    from ptl_timm.engine import TrainConfig
    for name, parser in COMMANDS.items():
        for action in _visible(parser):
            if '--workers' in action.option_strings:
                assert action.default in (default_workers(), None), name  # None: the config's, the same rule
            if '--device' in action.option_strings:
                assert action.default in ('auto', None), name
    assert TrainConfig().num_workers == default_workers() and TrainConfig().device == 'auto'
    assert default_workers() <= (os.cpu_count() or 1)


def test_a_command_reads_its_help_from_its_module_docstring():
    subparsers = argparse.ArgumentParser(prog='ptl-timm').add_subparsers()
    doc = """Export a model to ONNX.

    What the graph takes
    and returns.

    Example: ptl-timm export-imagefolder --model m
        --output x.onnx
    """
    parser = add_command(subparsers, 'ptl_timm.cli.export_imagefolder', doc)
    assert parser.prog.endswith('export-imagefolder')
    assert subparsers._choices_actions[0].help == 'export a model to ONNX'
    assert parser.description == 'What the graph takes and returns.'
    assert parser.epilog == 'example:\n  ptl-timm export-imagefolder --model m --output x.onnx'
    with pytest.raises(ValueError, match='Example'):
        add_command(subparsers, 'ptl_timm.cli.y', 'Y.\n\nNo example here.')


def test_switches_do_not_show_a_default():
    """A store_false switch's default is True: "(default: True)" would read as if it were on."""
    text = COMMANDS['export'].format_help()
    assert '(default: True)' not in text and '--raw-embedding' in text


@pytest.mark.slow  # a fresh interpreter
def test_python_dash_m_runs_the_command_line_and_passes_on_its_exit_status():
    """``python -m ptl_timm`` (what torchrun runs) is the same program as ``ptl-timm``."""
    import subprocess
    import sys
    refused = subprocess.run([sys.executable, '-m', 'ptl_timm', 'train', '--set', 'epochs=0', '--print-config'],
                             capture_output=True, text=True)
    # a user's mistake through a real interpreter: one line and exit status 2 (test_errors checks a bug's traceback)
    assert refused.returncode == 2 and refused.stdout == ''
    assert refused.stderr == 'ptl-timm train: error: overrides: epochs must be >= 1, got 0\n'


def test_an_unknown_flag_gets_the_subcommands_error_and_the_closest_flag(capsys):
    """One line (the error contract), from the sub-command's parser: its name, the closest flag it has,
    and where its usage is."""
    from ptl_timm.cli import main
    with pytest.raises(SystemExit) as exit_info:
        main(['eval', '--features', 'f.safetensors', '--rernk'])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert err == ('ptl-timm eval: error: unrecognized arguments: --rernk (--rernk: did you mean --rerank?) '
                   '(see ptl-timm eval --help)\n')


def test_version_is_answered_without_importing_torch():
    """The console script's ``--version`` reads the installed metadata: no ``import ptl_timm``, no torch."""
    import subprocess
    import sys
    import time
    from ptl_timm import __version__
    code = ('import sys, ptl_timm_launcher; code = ptl_timm_launcher.main(["--version"]); '
            'print(sorted(m for m in ("torch", "timm", "ptl_timm") if m in sys.modules)); sys.exit(code)')
    start = time.monotonic()
    shown = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True)
    took = time.monotonic() - start
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.splitlines() == [f'ptl_timm {__version__}', '[]']
    assert took < 5, took  # about 0.1 s; a loaded CI machine gets slack, importing torch alone takes seconds


def test_the_console_script_runs_every_other_command_line_through_the_cli(capsys):
    import ptl_timm_launcher
    with pytest.raises(SystemExit) as exit_info:
        ptl_timm_launcher.main(['info', '--bogus'])
    assert exit_info.value.code == 2
    assert 'ptl-timm info: error: unrecognized arguments: --bogus' in capsys.readouterr().err


@pytest.mark.parametrize('main_process, printed', [(True, 1), (False, 0)])
def test_a_training_command_reports_once_under_torchrun_from_rank_0(monkeypatch, capsys, main_process, printed):
    """Every rank returns from training; only the one the engine marks as main prints the checkpoints line."""
    import ptl_timm.cli.train as train
    from ptl_timm.cli import main
    monkeypatch.setattr(train, 'fine_tune', lambda cfg: dict(output=cfg.output, main_process=main_process))
    assert main(['train', '--output', 'runs/x']) == 0
    assert capsys.readouterr().out.count('checkpoints: runs/x/last') == printed


def test_python_dash_m_answers_version_like_the_console_script(capsys):
    """``python -m ptl_timm --version`` runs ``ptl_timm.cli.main``, which answers as ``ptl-timm --version``."""
    from ptl_timm.cli import main
    from ptl_timm.version import __version__
    with pytest.raises(SystemExit) as exit_info:
        main(['--version'])
    assert exit_info.value.code == 0 and capsys.readouterr().out == f'ptl_timm {__version__}\n'
