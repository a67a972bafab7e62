"""The installed package stands on its own: a wheel built from the source carries its package data (the
weights manifest, the model card template) and, installed in a fresh environment, trains, publishes
with its packaged card template, evaluates and builds models."""
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import zipfile
from pathlib import Path

import pytest

from ptl_timm.data.synth import SYNTH_DOMAINS, generate_synthetic

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / 'ptl_timm'
# what a build reads besides the package (the launcher is the console script's entry)
METADATA = ('setup.py', 'setup.cfg', 'MANIFEST.in', 'README.md', 'MODEL_CARD.md', 'ptl_timm_launcher.py')
PACKAGE_DATA = ('weights_manifest.json', 'hub/model_card_template.md')
TINY = '{backbone: test_resnet, embed_dim: 64, classifier_dims: [32, 16]}'


def _run(*command, cwd: Path) -> str:
    """Run ``command`` without this checkout on the path (no PYTHONPATH), offline; returns stdout."""
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
    env['HF_HUB_OFFLINE'] = '1'
    done = subprocess.run([str(c) for c in command], cwd=cwd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, f'{command}: {done.stderr[-3000:]}'
    return done.stdout


@pytest.fixture(scope='module')
def wheel(tmp_path_factory) -> Path:
    """A wheel built from a copy of the sources (the build writes build/ and *.egg-info beside them)."""
    if not (REPO / 'setup.cfg').is_file():
        pytest.skip('not a source checkout')
    root = tmp_path_factory.mktemp('wheel')
    shutil.copytree(PACKAGE, root / 'source' / 'ptl_timm', ignore=shutil.ignore_patterns('__pycache__'))
    for name in METADATA:
        shutil.copy2(REPO / name, root / 'source' / name)
    _run(sys.executable, '-m', 'pip', 'wheel', '--no-deps', '--no-build-isolation', '--no-index', '--quiet', '-w',
         root / 'wheels', root / 'source', cwd=root)
    return next((root / 'wheels').glob('ptl_timm-*.whl'))


@pytest.mark.slow
def test_wheel_ships_the_package_data_byte_identical(wheel):
    with zipfile.ZipFile(wheel) as archive:
        for name in PACKAGE_DATA:
            assert archive.read(f'ptl_timm/{name}') == (PACKAGE / name).read_bytes(), name
        assert 'ptl_timm_launcher.py' in archive.namelist()


@pytest.mark.slow
def test_wheel_in_a_fresh_venv_trains_publishes_without_a_card_flag_evaluates_and_creates_models(wheel, tmp_path):
    venv = tmp_path / 'venv'
    _run(sys.executable, '-m', 'venv', '--without-pip', venv, cwd=tmp_path)
    python = venv / 'bin' / 'python'
    site_packages = Path(_run(python, '-c', 'import sysconfig; print(sysconfig.get_paths()["purelib"])',
                              cwd=tmp_path).strip())
    # torch, timm, pip, ... from this environment as a plain path entry: its .pth files (an editable
    # ptl_timm) are not read, so ptl_timm can only come from the wheel
    (site_packages / 'dependencies.pth').write_text(sysconfig.get_paths()['purelib'] + '\n')
    _run(python, '-m', 'pip', 'install', '--no-deps', '--no-index', '--quiet', wheel, cwd=tmp_path)
    ptl_timm = venv / 'bin' / 'ptl-timm'

    # the data from this checkout's generator: the installed commands under test are the ones below
    generate_synthetic(tmp_path, SYNTH_DOMAINS[0], layout='market1501', num_ids=8, images_per_id=4, num_cams=2,
                       img_size=(64, 32), name='data')
    _run(ptl_timm, 'train', '--model', 'ptl_net', '--set', f'model_args={TINY}', '--no-pretrained', '--dataset',
         'market1501', '--data-root', 'data', '--img-size', '64', '32', '--epochs', '1', '--batch-size', '8',
         '--workers', '0', '--device', 'cpu', '--quiet', '--output', 'run', cwd=tmp_path)
    # the console script ran above; the other commands run through its function in one interpreter (torch's
    # import is the cost of each), then timm's create_model: every module comes from the wheel
    code = textwrap.dedent("""
        from ptl_timm_launcher import main
        def run(*args):
            code = main(list(args))
            print('exit', code, flush=True)
        run('publish', '--model', 'run/last', '--output', 'hub', '--quiet')
        print('---', flush=True)
        run('eval', '--model', 'hub', '--dataset', 'market1501', '--data-root', 'data', '--device', 'cpu',
            '--workers', '0')
        import timm, ptl_timm
        model = timm.create_model('ptl_resnet50', pretrained=False)
        print('---', ptl_timm.__file__, type(model).__name__)
    """)
    published, evaluated, created = _run(python, '-c', code, cwd=tmp_path).split('---')
    assert 'wrote hub' in published and published.strip().endswith('exit 0')
    readme = (tmp_path / 'hub' / 'README.md').read_text()
    assert '## Architecture' in readme and '## Status of trained weights' not in readme, 'the packaged card'
    assert 'mAP' in evaluated and evaluated.strip().endswith('exit 0')
    assert created.split()[0].startswith(str(site_packages / 'ptl_timm')) and created.split()[1] == 'ReIDNet'
