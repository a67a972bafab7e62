"""The powered state benchmark (benchmarks/state.py): its statistics against direct calculations, and
a CI-size run that produces every table without touching the committed results."""
import json
import math

import pytest

from benchmarks import state
from benchmarks.report import BENCHMARKS_MD


@pytest.mark.parametrize('p, df, expected', [
    (0.975, 4, 2.776445), (0.975, 9, 2.262157), (0.975, 19, 2.093024), (0.8, 9, 0.883404), (0.975, 1, 12.706205),
])
def test_t_quantile_matches_the_tables(p, df, expected):
    assert state.t_quantile(p, df) == pytest.approx(expected, abs=1e-4)


def test_paired_difference_matches_a_direct_calculation():
    a, b = [3.0, 5.0, 4.0, 6.0, 7.0], [2.0, 3.0, 1.0, 2.0, 2.0]  # differences 1..5
    result = state.paired_difference(a, b)
    sd = math.sqrt(2.5)  # sample sd of 1..5
    se = sd / math.sqrt(5)
    assert result.mean == pytest.approx(3.0) and result.sd == pytest.approx(sd) and result.n == 5
    assert result.low == pytest.approx(3.0 - 2.776445 * se, abs=1e-4)  # t(0.975, 4) = 2.776445
    assert result.high == pytest.approx(3.0 + 2.776445 * se, abs=1e-4)
    assert result.detectable == pytest.approx((2.776445 + 0.940965) * se, abs=1e-4)  # t(0.8, 4) = 0.940965
    with pytest.raises(ValueError, match='at least 2'):
        state.paired_difference([1.0], [2.0])


@pytest.mark.slow
def test_quick_runs_every_table_at_ci_size_and_writes_only_under_work(tmp_path):
    before = BENCHMARKS_MD.stat().st_mtime_ns if BENCHMARKS_MD.exists() else None
    results_before = sorted(state.RESULTS_DIR.iterdir()) if state.RESULTS_DIR.exists() else None
    result = state.main(['--quick', '--work', str(tmp_path), '--quiet', '--report', str(tmp_path / 'report.md')])
    setting, body = result['setting'], result['body']
    assert '<!-- begin:state -->' in (tmp_path / 'report.md').read_text()
    for key, table in state.tables(setting).items():
        assert f'### {table.title}' in body
        assert (tmp_path / 'results' / f'{key}.png').stat().st_size > 0
    assert body.count('Power: ') == len(state.tables(setting))
    runs = json.loads((tmp_path / 'results' / 'runs.json').read_text())['runs']
    names = {name for table in state.tables(setting).values() for name, _, _ in table.rows}
    for name in names:
        per_seed = [r for r in runs.values() if r['name'] == name]
        assert len(per_seed) == setting.seeds
        assert all(0 <= r['test']['zero']['mAP'] <= 100 for r in per_seed)
    assert all('warm' in r['test'] for r in runs.values() if r['name'] == 'ptl-batch')
    assert (BENCHMARKS_MD.stat().st_mtime_ns if BENCHMARKS_MD.exists() else None) == before
    assert (sorted(state.RESULTS_DIR.iterdir()) if state.RESULTS_DIR.exists() else None) == results_before

    # --reuse retrains nothing: every checkpoint stays as it is
    checkpoint = tmp_path / 'seed0' / 'plain' / 'last' / 'model.safetensors'
    written = checkpoint.stat().st_mtime_ns
    again = state.main(['--quick', '--work', str(tmp_path), '--quiet', '--reuse', '--tables', 'key', '--no-report'])
    assert checkpoint.stat().st_mtime_ns == written
    assert again['runs']['plain/seed0'] == runs['plain/seed0']
    # the other tables' runs stay in runs.json; --no-train adds a seed's rows only once it is trained
    assert set(json.loads((tmp_path / 'results' / 'runs.json').read_text())['runs']) == set(runs)
    scored = state.main(['--quick', '--work', str(tmp_path), '--quiet', '--reuse', '--no-train', '--key-seeds', '3',
                         '--tables', 'key', '--no-report'])
    assert 'plain/seed2' not in scored['runs'] and not (tmp_path / 'seed2').exists()
