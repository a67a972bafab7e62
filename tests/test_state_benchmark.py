"""The powered state benchmark (benchmarks/state.py): its statistics against direct calculations, and
a CI-size run that produces every table without touching the committed results."""
import json
import math

import pytest

from benchmarks import state, stats
from benchmarks.report import BENCHMARKS_MD, ROOT


@pytest.mark.parametrize('p, df, expected', [
    (0.975, 4, 2.776445), (0.975, 9, 2.262157), (0.975, 19, 2.093024), (0.8, 9, 0.883404), (0.975, 1, 12.706205),
])
def test_t_quantile_matches_the_tables(p, df, expected):
    assert stats.t_quantile(p, df) == pytest.approx(expected, abs=1e-4)


def test_paired_difference_matches_a_direct_calculation():
    a, b = [3.0, 5.0, 4.0, 6.0, 7.0], [2.0, 3.0, 1.0, 2.0, 2.0]  # differences 1..5
    result = stats.paired_difference(a, b)
    sd = math.sqrt(2.5)  # sample sd of 1..5
    se = sd / math.sqrt(5)
    assert result.mean == pytest.approx(3.0) and result.sd == pytest.approx(sd) and result.n == 5
    assert result.low == pytest.approx(3.0 - 2.776445 * se, abs=1e-4)  # t(0.975, 4) = 2.776445
    assert result.high == pytest.approx(3.0 + 2.776445 * se, abs=1e-4)
    assert result.detectable == pytest.approx((2.776445 + 0.940965) * se, abs=1e-4)  # t(0.8, 4) = 0.940965
    with pytest.raises(ValueError, match='at least 2'):
        stats.paired_difference([1.0], [2.0])


def test_relative_interval_is_the_set_a_direct_scan_accepts():
    """Fieller's interval for mean(a)/mean(b) − 1 against its definition: scan the ratio ρ and keep every value
    where |ā − ρ·b̄| ≤ t·√(Var(ā) − 2ρ·Cov(ā, b̄) + ρ²·Var(b̄)), with the paired sample covariance."""
    a, b = [12.0, 15.5, 11.0, 14.0, 13.5, 16.0], [10.0, 14.0, 10.5, 12.0, 11.0, 13.5]
    n, t = len(a), 2.570582  # t(0.975, 5)
    ma, mb = sum(a) / n, sum(b) / n
    cov = [[sum((x - mx) * (y - my) for x, y in zip(u, v)) / (n - 1) / n for v, my in ((a, ma), (b, mb))]
           for u, mx in ((a, ma), (b, mb))]
    accepted = [rho / 10000 for rho in range(5000, 20000)
                if abs(ma - rho / 10000 * mb) <= t * math.sqrt(
                    cov[0][0] - 2 * rho / 10000 * cov[0][1] + (rho / 10000) ** 2 * cov[1][1])]
    result = stats.relative_difference(a, b)
    assert result.mean == pytest.approx(ma / mb - 1)
    assert result.low == pytest.approx(accepted[0] - 1, abs=2e-4)
    assert result.high == pytest.approx(accepted[-1] - 1, abs=2e-4)
    # a baseline indistinguishable from zero gives an unbounded ratio, never a finite interval
    unbounded = stats.relative_difference([1.0, 2.0, 1.5], [-1.0, 1.0, 0.2])
    assert unbounded.low == -math.inf and unbounded.high == math.inf
    # a baseline of exactly zero (a quick run's Rank-1 of 0) defines no relative change, and does not crash
    undefined = stats.relative_difference([1.0, 0.0, 2.0], [0.0, 0.0, 0.0])
    assert math.isnan(undefined.mean) and undefined.low == -math.inf


@pytest.mark.slow
def test_quick_runs_every_table_at_ci_size_and_writes_only_under_work(tmp_path):
    before = BENCHMARKS_MD.stat().st_mtime_ns if BENCHMARKS_MD.exists() else None
    results_before = sorted(state.RESULTS_DIR.iterdir()) if state.RESULTS_DIR.exists() else None
    result = state.main(['--quick', '--work', str(tmp_path), '--quiet', '--report', str(tmp_path / 'report.md')])
    setting, body = result['setting'], result['body']
    assert '<!-- begin:state -->' in (tmp_path / 'report.md').read_text()
    keys = state.DEFAULT_TABLES['miniature']
    for key in keys:
        assert f'### {state.tables(setting)[key].title}' in body
        assert (tmp_path / 'results' / f'{key}.png').stat().st_size > 0
    assert body.count('Power (') == len(keys)
    runs = json.loads((tmp_path / 'results' / 'runs.json').read_text())['runs']
    names = {name for key in keys for name, _, _ in state.tables(setting)[key].rows}
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
    plain_seed0 = next(key for key, r in runs.items() if r['name'] == 'plain' and r['seed'] == 0)
    assert plain_seed0.startswith('plain/seed0@') and again['runs'][plain_seed0] == runs[plain_seed0]
    # the other tables' runs stay in runs.json; --no-train adds a seed's rows only once it is trained
    assert set(json.loads((tmp_path / 'results' / 'runs.json').read_text())['runs']) == set(runs)
    scored = state.main(['--quick', '--work', str(tmp_path), '--quiet', '--reuse', '--no-train', '--key-seeds', '3',
                         '--tables', 'key', '--no-report'])
    assert not any(r['seed'] == 2 for r in scored['runs'].values()) and not (tmp_path / 'seed2').exists()
    assert not (tmp_path / 'data-seed2').exists() and not (tmp_path / 'test-seed2').exists()  # no data made either


