"""Multi-step transfer: each step starts from the previous step's weights; a table covers every step."""
import json
from importlib import import_module
from pathlib import Path

import pytest

from ptl_timm.engine import CheckpointError, TransferConfig, run_transfer

from engine_support import TINY_MODEL_ARGS, make_domain, save_untrained, tiny_config

trainer_module = import_module('ptl_timm.engine.trainer')


@pytest.fixture(scope='module')
def domains(tmp_path_factory):
    root = tmp_path_factory.mktemp('synth')
    return [make_domain(root, 0), make_domain(root, 1)]


def _transfer_config(tmp_path, domains, **overrides):
    values = tiny_config(tmp_path / 'out', domains[0], **{
        'steps': [{'dataset': d} for d in domains], 'test_datasets': domains, **overrides})
    values.pop('dataset')
    return TransferConfig(**values)


@pytest.mark.slow
def test_each_step_starts_from_the_previous_steps_weights(tmp_path, domains, monkeypatch):
    loaded = []
    original = trainer_module.load_checkpoint_weights

    def spy(model, path, skip=()):
        loaded.append((Path(path), skip))
        return original(model, path, skip)

    monkeypatch.setattr(trainer_module, 'load_checkpoint_weights', spy)
    result = run_transfer(_transfer_config(tmp_path, domains))
    step1 = tmp_path / 'out' / f'step1-{domains[0]["label"]}'
    assert loaded == [(step1 / 'last', ('head.fc',))], 'step 2 loads step 1 and re-initialises the classifier'
    assert [row['route'] for row in result['rows']] == [
        domains[0]['label'], f'{domains[0]["label"]} → {domains[1]["label"]}']


@pytest.mark.slow
def test_table_reports_every_step_on_every_test_set(tmp_path, domains):
    result = run_transfer(_transfer_config(tmp_path, domains))
    labels = [d['label'] for d in domains]
    assert result['test_sets'] == labels
    for row in result['rows']:
        assert set(row['eval']) >= set(labels)
    table = (tmp_path / 'out' / 'transfer.md').read_text()
    assert all(f'{label} mAP / R-1' in table for label in labels)
    assert len(table.strip().splitlines()) == 2 + len(domains)


@pytest.mark.slow
def test_transfer_then_distillation_adds_a_student_row(tmp_path, domains):
    student = save_untrained(tmp_path / 'student', 'reid_net', **TINY_MODEL_ARGS)
    cfg = _transfer_config(tmp_path, domains, distill=dict(
        model='reid_net', model_args=dict(TINY_MODEL_ARGS), init_checkpoint=str(student)))
    result = run_transfer(cfg)
    assert [row['step'] for row in result['rows']] == [1, 2, 'STD']
    assert (tmp_path / 'out' / 'distill' / 'last' / 'model.safetensors').is_file()


@pytest.mark.slow
def test_resumed_transfer_continues_finished_steps_without_training_them_again(tmp_path, domains):
    first = run_transfer(_transfer_config(tmp_path, domains))
    again = run_transfer(TransferConfig(output=str(tmp_path / 'out'), resume=True))  # from its config.yaml alone
    assert [row['eval'] for row in again['rows']] == [row['eval'] for row in first['rows']]


@pytest.mark.slow
def test_transfer_into_a_finished_transfer_is_refused_and_its_config_kept(tmp_path, domains):
    run_transfer(_transfer_config(tmp_path, domains))
    saved = (tmp_path / 'out' / 'config.yaml').read_bytes()
    with pytest.raises(CheckpointError, match='--resume'):
        run_transfer(_transfer_config(tmp_path, domains, lr=0.01))
    assert (tmp_path / 'out' / 'config.yaml').read_bytes() == saved


