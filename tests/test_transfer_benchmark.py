"""The miniature of the paper's experiments (benchmarks/transfer.py) runs end to end at CI size and
produces every table; what the tables say is for the full run, not for this test."""
import json

import pytest
import torch

from benchmarks import transfer


@pytest.mark.slow
def test_quick_run_produces_every_table_with_every_seed(tmp_path, capsys):
    result = transfer.main(['--quick', '--work', str(tmp_path / 'work'), '--out', str(tmp_path / 'out'),
                            '--no-report', '--quiet'])
    assert 'epoch 1:' not in capsys.readouterr().out  # --quiet: not one line per epoch of 60 runs
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
    expected |= {'ptl-batch-no-reset'}
    expected |= {f'ptl-{mode}-{probe}' for mode in transfer.PROBE_MODES for probe in ('side-lr10', 'deep-fuse', '3x-epochs', '4x-ids')}
    assert expected <= names
    for name in expected:
        per_seed = [r for r in runs.values() if r['name'] == name]
        assert len(per_seed) == seeds
        target = transfer.SYNTH_DOMAINS[3]
        assert all(0 <= r['eval'][target]['mAP'] <= 100 and r['params'] > 0 for r in per_seed)
    # mean ± std of every cell is computed over the seeds
    assert body.count(' ± ') >= 2 * len(expected)


@pytest.mark.slow
def test_reuse_keeps_finished_runs_and_runs_only_the_missing_table(tmp_path):
    common = ['--quick', '--seeds', '1', '--work', str(tmp_path / 'work'), '--out', str(tmp_path / 'out'),
              '--no-report', '--quiet']
    first = transfer.main(common + ['--tables', 'batch'])
    checkpoint = tmp_path / 'work' / 'seed0' / 'plain' / 'last' / 'model.safetensors'
    written = checkpoint.stat().st_mtime_ns
    second = transfer.main(common + ['--tables', 'batch', 'lambda', '--reuse'])
    assert checkpoint.stat().st_mtime_ns == written  # plain was not trained again
    assert second['runs']['plain/seed0'] == first['runs']['plain/seed0']
    assert {f'std-lambda{lam}/seed0' for lam in transfer.LAMBDAS} <= set(second['runs'])


def test_a_run_is_reused_only_when_finished_with_the_same_values_on_the_same_inputs(tmp_path, monkeypatch):
    """runs.json vouches for its records, not for the work folder: a run there is kept only when it trained
    all its epochs with the very values asked for, on the same data and starting weights. Anything else
    trains afresh in an emptied folder, so an earlier run's files (its test features) cannot pass for the
    new run's."""
    trained, real = [], transfer.fine_tune
    monkeypatch.setattr(transfer, 'fine_tune', lambda cfg: trained.append(cfg) or real(cfg))
    exp = transfer.Experiment(transfer.QUICK, tmp_path, progress=False)
    dataset = exp.domain(transfer.SYNTH_DOMAINS[3], 0, 8)
    last = exp.finetune('plain', 0, dataset, dict(pretrained=False), None)
    record = exp.runs['plain/seed0']
    stale = last.parent / 'test-features-zero.safetensors'
    stale.write_bytes(b'features of this run')

    def again(**kwargs):
        later = transfer.Experiment(transfer.QUICK, tmp_path, progress=False, previous={'plain/seed0': record})
        trained.clear()
        later.finetune('plain', 0, kwargs.pop('dataset', dataset), dict(pretrained=False), None, **kwargs)
        return bool(trained)
    assert not again() and stale.exists()  # kept: the same values on the same data
    assert not transfer.Experiment(transfer.QUICK, tmp_path, progress=False, train=False).finetune(
        'plain', 0, dataset, dict(pretrained=False), None)  # not recorded, and training is off: nothing
    regenerated = exp.domain(transfer.SYNTH_DOMAINS[3], 0, 10)  # the same folder, other identities
    assert regenerated['root'] == dataset['root']
    assert again(dataset=regenerated) and not stale.exists()  # trained afresh; the old features are gone
    assert again(lr=exp.s.lr / 2)  # other values: afresh
    state = torch.load(last / 'train_state.pt', weights_only=True)
    torch.save(dict(state, epoch=0), last / 'train_state.pt')  # as if killed before its last epoch ended
    assert again(lr=exp.s.lr / 2) and trained[0].resume  # unfinished: resumed, not kept


def test_a_run_killed_mid_way_resumes_where_it_stopped_with_the_same_values(tmp_path, monkeypatch):
    """A study runs across sessions: a run interrupted after its first epoch trains only the second when
    asked again with the same values, and starts afresh when asked with other values."""
    from dataclasses import replace

    from ptl_timm.engine import trainer
    trained = []
    train_one_epoch = trainer._train_one_epoch

    def train(session, state, *args):
        if state.epoch == 1 and interrupt:
            raise KeyboardInterrupt  # epoch 1 trained and saved
        trained.append(state.epoch + 1)
        train_one_epoch(session, state, *args)

    monkeypatch.setattr(trainer, '_train_one_epoch', train)
    exp = transfer.Experiment(replace(transfer.QUICK, epochs=2), tmp_path, progress=False)
    dataset = exp.domain(transfer.SYNTH_DOMAINS[0], 0, 8)
    interrupt = True
    with pytest.raises(KeyboardInterrupt):
        exp.finetune('plain', 0, dataset, dict(pretrained=False), None)
    interrupt = False
    exp.finetune('plain', 0, dataset, dict(pretrained=False), None)
    assert trained == [1, 2], 'resumed: only the second epoch trained'
    assert [r['epoch'] for r in map(json.loads, (tmp_path / 'seed0' / 'plain' / 'metrics.jsonl').open())] == [1, 2]
    trained.clear()
    exp.runs.clear()
    exp.finetune('plain', 0, dataset, dict(pretrained=False), None, lr=exp.s.lr / 2)
    assert trained == [1, 2], 'other values: trained afresh'
