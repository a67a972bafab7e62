"""A run folder is what it says: its saved config, its preprocessing, its lock, resume from it alone,
and no epoch lost to a failed evaluation."""
import json
import logging
import os
import signal
import subprocess
import sys
from importlib import import_module
from pathlib import Path

import pytest
import timm.data
import torch
import yaml

from ptl_timm.cli import main
from ptl_timm.engine import TrainConfig, build_config, fine_tune, load_config, load_train_state
from ptl_timm.engine.run_lock import HOLDER_NAME, LOCK_NAME, run_lock
from ptl_timm.errors import DatasetError, OutputError
from ptl_timm.hub import load_model

from engine_support import IMG_SIZE, make_domain, states_seen_by_training_forwards, tiny_config

trainer_module = import_module('ptl_timm.engine.trainer')


@pytest.fixture(scope='module')
def domain(tmp_path_factory):
    return make_domain(tmp_path_factory.mktemp('synth'))


@pytest.fixture(scope='module')
def cli_run(tmp_path_factory, domain):
    """One epoch through ``ptl-timm train`` at 64×32: (output folder, the config file it was given)."""
    root = tmp_path_factory.mktemp('cli_run')
    config_file = root / 'run.yaml'
    values = tiny_config(root / 'out', domain, max_steps_per_epoch=2)
    values.pop('img_size')
    config_file.write_text(yaml.safe_dump(values))
    assert main(['train', '--config', str(config_file), '--img-size', *map(str, IMG_SIZE), '--quiet']) == 0
    return root / 'out', config_file


@pytest.mark.slow
def test_checkpoint_config_records_the_training_input_size(cli_run):
    output, _ = cli_run
    pretrained_cfg = json.loads((output / 'last' / 'config.json').read_text())['pretrained_cfg']
    assert pretrained_cfg['input_size'] == [3, *IMG_SIZE]
    assert (pretrained_cfg['interpolation'], pretrained_cfg['crop_pct']) == ('bilinear', 1.0)
    data_config = timm.data.resolve_data_config(model=load_model(output / 'last'))
    assert data_config['input_size'] == (3, *IMG_SIZE)


@pytest.mark.slow
def test_eval_with_default_flags_reproduces_the_training_number(cli_run, domain, capsys):
    """The reported case in miniature: the checkpoint alone says how to preprocess (64×32 here)."""
    output, _ = cli_run
    trained = json.loads((output / 'metrics.jsonl').read_text().splitlines()[0])['eval'][domain['label']]
    capsys.readouterr()
    assert main(['eval', '--model', str(output / 'last'), '--dataset', 'market1501', '--data-root', domain['root'],
                 '--device', 'cpu', '--workers', '0', '--quiet']) == 0
    assert f'mAP {trained["mAP"]:.2f}' in capsys.readouterr().out


@pytest.mark.slow
def test_every_run_saves_its_resolved_config(cli_run):
    output, config_file = cli_run
    saved = load_config(output / 'config.yaml')
    assert saved['task'] == 'finetune' and saved['img_size'] == list(IMG_SIZE) and 'resume' not in saved
    expected = build_config(TrainConfig, load_config(config_file), {'img_size': IMG_SIZE, 'progress': False})
    assert build_config(TrainConfig, saved) == expected


@pytest.mark.slow
def test_resume_needs_only_the_output_folder(cli_run, caplog):
    """The reported case: flags forgotten on resume are taken from the saved config (not the defaults)."""
    output, _ = cli_run
    with caplog.at_level(logging.WARNING):
        assert main(['train', '--output', str(output), '--resume', '--epochs', '2', '--quiet']) == 0
    state = load_train_state(output / 'last')
    assert [r['epoch'] for r in state['history']] == [1, 2]
    assert state['config']['img_size'] == list(IMG_SIZE) and state['config']['model'] == 'ptl_net'
    assert "epochs=2 instead of the saved 1" in caplog.text, 'an allowed change is logged'
    assert load_config(output / 'config.yaml')['epochs'] == 2


@pytest.mark.slow
def test_resume_repeating_the_flags_but_one_continues_at_the_saved_image_size(cli_run):
    """As reported: --config repeated, --img-size forgotten; the run went on at 256×128."""
    output, config_file = cli_run
    assert main(['train', '--config', str(config_file), '--resume', '--epochs', '3', '--quiet']) == 0
    state = load_train_state(output / 'last')
    assert state['epoch'] == 3 and state['config']['img_size'] == list(IMG_SIZE)
    assert load_config(output / 'config.yaml')['img_size'] == list(IMG_SIZE)


@pytest.mark.slow
def test_resume_flag_that_contradicts_the_saved_config_names_both_values(cli_run, capsys):
    output, _ = cli_run
    before = (output / 'config.yaml').read_bytes()
    assert main(['train', '--output', str(output), '--resume', '--img-size', '128', '64', '--lr', '0.5']) == 2
    err = capsys.readouterr().err
    assert 'img_size=(128, 64) (saved: (64, 32))' in err and 'lr=0.5 (saved: 0.05)' in err
    assert (output / 'config.yaml').read_bytes() == before, 'the saved config is never silently overwritten'


def test_resume_without_a_run_is_a_clear_error(tmp_path, capsys):
    assert main(['train', '--output', str(tmp_path / 'none'), '--resume']) == 2
    assert 'nothing to resume' in capsys.readouterr().err
    assert not (tmp_path / 'none').exists()


