"""timm's own model contract (``tests/test_models.py`` of the installed timm release) on every model
this package registers.

The test file is not in timm's wheel, so it is taken from the release's source distribution
(``pip download``, cached in pytest's cache directory) and run unmodified in a subprocess whose
conftest imports ptl_timm. ``GITHUB_ACTIONS=1`` is timm's own switch for CI machines: it skips
the tests that download pretrained weights from the Hub, which this machine cannot reach.
"""
import os
import subprocess
import sys
import tarfile
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import timm

import ptl_timm  # noqa: F401
from ptl_timm.models.registry import list_models

pytestmark = pytest.mark.timm_contract


def fetch_timm_model_tests(cache_dir: Path) -> Path:
    """timm's ``tests/test_models.py`` for the installed version."""
    target = cache_dir / f'timm-{timm.__version__}-test_models.py'
    if target.exists():
        return target
    download_dir = cache_dir / 'sdist'
    why = ''
    try:
        result = subprocess.run(
            [sys.executable, '-m', 'pip', 'download', f'timm=={timm.__version__}', '--no-deps',
             '--no-binary', ':all:', '--quiet', '-d', str(download_dir)],
            capture_output=True, text=True, timeout=600)
        if result.returncode != 0:
            lines = [line for line in result.stderr.splitlines() if line.strip()]
            why = f'pip download failed: {lines[-1] if lines else f"exit status {result.returncode}"}'
    except subprocess.TimeoutExpired:
        why = 'pip download did not finish in 10 minutes'
    sdist = next(download_dir.glob(f'timm-{timm.__version__}.tar.gz'), None)
    if why or sdist is None:
        pytest.fail(
            f"timm's own model tests could not be fetched, so the contract was not checked: tests/test_models.py is "
            f"not in timm's wheel and comes from the timm {timm.__version__} source distribution on the package "
            f"index ({why or 'no sdist was downloaded'}). Run this test where the package index is reachable, or "
            f"place that file at {target}.", pytrace=False)
    with tarfile.open(sdist) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith('/tests/test_models.py'))
        target.write_bytes(tar.extractfile(member).read())
    return target


def test_unreachable_source_fails_with_a_message_saying_so(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        return subprocess.CompletedProcess(args, 1, '', 'WARNING: Retrying ...\nERROR: Could not find a version '
                                                        'that satisfies the requirement timm==1.0.31\n')
    monkeypatch.setattr(subprocess, 'run', offline)
    with pytest.raises(pytest.fail.Exception) as failure:
        fetch_timm_model_tests(tmp_path)
    message = str(failure.value)
    assert "timm's own model tests could not be fetched" in message and 'Could not find a version' in message
    assert str(tmp_path / f'timm-{timm.__version__}-test_models.py') in message


@pytest.fixture(scope='module')
def timm_test_dir(request, tmp_path_factory) -> Path:
    cache = getattr(request.config, 'cache', None)  # None under -p no:cacheprovider
    cache_dir = Path(cache.mkdir('timm_tests')) if cache else tmp_path_factory.mktemp('timm_tests')
    source = fetch_timm_model_tests(cache_dir)
    run_dir = tmp_path_factory.mktemp('timm_contract')
    (run_dir / 'test_models.py').write_bytes(source.read_bytes())
    (run_dir / 'conftest.py').write_text('import ptl_timm  # noqa: F401  registers the models\n')
    return run_dir


@pytest.mark.slow
def test_timm_test_models_passes_for_every_registered_model(timm_test_dir):
    names = list_models(include_generic=True)
    report = timm_test_dir / 'report.xml'
    env = dict(os.environ, GITHUB_ACTIONS='1')
    result = subprocess.run(
        [sys.executable, '-m', 'pytest', 'test_models.py', '-q', '-W', 'ignore', '-p', 'no:cacheprovider',
         '-k', ' or '.join(names), f'--junitxml={report}'],
        cwd=timm_test_dir, env=env, capture_output=True, text=True)
    tail = result.stdout[-4000:] + result.stderr[-2000:]
    assert result.returncode == 0, tail

    passed = {n: 0 for n in names}
    for case in ET.parse(report).getroot().iter('testcase'):
        if case.find('failure') is not None or case.find('error') is not None:
            pytest.fail(f'{case.get("name")} failed:\n{tail}')
        if case.find('skipped') is None:
            model = case.get('name').rstrip(']').split('[', 1)[-1].split('-')[-1]
            if model in passed:
                passed[model] += 1
    # every model ran through timm's forward, backward, torchscript, features and default-cfg checks
    assert all(count >= 5 for count in passed.values()), passed
