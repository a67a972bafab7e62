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
    result = subprocess.run(
        [sys.executable, '-m', 'pip', 'download', f'timm=={timm.__version__}', '--no-deps',
         '--no-binary', ':all:', '--quiet', '-d', str(download_dir)],
        capture_output=True, text=True)
    assert result.returncode == 0, f'could not download the timm {timm.__version__} sdist:\n{result.stderr}'
    sdist = next(download_dir.glob('timm-*.tar.gz'))
    with tarfile.open(sdist) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith('/tests/test_models.py'))
        target.write_bytes(tar.extractfile(member).read())
    return target


@pytest.fixture(scope='module')
def timm_test_dir(request, tmp_path_factory) -> Path:
    cache = getattr(request.config, 'cache', None)  # None under -p no:cacheprovider
    cache_dir = Path(cache.mkdir('timm_tests')) if cache else tmp_path_factory.mktemp('timm_tests')
    source = fetch_timm_model_tests(cache_dir)
    run_dir = tmp_path_factory.mktemp('timm_contract')
    (run_dir / 'test_models.py').write_bytes(source.read_bytes())
    (run_dir / 'conftest.py').write_text('import ptl_timm  # noqa: F401  registers the models\n')
    return run_dir


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