def _hold_lock(output: Path) -> subprocess.Popen:
    """Another process holding ``output``'s lock until its stdin closes."""
    code = ('import sys; from ptl_timm.engine.run_lock import run_lock\n'
            f'with run_lock({str(output)!r}):\n    print("locked", flush=True); sys.stdin.read()')
    process = subprocess.Popen([sys.executable, '-c', code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == 'locked'
    return process


@pytest.mark.slow
def test_second_training_into_a_folder_in_use_fails_fast(tmp_path, domain):
    output = tmp_path / 'out'
    holder = _hold_lock(output)
    try:
        with pytest.raises(OutputError, match=f'in use by another training \\(pid {holder.pid} on'):
            fine_tune(TrainConfig(**tiny_config(output, domain)))
    finally:
        holder.stdin.close()
        holder.wait()
    assert sorted(p.name for p in output.iterdir()) == [LOCK_NAME], 'nothing written, the holder named no more'
    with run_lock(output):
        pass


def test_lock_of_a_killed_run_is_free_at_once(tmp_path):
    """The kernel releases the lock with its process: a SIGKILLed run leaves nothing to clear."""
    holder = _hold_lock(tmp_path)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert (tmp_path / HOLDER_NAME).is_file(), 'the killed run could not clean up'
    with run_lock(tmp_path):
        assert json.loads((tmp_path / HOLDER_NAME).read_text())['pid'] == os.getpid()
    assert not (tmp_path / HOLDER_NAME).exists()


def test_a_live_lock_is_refused_at_once_naming_its_holder(tmp_path):
    with run_lock(tmp_path):
        with pytest.raises(OutputError, match=f'{tmp_path} is in use by another training \\(pid {os.getpid()} on'):
            with run_lock(tmp_path):
                pytest.fail('a second holder')


def test_unwritable_output_is_refused_before_the_first_epoch(tmp_path, domain, monkeypatch):
    monkeypatch.setattr(trainer_module, '_train_one_epoch', lambda *a: pytest.fail('trained before checking'))
    (tmp_path / 'file').write_text('not a folder')
    with pytest.raises(OutputError, match='cannot write .*file/out.*is a file'):
        fine_tune(TrainConfig(**tiny_config(tmp_path / 'file' / 'out', domain)))


@pytest.mark.slow
def test_failed_evaluation_keeps_the_epoch_and_resume_evaluates_it(tmp_path, domain, monkeypatch):
    output = tmp_path / 'out'
    values = tiny_config(output, domain, max_steps_per_epoch=2)
    with monkeypatch.context() as patch:
        patch.setattr(trainer_module, 'evaluate_split', lambda *a: (_ for _ in ()).throw(RuntimeError('eval broke')))
        with pytest.raises(RuntimeError, match='eval broke'):
            fine_tune(TrainConfig(**values))
    state = load_train_state(output / 'last')
    assert state['epoch'] == 1 and 'eval' not in state['history'][-1], 'the trained epoch is saved'
    with run_lock(output):  # the lock was released on the exception
        pass
    trained = torch.load(output / 'last' / 'train_state.pt', weights_only=True)['optimizer']
    result = fine_tune(TrainConfig(output=str(output), resume=True))
    assert [r['epoch'] for r in result['history']] == [1] and result['last']['eval'][domain['label']]['mAP'] > 0
    assert load_train_state(output / 'last')['optimizer']['state'][0]['momentum_buffer'].equal(
        trained['state'][0]['momentum_buffer']), 'evaluated, not trained again'
    assert (output / 'best' / 'model.safetensors').is_file()


def test_split_without_a_cross_camera_match_is_refused_before_training(tmp_path, domain):
    root = tmp_path / 'one_camera'
    for split in ('bounding_box_train', 'query', 'bounding_box_test'):
        (root / split).mkdir(parents=True)
        for image in (Path(domain['root']) / split).iterdir():  # every image seen by camera 1
            name = image.name[:5] + 'c1' + image.name[7:]
            if not (root / split / name).exists():
                os.link(image, root / split / name)
    with pytest.raises(DatasetError, match='under another camera'):
        fine_tune(TrainConfig(**tiny_config(tmp_path / 'out', dict(domain, root=str(root)))))
    assert not (tmp_path / 'out').exists()


@pytest.mark.slow
def test_resumed_state_reset_never_run_continues_with_its_saved_states(tmp_path, domain):
    values = tiny_config(tmp_path / 'out', domain, max_steps_per_epoch=2, state_reset='never')
    fine_tune(TrainConfig(**values))
    saved = load_train_state(tmp_path / 'out' / 'last')['latent_states']
    assert saved and all(state.numel() > 0 for state in saved.values())
    seen = states_seen_by_training_forwards(TrainConfig(**dict(values, epochs=2, resume=True)))
    cell_name = next(name for name in saved)
    torch.testing.assert_close(seen[0], saved[cell_name], msg='epoch 2 starts from the state epoch 1 ended with')


@pytest.mark.slow
def test_readme_states_the_run_folder_truthfully(cli_run):
    """README's run-folder listing names every file and folder a training run writes, and no other
    (entries written only with an option say 'with --...')."""
    output, _ = cli_run
    readme = (Path(__file__).resolve().parent.parent / 'README.md').read_text().splitlines()
    listing = readme[readme.index('<!-- run-folder:begin -->') + 3:readme.index('<!-- run-folder:end -->') - 1]
    entries = {line.split()[0]: line.split(None, 1)[1] for line in listing}
    always = {name for name, text in entries.items() if 'with --' not in text}
    assert {name.rstrip('/') for name in always} == {p.name for p in output.iterdir()}
    for name in always:
        if name.endswith('/'):
            files = entries[name].split(':')[0].split(' + ')
            assert sorted(files) == sorted(p.name for p in (output / name).iterdir()), name