def _record(name, seed, backbone, mAP):
    return dict(name=name, seed=seed, backbone=backbone,
                test=dict(zero=dict(mAP=mAP, rank1=mAP, mAP_groups=mAP, rank1_groups=mAP, groups=1)))


def test_a_seed_is_one_unit_from_one_backbone():
    """Runs from different pre-trained backbones are never paired: seed 1 has plain from backbone A and
    bot from B only, so no backbone completes it and it is left out; seed 0 is complete under both and
    takes the first recorded (A); seed 2 is complete under B alone."""
    runs = {f'{n}/seed{s}@{b}': _record(n, s, b, m) for n, s, b, m in [
        ('plain', 0, 'A', 1.0), ('bot', 0, 'A', 3.0), ('plain', 0, 'B', 10.0), ('bot', 0, 'B', 30.0),
        ('plain', 1, 'A', 1.5), ('bot', 1, 'B', 9.0), ('plain', 2, 'B', 2.0), ('bot', 2, 'B', 5.0)]}
    plain, bot = state._units([state._values(runs, name, 'zero', seeds=10) for name in ('plain', 'bot')])
    assert plain == {0: (1.0, 1.0, 1.0), 2: (2.0, 2.0, 2.0)} and bot == {0: (3.0, 3.0, 3.0), 2: (5.0, 5.0, 5.0)}


def test_runs_from_one_backbone_on_different_devices_are_never_paired():
    """A GPU session's runs do not pair with CPU runs of the same seed and backbone; a run recorded
    before devices were recorded counts as CPU."""
    runs = {f'{n}/seed{s}@A/{d}': dict(_record(n, s, 'A', m), **({'device': d} if d else {})) for n, s, d, m in [
        ('plain', 0, None, 1.0), ('bot', 0, 'H100', 3.0), ('plain', 1, 'H100', 2.0), ('bot', 1, 'H100', 5.0),
        ('plain', 2, 'cpu', 4.0), ('bot', 2, None, 6.0)]}
    plain, bot = state._units([state._values(runs, name, 'zero', seeds=10) for name in ('plain', 'bot')])
    assert sorted(plain) == sorted(bot) == [1, 2] and plain[1][0] == 2.0 and bot[2][0] == 6.0


def test_a_unit_recorded_with_an_earlier_backbone_needs_no_training(tmp_path):
    previous = {f'{n}/seed0@legacy': _record(n, 0, 'legacy', 1.0) for n in ('plain', 'ptl-batch', 'ptl-none')}
    previous['ptl-batch/seed0@legacy']['test']['warm'] = dict(previous['ptl-batch/seed0@legacy']['test']['zero'])
    exp = state.StateExperiment(state.QUICK, tmp_path, progress=False, previous=previous)
    state.run_table(exp, 'key', 0)
    assert exp.runs == previous and not any(tmp_path.iterdir())  # no data, no backbone, nothing trained


@pytest.mark.parametrize('key', list(state.tables(state.QUICK)))
def test_a_table_run_alone_trains_and_scores_every_row_it_shows(key, tmp_path, monkeypatch):
    """``--tables X`` on its own must complete X's units: no table may rely on another having run."""
    exp = state.StateExperiment(state.QUICK, tmp_path, progress=False, previous={})
    scored = set()
    monkeypatch.setattr(exp, 'pretrained_init', lambda seed: {})
    monkeypatch.setattr(exp, 'domain', lambda *args, **kwargs: None)
    monkeypatch.setattr(exp, 'test_split', lambda seed: None)
    monkeypatch.setattr(exp, 'finetune', lambda name, seed, *args, **kwargs: tmp_path / name / 'last')
    monkeypatch.setattr(exp, 'score', lambda name, seed, test_set, evals=('zero',): scored.update(
        (name, e) for e in evals))
    state.run_table(exp, key, 0)
    assert {(name, evaluation) for name, evaluation, _ in state.tables(state.QUICK)[key].rows} <= scored


