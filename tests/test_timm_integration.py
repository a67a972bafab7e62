"""timm's training-script integration points: what train.py / validate.py do to a PTL model each epoch."""
import copy
import subprocess
import sys

import pytest
import timm
import timm.data
import torch
import torch.nn.functional as F
from timm.utils import ModelEmaV3

from ptl_timm.data import build_dataset
from ptl_timm.data.imagefolder import export_imagefolder
from ptl_timm.engine.trainer import ReIDTrainModule
from ptl_timm.layers import BConvCell

from engine_support import IMG_SIZE, TINY_MODEL_ARGS, make_domain

NUM_CLASSES = 5


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model('ptl_net', num_classes=NUM_CLASSES, **TINY_MODEL_ARGS)


def _states(model):
    return {n: m.latent_state.clone() for n, m in model.named_modules() if isinstance(m, BConvCell)}


def _train_steps(model, steps=2, seed=0):
    """train.py's inner loop: logits from forward(), CE, SGD step."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    data = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        images = torch.randn(4, 3, *IMG_SIZE, generator=data)
        loss = F.cross_entropy(model(images), torch.randint(0, NUM_CLASSES, (4,), generator=data))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def test_train_call_at_each_epoch_start_resets_the_state():
    model = _model().train()
    _train_steps(model)
    assert all(s.numel() > 0 for s in _states(model).values())
    model.train()  # what train_one_epoch does first, every epoch
    assert all(s.numel() == 0 for s in _states(model).values())


@pytest.mark.slow
def test_validation_under_inference_mode_leaves_the_state_untouched():
    model = _model().train()
    _train_steps(model)
    before = _states(model)
    images = torch.randn(3, 3, *IMG_SIZE)
    model.eval()
    with torch.inference_mode():
        validated = model(images)
    after = _states(model)
    assert all(torch.equal(before[n], after[n]) for n in before)
    fresh = copy.deepcopy(model)
    fresh.reset_state()
    with torch.inference_mode():
        torch.testing.assert_close(validated, fresh.eval()(images), msg='eval output ignores the carried state')
    model.train()
    _train_steps(model, seed=1)  # training goes on after inference-mode validation


@pytest.mark.slow
def test_model_ema_v3_averages_weights_and_never_the_state():
    model = _model().train()
    _train_steps(model)
    ema = ModelEmaV3(model, decay=0.5)
    copied = copy.deepcopy(ema.module.state_dict())
    _train_steps(model, seed=1)
    ema.update(model)
    assert not any('latent_state' in k for k in ema.module.state_dict())
    name = 'neck.conv.weight'
    torch.testing.assert_close(ema.module.state_dict()[name], 0.5 * copied[name] + 0.5 * model.state_dict()[name])
    # the deep-copied (non-zero) state rides along in the EMA copy but eval mode never reads it
    assert any(s.numel() > 0 for s in _states(ema.module).values())
    images = torch.randn(2, 3, *IMG_SIZE)
    reference = _model()
    reference.load_state_dict(ema.module.state_dict())
    with torch.inference_mode():
        torch.testing.assert_close(ema.module(images), reference.eval()(images))


def test_ddp_ignores_every_latent_state_buffer():
    model = _model()
    cells = [n for n, m in model.named_modules() if isinstance(m, BConvCell)]
    assert {f'{n}.latent_state' for n in cells} <= set(model._ddp_params_and_buffers_to_ignore)
    wrapped = ReIDTrainModule(model)  # what the engine hands to DistributedDataParallel
    assert {f'model.{n}.latent_state' for n in cells} <= set(wrapped._ddp_params_and_buffers_to_ignore)


def test_export_imagefolder_is_read_by_timms_create_dataset(tmp_path):
    dataset = build_dataset('market1501', make_domain(tmp_path / 'synth')['root'])
    counts = export_imagefolder(dataset, tmp_path / 'folder', val_per_id=1)
    assert counts['classes'] == dataset.num_train_pids
    train = timm.data.create_dataset('', root=str(tmp_path / 'folder'), split='train')
    validation = timm.data.create_dataset('', root=str(tmp_path / 'folder'), split='validation')
    assert (len(train), len(validation)) == (counts['train'], counts['validation'])
    pids_by_class = sorted({r.pid for r in dataset.train})
    assert sorted(train.reader.class_to_idx.values()) == list(range(len(pids_by_class)))
    with pytest.raises(ValueError, match='already exists'):
        export_imagefolder(dataset, tmp_path / 'folder')


@pytest.mark.slow
def test_timm_script_runner_registers_ptl_models_for_the_script(tmp_path):
    script = tmp_path / 'validate.py'
    script.write_text(
        'import sys, timm\n'
        'model = timm.create_model(sys.argv[1], num_classes=3, backbone="test_resnet")\n'
        'open(sys.argv[2], "w").write(type(model).__name__)\n')
    out = tmp_path / 'out.txt'
    run = subprocess.run([sys.executable, '-m', 'ptl_timm.tools.timm_script', str(script), 'ptl_net', str(out)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert out.read_text() == 'ReIDNet'


def test_timm_script_runner_gives_back_the_callers_argv_and_path(tmp_path):
    from ptl_timm.tools.timm_script import run_timm_script
    script = tmp_path / 'script.py'
    script.write_text(f'import sys\nassert sys.argv == [{str(script)!r}, "--model", "ptl_net"]\n'
                      f'assert sys.path[0] == {str(tmp_path.resolve())!r}\n')
    argv, path = list(sys.argv), list(sys.path)
    run_timm_script(str(script), ['--model', 'ptl_net'])
    assert sys.argv == argv and sys.path == path
