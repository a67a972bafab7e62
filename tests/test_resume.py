"""Checkpoints and resume: a SIGKILLed run resumes and ends with the weights of an uninterrupted run;
readers of a checkpoint being replaced read a complete one and never write."""
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import safetensors.torch
import timm
import torch
import yaml

from ptl_timm.engine import TrainConfig, build_config, fine_tune, load_train_state, save_checkpoint
from ptl_timm.engine.checkpoint import read_checkpoint_info, write_train_state
from ptl_timm.engine.schedule import lr_factor
from ptl_timm.errors import CheckpointError, MissingExtraError
from ptl_timm.hub import WEIGHTS_NAME, load_model
from ptl_timm.utils import recover_folder

from engine_support import make_domain, save_untrained, tiny_config

EPOCHS = 3


def _config(tmp_path, output):
    domain = make_domain(tmp_path / 'data', num_ids=16, images_per_id=4)  # 8 training ids, 8 steps an epoch
    return tiny_config(output, domain, epochs=EPOCHS, batch_size=4, deterministic=True, lr=0.02, lr_step=2)


def _weights(output):
    return safetensors.torch.load_file(str(output / 'last' / WEIGHTS_NAME))


def _kill_after_first_epoch(config_file, output):
    """Start ``ptl-timm train`` and SIGKILL it as soon as epoch 1's checkpoint exists."""
    process = subprocess.Popen([sys.executable, '-m', 'ptl_timm', 'train', '--config', str(config_file), '--quiet'],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    state_file = output / 'last' / 'train_state.pt'
    deadline = time.time() + 240
    while not state_file.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    _, err = process.communicate()
    assert process.returncode == -signal.SIGKILL, f'the run ended before it was killed: {err.decode()[-2000:]}'


@pytest.mark.slow
def test_sigkilled_run_resumes_to_the_weights_of_an_uninterrupted_run(tmp_path):
    killed, straight = tmp_path / 'killed', tmp_path / 'straight'
    values = _config(tmp_path, killed)
    config_file = tmp_path / 'run.yaml'
    config_file.write_text(yaml.safe_dump(values))
    _kill_after_first_epoch(config_file, killed)
    completed = load_train_state(killed / 'last')['epoch']
    assert 1 <= completed < EPOCHS, 'killed mid-run, with at least one finished epoch'

    resumed = fine_tune(build_config(TrainConfig, values, {'resume': True}))
    fine_tune(build_config(TrainConfig, dict(values, output=str(straight))))
    assert [r['epoch'] for r in resumed['history']] == list(range(1, EPOCHS + 1))
    reference = _weights(straight)
    for name, value in _weights(killed).items():
        assert torch.equal(value, reference[name]), name


@pytest.mark.slow
def test_resume_continues_history_and_optimizer_state(tmp_path):
    values = _config(tmp_path, tmp_path / 'out')
    first = fine_tune(build_config(TrainConfig, dict(values, epochs=1)))
    second = fine_tune(build_config(TrainConfig, dict(values, epochs=2), {'resume': True}))
    assert second['history'][0] == first['history'][0]
    assert [r['epoch'] for r in second['history']] == [1, 2]
    assert load_train_state(tmp_path / 'out' / 'last')['scheduler']['last_epoch'] == 2


@pytest.mark.slow
def test_deterministic_mode_is_restored_after_the_run(tmp_path, monkeypatch):
    monkeypatch.delenv('CUBLAS_WORKSPACE_CONFIG', raising=False)
    before = torch.are_deterministic_algorithms_enabled()
    fine_tune(build_config(TrainConfig, _config(tmp_path, tmp_path / 'out'), {'epochs': 1, 'max_steps_per_epoch': 1}))
    assert torch.are_deterministic_algorithms_enabled() == before
    assert 'CUBLAS_WORKSPACE_CONFIG' not in os.environ


def test_interrupted_folder_swap_is_recovered(tmp_path):
    """A crash between 'old folder aside' and 'new folder in place' leaves the old one under .last.old."""
    save_untrained(tmp_path / 'last', 'reid_net', backbone='test_resnet')
    os.replace(tmp_path / 'last', tmp_path / '.last.old')
    assert recover_folder(tmp_path / 'last').joinpath(WEIGHTS_NAME).is_file()
    assert not (tmp_path / '.last.old').exists()


def test_reader_between_the_writers_two_renames_reads_the_old_checkpoint_and_moves_nothing(tmp_path):
    """A reader (eval, a resume check, best/ from last/) running while the writer has put the old folder
    aside and not yet renamed the new one in reads the old checkpoint whole and leaves both folders to
    the writer, which then completes its swap."""
    last = save_untrained(tmp_path / 'last', 'reid_net', num_classes=8, backbone='test_resnet')
    write_train_state(last, {'epoch': 1})
    new_model = timm.create_model('reid_net', backbone='test_resnet', num_classes=5)
    paused, resume = os.pipe(), os.pipe()
    pid = os.fork()
    if pid == 0:  # the writer: pauses right after its first rename, the old folder aside
        code = 1
        try:
            replace = os.replace

            def pausing_replace(src, dst):
                replace(src, dst)
                if Path(dst).name == '.last.old':
                    os.write(paused[1], b'x')
                    os.read(resume[0], 1)
            os.replace = pausing_replace
            save_checkpoint(last, new_model, {'epoch': 2})
            code = 0
        finally:
            os._exit(code)
    os.read(paused[0], 1)
    try:
        assert not last.exists(), 'the writer is between its two renames'
        assert read_checkpoint_info(last)['num_classes'] == 8 and load_train_state(last) == {'epoch': 1}
        assert load_model(last).num_classes == 8
        assert not last.exists() and (tmp_path / '.last.old').is_dir(), 'the readers moved nothing'
    finally:
        os.write(resume[1], b'x')
        _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, 'the writer completed its swap'
    assert read_checkpoint_info(last)['num_classes'] == 5 and load_train_state(last) == {'epoch': 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ['last']


def test_checkpoint_replacement_leaves_no_staging_folders(tmp_path):
    path = save_untrained(tmp_path / 'last', 'reid_net', backbone='test_resnet')
    save_checkpoint(path, load_model(path), {'epoch': 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == ['last']
    assert sorted(p.name for p in path.iterdir()) == ['config.json', 'model.safetensors', 'train_state.pt']


def test_overwrite_removes_the_earlier_run_before_anything_of_the_new_one(tmp_path, monkeypatch):
    """A new run stopped before its first evaluation must not leave the earlier run's best/ (a model it
    did not train) or metrics beside its own files; stopped while removing, the earlier run stays
    resumable (its config.yaml is rewritten after its last/ is gone)."""
    from ptl_timm.engine import trainer
    output = tmp_path / 'run'
    cfg = _config(tmp_path, output)
    fine_tune(build_config(TrainConfig, dict(cfg, epochs=1)))
    assert (output / 'best').is_dir() and (output / 'metrics.jsonl').is_file()
    monkeypatch.setattr(trainer, '_train_one_epoch', lambda *args: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        fine_tune(build_config(TrainConfig, dict(cfg, epochs=2), {'overwrite': True}))
    assert sorted(p.name for p in output.iterdir() if not p.name.startswith('.')) == ['config.yaml']
    assert yaml.safe_load((output / 'config.yaml').read_text())['epochs'] == 2


def _cosine_run(tmp_path, output='out', **overrides):
    """A seconds-long cosine-schedule run (one step an epoch) in tmp_path / output."""
    domain = make_domain(tmp_path / 'data')
    return tiny_config(tmp_path / output, domain, lr_schedule='cosine', warmup_epochs=1, max_steps_per_epoch=1,
                       **overrides)


def _lrs(result):
    return [record['lr'] for record in result['history']]


def test_resume_with_more_epochs_trains_at_the_new_schedules_learning_rates(tmp_path):
    """A finished 2-epoch cosine run resumed to 4 epochs, then 8: each resumed epoch's lr is the longer
    schedule's, not the old one's (0 at the end of a finished cosine)."""
    values = _cosine_run(tmp_path, epochs=2)
    fine_tune(TrainConfig(**values))
    for epochs in (4, 8):
        result = fine_tune(TrainConfig(output=values['output'], resume=True, epochs=epochs))
        factor = lr_factor('cosine', epochs, warmup_epochs=1, warmup_factor=0.1)
        resumed = _lrs(result)[epochs // 2:]
        assert resumed == [values['lr'] * factor(epoch) for epoch in range(epochs // 2, epochs)], epochs
        assert resumed[0] > 0, 'the first resumed epoch trains (a cosine reaches 0 at its last epoch only)'


def test_resume_with_the_same_epochs_gives_the_learning_rates_of_an_uninterrupted_run(tmp_path, monkeypatch):
    from ptl_timm.engine import trainer
    straight = fine_tune(TrainConfig(**_cosine_run(tmp_path, 'straight', epochs=4)))
    values = _cosine_run(tmp_path, epochs=4)
    original, calls = trainer._train_one_epoch, []

    def stop_after_two(*args):
        calls.append(1)
        if len(calls) > 2:
            raise KeyboardInterrupt
        return original(*args)
    monkeypatch.setattr(trainer, '_train_one_epoch', stop_after_two)
    with pytest.raises(KeyboardInterrupt):
        fine_tune(TrainConfig(**values))
    monkeypatch.setattr(trainer, '_train_one_epoch', original)
    resumed = fine_tune(TrainConfig(output=values['output'], resume=True))
    assert _lrs(resumed) == _lrs(straight)


def test_failed_resume_leaves_the_saved_config(tmp_path):
    """Resumed on data whose identities changed, the classifier does not fit: the run's config.yaml
    (epochs 1, resumable once the data is back) is not replaced by the failed resume's (epochs 2)."""
    values = _cosine_run(tmp_path, epochs=1)
    fine_tune(TrainConfig(**values))
    saved = (tmp_path / 'out' / 'config.yaml').read_bytes()
    shutil.rmtree(tmp_path / 'data')
    make_domain(tmp_path / 'data', num_ids=12)
    with pytest.raises(CheckpointError):
        fine_tune(TrainConfig(output=values['output'], resume=True, epochs=2))
    assert (tmp_path / 'out' / 'config.yaml').read_bytes() == saved


def _files(folder):
    """What a run wrote into ``folder`` (its lock files aside), with the times it was written."""
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir() if not p.name.startswith('.')}


def test_missing_tensorboard_is_refused_before_the_earlier_run_is_removed(tmp_path, monkeypatch):
    values = _cosine_run(tmp_path, epochs=1)
    fine_tune(TrainConfig(**values))
    before = _files(tmp_path / 'out')
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, 'find_spec',
                        lambda name, *a: None if name == 'tensorboard' else real_find_spec(name, *a))
    with pytest.raises(MissingExtraError, match='tensorboard'):
        fine_tune(TrainConfig(**dict(values, epochs=2, tensorboard=True, overwrite=True)))
    assert _files(tmp_path / 'out') == before


def test_a_mismatched_checkpoint_names_model_args_a_config_may_set(tmp_path):
    """The fix the message gives (copy the checkpoint's model_args) must be one the config accepts: without the
    keys the trainer sets itself."""
    import re

    import timm

    from ptl_timm.engine.checkpoint import load_checkpoint_weights
    from ptl_timm.engine.config import SET_BY_TRAINER
    from ptl_timm.errors import CheckpointError
    from ptl_timm.hub import save_pretrained
    saved = save_pretrained(timm.create_model('ptl_net', backbone='test_resnet', num_classes=5, embed_dim=32),
                            tmp_path / 'checkpoint')
    other = timm.create_model('ptl_net', backbone='test_resnet', num_classes=5, embed_dim=16)
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint_weights(other, saved)
    named = re.search(r'model_args (\{.*?\})', str(caught.value)).group(1)
    assert "'embed_dim': 32" in named and not any(f"'{key}'" in named for key in SET_BY_TRAINER)


def test_a_run_with_relative_paths_resumes_only_from_the_folder_it_started_in(tmp_path, monkeypatch, caplog):
    """A run started with data_root 'data' reads ./data again when resumed: from another folder, other data.
    Refused there, before anything is written; a run saved before the folder was recorded is resumed with
    its relative paths named."""
    (tmp_path / 'start').mkdir()
    (tmp_path / 'elsewhere').mkdir()
    monkeypatch.chdir(tmp_path / 'start')
    domain = make_domain(tmp_path / 'start' / 'data', num_ids=8)
    values = tiny_config(tmp_path / 'out', dict(name='market1501', root=os.path.relpath(domain['root'])),
                         max_steps_per_epoch=1)
    fine_tune(TrainConfig(**values))
    saved = (tmp_path / 'out' / 'config.yaml').read_bytes()
    shutil.copytree(tmp_path / 'start' / 'data', tmp_path / 'elsewhere' / 'data')  # data there too: no other error
    monkeypatch.chdir(tmp_path / 'elsewhere')
    with pytest.raises(CheckpointError, match=f'was started in {tmp_path / "start"} .*dataset.root: data/'):
        fine_tune(TrainConfig(output=values['output'], resume=True, epochs=2))
    assert (tmp_path / 'out' / 'config.yaml').read_bytes() == saved
    state = load_train_state(tmp_path / 'out' / 'last')
    del state['working_dir']  # as a run of an older version saved it
    write_train_state(tmp_path / 'out' / 'last', state)
    monkeypatch.chdir(tmp_path / 'start')
    with caplog.at_level('WARNING'):
        assert fine_tune(TrainConfig(output=values['output'], resume=True, epochs=2))['history'][-1]['epoch'] == 2
    assert 'did not record where it started' in caplog.text and 'dataset.root: data/' in caplog.text