@pytest.mark.slow
def test_realistic_quick_gates_on_a_pilot_then_writes_every_table_and_summary_only_under_work(tmp_path):
    """The realistic setting at CI size: the study refuses to start before a recorded pilot of its setting
    reaches the gate; after one, every table, the mechanism probe and summary.json are written under --work
    (nothing tracked changes)."""
    tracked = ROOT / 'benchmarks' / 'results' / 'state-realistic'
    results_before = sorted(tracked.iterdir()) if tracked.exists() else None
    gated = state.replace(state.QUICK_REALISTIC, pilot_gate=101.0)  # a gate no pilot can pass
    args = ['--setting', 'realistic', '--quick', '--work', str(tmp_path), '--quiet']
    pilot = state.main(args + ['--pilot'])['pilot']
    assert pilot['passed'] and pilot['split']['query'] > 0 and 0 < pilot['chance']['mAP'] < 100
    assert not state.gate_passed(gated, tmp_path / 'results')  # a failed or missing pilot blocks the study
    result = state.main(args + ['--reuse', '--report', str(tmp_path / 'report.md')])
    summary = json.loads((tmp_path / 'results' / 'summary.json').read_text())
    for key in state.DEFAULT_TABLES['realistic']:
        assert (tmp_path / 'results' / f'{key}.png').stat().st_size > 0
        assert summary['tables'][key]['arms']
    layers = summary['tables']['layers']
    assert [arm['name'] for arm in layers['arms']] == ['plain', 'ptl-batch', 'ptl-none', 'ptl-sample', 'matched']
    assert all(arm['seeds'] == 2 for arm in layers['arms'])
    for contrast in layers['contrasts']:
        assert contrast['mAP']['low'] <= contrast['mAP']['delta'] <= contrast['mAP']['high']
    mechanism = summary['tables']['mechanism']['arms']
    assert {arm['label'] for arm in mechanism} == {"PTL 'batch'", "PTL 'sample'"}
    assert all(0 <= cell['carried_share'] <= 1 for arm in mechanism for cell in arm['cells'].values())
    assert 'Pilots' in result['body'] and 'Chance level' in result['body']
    assert (sorted(tracked.iterdir()) if tracked.exists() else None) == results_before


def test_a_backbone_an_interrupted_invocation_pretrained_is_recorded_from_its_folder(tmp_path):
    """runs.json is written per finished seed, so a study stopped between pre-training and its first seed
    leaves a finished backbone nobody recorded: the next invocation reuses it and records its loss, its own
    split's scores and its epochs' compute, as if it had just trained it."""
    first = state.StateExperiment(state.QUICK_REALISTIC, tmp_path, progress=False, previous={})
    first.pretrained_init(0)
    (key, trained), = first.runs.items()
    later = state.StateExperiment(state.QUICK_REALISTIC, tmp_path, progress=False, previous={})
    later.pretrained_init(0)
    recorded = later.runs[key]
    assert recorded['train_loss'] == trained['train_loss'] and recorded['eval'] == trained['eval']
    assert recorded['params'] == trained['params'] and recorded['backbone'] == trained['backbone']
    assert 0 < recorded['seconds'] <= trained['seconds']  # the epochs' own times: no model building, no scoring
    again = state.StateExperiment(state.QUICK_REALISTIC, tmp_path, progress=False, previous=later.runs)
    again.pretrained_init(0)
    assert again.runs == {}  # recorded once: a later invocation with it in runs.json adds nothing


def test_the_realistic_fine_tune_has_at_least_50_mini_batches_between_state_resets():
    """The state resets at each epoch start; the P×K sampler drops an epoch's last identities, so the count is
    what it draws, for every seed and epoch, not images // batch size."""
    from collections import namedtuple
    setting = state.REALISTIC
    record = namedtuple('record', 'pid')
    train = [record(pid) for pid in range(setting.num_ids // 2) for _ in range(setting.images_per_id)]
    assert state.fewest_batches(train, setting) >= 50
    recipe = dict(setting.finetune_recipe)
    for seed in range(setting.key_seeds):
        sampler = state.PKSampler(train, setting.batch_size, recipe['num_instances'], seed=seed)
        for epoch in range(setting.epochs):
            sampler.set_epoch(epoch)
            assert len(sampler.global_batches()) >= 50
    too_few = [record(pid) for pid in range(200) for _ in range(8)]  # the first pilot's split: 49 in some epochs
    assert state.fewest_batches(too_few, setting) == 49