@pytest.mark.slow
def test_steps_named_alike_in_different_folders_are_each_evaluated_on_their_own_data(tmp_path):
    """Two steps 'market1501' under different data_root: every step evaluates both folders."""
    domains = [make_domain(tmp_path / 'a', 0, num_ids=8), make_domain(tmp_path / 'b', 1, num_ids=12)]
    values = tiny_config(tmp_path / 'out', 'market1501', max_steps_per_epoch=1, steps=[
        {'dataset': 'market1501', 'data_root': d['root']} for d in domains])
    result = run_transfer(TransferConfig(**values))
    assert result['test_sets'] == [d['label'] for d in domains]
    for row in result['rows']:
        assert [row['eval'][d['label']]['num_query'] for d in domains] == [8, 12], row['step']


def test_transfer_without_steps_is_a_clear_error(tmp_path, domains):
    with pytest.raises(ValueError, match='at least one step'):
        run_transfer(_transfer_config(tmp_path, domains, steps=[]))


def test_a_run_folder_of_another_task_is_not_taken_over_without_overwrite(tmp_path, domains):
    """A train into a finished transfer's folder (or a transfer into a train run's) would replace its
    config.yaml, after which the original could no longer be resumed."""
    from ptl_timm.engine import TrainConfig, fine_tune
    from ptl_timm.engine.run_folder import run_config, save_run_config
    transfer = _transfer_config(tmp_path, domains)
    save_run_config(transfer)
    into_train = _transfer_config(tmp_path / 'second', domains)
    train = TrainConfig(**tiny_config(into_train.output, domains[0]))
    save_run_config(train)
    saved = {cfg.output: (Path(cfg.output) / 'config.yaml').read_bytes() for cfg in (transfer, train)}
    with pytest.raises(CheckpointError, match="holds a 'transfer' run .*--overwrite"):
        fine_tune(TrainConfig(**tiny_config(transfer.output, domains[0])))
    with pytest.raises(CheckpointError, match="holds a 'finetune' run .*--overwrite"):
        run_transfer(into_train)
    assert {output: (Path(output) / 'config.yaml').read_bytes() for output in saved} == saved
    assert run_config(TrainConfig(**tiny_config(transfer.output, domains[0], overwrite=True))).overwrite


def test_a_transfer_with_missing_step_data_writes_nothing(tmp_path, domains):
    values = dict(steps=[{'dataset': domains[0]}, {'dataset': 'market1501', 'data_root': str(tmp_path / 'none')}])
    with pytest.raises(FileNotFoundError, match='does not exist'):
        run_transfer(_transfer_config(tmp_path, domains, **values))
    assert not (tmp_path / 'out').exists()


@pytest.mark.slow
def test_an_overwritten_transfer_leaves_no_step_of_the_earlier_one(tmp_path, domains):
    run_transfer(_transfer_config(tmp_path, domains, max_steps_per_epoch=1))
    assert len(list((tmp_path / 'out').glob('step*'))) == 2
    run_transfer(_transfer_config(tmp_path, domains, steps=[{'dataset': domains[1]}], max_steps_per_epoch=1,
                                  overwrite=True))
    assert [p.name for p in (tmp_path / 'out').glob('step*')] == ['step1-' + domains[1]['label']]


@pytest.mark.slow
def test_a_step_after_one_that_trains_further_on_resume_starts_again(tmp_path, domains, caplog):
    """Resumed with more epochs, step 1 trains on: step 2 started from step 1's earlier weights, so it starts
    again from the new ones (resumed, the table would chain models that never followed each other)."""
    run_transfer(_transfer_config(tmp_path, domains, max_steps_per_epoch=1))
    with caplog.at_level('WARNING'):
        run_transfer(TransferConfig(output=str(tmp_path / 'out'), resume=True))
    assert 'starts again' not in caplog.text  # nothing trained: every step resumes as it was
    step2 = next((tmp_path / 'out').glob('step2-*'))
    first_epoch = json.loads((step2 / 'metrics.jsonl').read_text().splitlines()[0])
    with caplog.at_level('WARNING'):
        run_transfer(TransferConfig(output=str(tmp_path / 'out'), resume=True, epochs=2))
    assert f'{step2} starts again' in caplog.text
    epochs = [json.loads(line) for line in (step2 / 'metrics.jsonl').read_text().splitlines()]
    assert [e['epoch'] for e in epochs] == [1, 2] and epochs[0]['loss'] != first_epoch['loss']  # from new weights
