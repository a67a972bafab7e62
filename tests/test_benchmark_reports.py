"""Benchmarks: only the documented full run updates the tracked BENCHMARKS.md; --quick (CI size) and
any reduced setting write a scratch report."""
import argparse
import hashlib
import os
import subprocess
import sys

import pytest

from benchmarks.report import BENCHMARKS_MD, ROOT, add_report_argument, report_path, scratch_dir, write_section

SCRIPTS = sorted(p.stem for p in (ROOT / 'benchmarks').glob('*.py') if p.stem not in ('__init__', 'report'))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    parser.add_argument('--quick', action='store_true')
    parser.add_argument('--num-ids', type=int, default=200)
    parser.add_argument('--img-size', type=int, nargs=2, default=(128, 64))
    parser.add_argument('--quiet', action='store_true')
    add_report_argument(parser)
    return parser


def test_only_the_full_run_reports_to_benchmarks_md(tmp_path):
    parser = _parser()
    assert report_path(parser, parser.parse_args([])) == BENCHMARKS_MD
    assert report_path(parser, parser.parse_args(['--quiet', '--img-size', '128', '64'])) == BENCHMARKS_MD
    for reduced in (['--quick'], ['--num-ids', '10'], ['--img-size', '64', '32']):
        path = report_path(parser, parser.parse_args(reduced))
        assert path == scratch_dir() / 'BENCHMARKS.md' and ROOT not in path.parents
    assert report_path(parser, parser.parse_args(['--quick', '--report', str(tmp_path / 'r.md')])) == tmp_path / 'r.md'


def test_write_section_to_another_report_leaves_benchmarks_md_alone(tmp_path):
    before = BENCHMARKS_MD.read_bytes() if BENCHMARKS_MD.exists() else b''
    write_section('x', 'X', 'body', command='python -m benchmarks.x --quick', path=tmp_path / 'r.md')
    assert '<!-- begin:x -->' in (tmp_path / 'r.md').read_text()
    assert (BENCHMARKS_MD.read_bytes() if BENCHMARKS_MD.exists() else b'') == before


@pytest.mark.slow
def test_a_reduced_benchmark_run_writes_its_scratch_report_not_benchmarks_md(tmp_path):
    digest = hashlib.sha256(BENCHMARKS_MD.read_bytes()).hexdigest()
    env = dict(os.environ, TMPDIR=str(tmp_path))
    run = subprocess.run([sys.executable, '-m', 'benchmarks.synth_speed', '--num-ids', '8', '--images-per-id', '4',
                          '--img-size', '16', '8', '--quiet'], cwd=ROOT, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert '<!-- begin:synth_speed -->' in (tmp_path / 'ptl_timm-benchmarks' / 'BENCHMARKS.md').read_text()
    assert hashlib.sha256(BENCHMARKS_MD.read_bytes()).hexdigest() == digest


def test_every_benchmark_script_decides_where_its_report_goes():
    """Each script that writes a section passes ``path=`` (report_path, or its own quick rule)."""
    for name in SCRIPTS:
        source = (ROOT / 'benchmarks' / f'{name}.py').read_text()
        if 'write_section(' in source:
            call = source[source.index('write_section('):]
            call = call[:call.index(')\n')]
            assert 'path=' in call or 'args.quick' in source, name


def test_reusing_finished_runs_of_the_full_setting_still_reports_to_benchmarks_md():
    """The state benchmark's documented command is ``--reuse``: keeping finished runs of the same
    setting (and ``--no-train``) does not change what is measured; ``--quick`` with them still does."""
    parser = _parser()
    parser.add_argument('--reuse', action='store_true')
    parser.add_argument('--no-train', action='store_true')
    assert report_path(parser, parser.parse_args(['--reuse', '--no-train'])) == BENCHMARKS_MD
    assert report_path(parser, parser.parse_args(['--reuse', '--quick'])) == scratch_dir() / 'BENCHMARKS.md'
