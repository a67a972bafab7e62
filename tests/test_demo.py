"""The demo says what it runs: each block is labelled before its epochs, with the domain's own name
and the fact that the networks start from random weights."""
from ptl_timm.tools import demo
from ptl_timm.tools.demo import DemoScale, run_demo


def test_demo_labels_each_block_and_says_the_weights_are_random(tmp_path, monkeypatch, capsys):
    calls = []

    def fake_run(cfg):
        calls.append(cfg)
        print(f'epoch 1 of {cfg.model}')  # stands for the trainer's progress lines
        evaluation = {'synth-street': dict(mAP=1.0, rank1=2.0, mINP=0.5), 'synth-mall': dict(mAP=1.0, rank1=2.0, mINP=0.5)}
        return dict(output=cfg.output, last=dict(eval=evaluation))
    monkeypatch.setattr(demo, 'fine_tune', fake_run)
    monkeypatch.setattr(demo, 'run_distill', fake_run)
    monkeypatch.setattr(demo, '_draw_ranked_lists', lambda *args: tmp_path / 'ranked.png')
    run_demo(tmp_path, DemoScale(num_ids=4, images_per_id=2, epochs=2, distill_epochs=1), backbone='test_resnet')
    out = capsys.readouterr().out
    assert 'random weights' in out and 'synth-street' in out and 'synth-mall' in out
    blocks = [line for line in out.splitlines() if line.startswith('[')]
    assert [b.split(':')[0] for b in blocks] == ['[1/3] baseline', '[2/3] PTL', '[3/3] PTL+STD']
    # every label comes right before its own block's epochs
    order = [line for line in out.splitlines() if line.startswith(('[', 'epoch'))]
    assert order == [blocks[0], 'epoch 1 of reid_net', blocks[1], 'epoch 1 of ptl_net', blocks[2],
                     'epoch 1 of reid_net']
    assert all(not cfg.pretrained for cfg in calls)


def test_quiet_demo_prints_no_labels(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(demo, 'fine_tune', lambda cfg: dict(output=cfg.output, last=dict(eval={})))
    monkeypatch.setattr(demo, 'run_distill', lambda cfg: dict(output=cfg.output, last=dict(eval={})))
    monkeypatch.setattr(demo, '_draw_ranked_lists', lambda *args: tmp_path / 'ranked.png')
    run_demo(tmp_path, DemoScale(num_ids=4, images_per_id=2, epochs=2, distill_epochs=1), backbone='test_resnet',
             progress=False)
    assert capsys.readouterr().out == ''


def test_demo_says_what_one_seed_on_a_small_split_can_and_cannot_show(tmp_path, monkeypatch, capsys):
    def fake_run(cfg):
        evaluation = {'synth-street': dict(mAP=48.4509, rank1=46.55, num_query=58),
                      'synth-mall': dict(mAP=10.0, rank1=12.0, num_query=60)}
        return dict(output=cfg.output, last=dict(eval=evaluation))
    monkeypatch.setattr(demo, 'fine_tune', fake_run)
    monkeypatch.setattr(demo, 'run_distill', fake_run)
    monkeypatch.setattr(demo, '_draw_ranked_lists', lambda *args: tmp_path / 'ranked.png')
    result = run_demo(tmp_path, DemoScale(num_ids=4, images_per_id=2, epochs=2, distill_epochs=1),
                      backbone='test_resnet', progress=False)
    text = ' '.join(result['caveat'].split())  # wrapped for the terminal
    for words in ('one seed', '58 queries of synth-street', 'within the noise', 'another --seed', 'BENCHMARKS.md'):
        assert words in text, words
    assert max(map(len, result['caveat'].splitlines())) <= 100
    assert result['caveat'] in (tmp_path / 'demo.md').read_text()


def test_table_rows_of_different_models_never_look_identical():
    """The demo printed the baseline's 48.45 for the distilled student too (48.4509 vs 48.4543)."""
    from ptl_timm.engine.transfer import results_table
    rows = [dict(step=step, model='m', route='r', eval={'t': dict(mAP=m, rank1=r)})
            for step, m, r in (('baseline', 48.4509, 46.5517), ('PTL', 55.89, 50.0), ('PTL+STD', 48.4543, 46.5517))]
    cells = [line.split(' | ')[3] for line in results_table(rows, ['t']).splitlines()[2:]]
    assert cells == ['48.451 / 46.55 |', '55.890 / 50.00 |', '48.454 / 46.55 |']
    rows[2]['eval']['t']['mAP'] = 48.47  # two decimals tell them apart: no more are printed
    assert [line.split(' | ')[3] for line in results_table(rows, ['t']).splitlines()[2:]][0] == '48.45 / 46.55 |'
