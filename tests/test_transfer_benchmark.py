"""The miniature of the paper's experiments (benchmarks/transfer.py) runs end to end at CI size and
produces every table; what the tables say is for the full run, not for this test."""
import json

from benchmarks import transfer


def test_quick_run_produces_every_table_with_every_seed(tmp_path):
    result = transfer.main(['--quick', '--work', str(tmp_path / 'work'), '--out', str(tmp_path / 'out'),
                            '--no-report', '--quiet'])
    seeds = result['setting'].seeds
    body = result['body']
    for title, cells in transfer.TABLES.values():
        assert f'### {title}' in body
    for key in transfer.TABLES:
        assert (tmp_path / 'out' / f'{key}.png').stat().st_size > 0
    runs = json.loads((tmp_path / 'out' / 'runs.json').read_text())['runs']
    names = {r['name'] for r in runs.values()}
    expected = {'plain', 'ptl-batch', 'ptl-sample', 'ptl-none', 'plain-large-batch', 'one-step'}
    expected |= {f'std-lambda{lam}' for lam in transfer.LAMBDAS}
    assert expected <= names
    for name in expected:
        per_seed = [r for r in runs.values() if r['name'] == name]
        assert len(per_seed) == seeds
        target = transfer.SYNTH_DOMAINS[3]
        assert all(0 <= r['eval'][target]['mAP'] <= 100 and r['params'] > 0 for r in per_seed)
    # mean ± std of every cell is computed over the seeds
    assert body.count(' ± ') >= 2 * len(expected)
