"""Student-Teacher Distillation: Eq. 4, a frozen eval-mode teacher, and a student that stands alone."""
import copy
from importlib import import_module

import pytest
import torch
import torch.nn.functional as F

from ptl_timm.engine import DistillConfig, run_distill
from ptl_timm.engine.distill import distillation_step, load_teacher
from ptl_timm.engine.trainer import ReIDTrainModule
from ptl_timm.hub import load_model
from ptl_timm.layers import BConvCell
from ptl_timm.losses import DistillationLoss

from engine_support import IMG_SIZE, TINY_MODEL_ARGS, make_domain, save_untrained, tiny_config

distill_module = import_module('ptl_timm.engine.distill')  # the package exports the function under that name


@pytest.fixture(scope='module')
def domain(tmp_path_factory):
    return make_domain(tmp_path_factory.mktemp('synth'))


@pytest.fixture
def teacher_dir(tmp_path):
    return save_untrained(tmp_path / 'teacher', 'ptl_net', **TINY_MODEL_ARGS)


@pytest.fixture
def student_dir(tmp_path):
    return save_untrained(tmp_path / 'student', 'reid_net', **TINY_MODEL_ARGS)


def _distill_config(tmp_path, domain, teacher_dir, student_dir, **overrides):
    values = tiny_config(tmp_path / 'out', domain, model='reid_net', teacher=str(teacher_dir),
                         init_checkpoint=str(student_dir), **overrides)
    return DistillConfig(**values)


@pytest.mark.parametrize('lam', [0.0, 0.3, 0.8, 1.0])
@pytest.mark.slow
def test_distillation_objective_is_eq4(lam, teacher_dir, student_dir):
    """(1-λ)·CE(student logits, labels) + λ·mean|f_student - f_teacher|, computed by hand."""
    torch.manual_seed(0)
    teacher = load_teacher(str(teacher_dir), torch.device('cpu'))
    student = ReIDTrainModule(load_model(student_dir)).train()
    images, pids = torch.randn(4, 3, *IMG_SIZE), torch.tensor([0, 1, 2, 1])
    loss, _ = distillation_step(teacher, DistillationLoss(lam))(student, images, pids)
    with torch.no_grad():
        target = teacher.forward_reid(images).embedding
    out = student(images)  # the same forward again (no dropout): same logits and embedding
    expected = (1 - lam) * F.cross_entropy(out.logits[0], pids) + lam * (out.embedding - target).abs().mean()
    torch.testing.assert_close(loss, expected)


@pytest.mark.slow
def test_teacher_stays_frozen_in_eval_mode_with_zero_state(tmp_path, domain, teacher_dir, student_dir, monkeypatch):
    teacher = load_teacher(str(teacher_dir), torch.device('cpu'))
    before = copy.deepcopy(teacher.state_dict())
    monkeypatch.setattr(distill_module, 'load_teacher', lambda source, device: teacher)
    run_distill(_distill_config(tmp_path, domain, teacher_dir, student_dir, epochs=2))
    assert not teacher.training
    assert all(not p.requires_grad and p.grad is None for p in teacher.parameters())
    for name, value in teacher.state_dict().items():
        assert torch.equal(value, before[name]), f'teacher tensor {name} changed'
    cells = [m for m in teacher.modules() if isinstance(m, BConvCell)]
    assert cells and all(c.latent_state.numel() == 0 for c in cells), 'teacher state never written'


@pytest.mark.slow
def test_student_starts_from_its_own_weights_and_stands_alone(tmp_path, domain, teacher_dir, student_dir):
    result = run_distill(_distill_config(tmp_path, domain, teacher_dir, student_dir))
    student = load_model(tmp_path / 'out' / 'last')
    assert not any(isinstance(m, BConvCell) for m in student.modules())
    assert student.num_features == load_model(teacher_dir).num_features
    assert result['last']['eval'][domain['label']]['num_query'] > 0


@pytest.mark.slow
def test_adapter_bridges_different_embedding_widths(tmp_path, domain, teacher_dir):
    narrow = save_untrained(tmp_path / 'narrow', 'reid_net', **dict(TINY_MODEL_ARGS, embed_dim=32))
    cfg = _distill_config(tmp_path, domain, teacher_dir, narrow, model_args=dict(TINY_MODEL_ARGS, embed_dim=32))
    run_distill(cfg)
    state = torch.load(tmp_path / 'out' / 'last' / 'train_state.pt', weights_only=True)
    assert state['adapter']['weight'].shape == (64, 32)
    assert not any('adapter' in key for key in load_model(tmp_path / 'out' / 'last').state_dict())


def test_missing_teacher_is_a_clear_error(tmp_path, domain, student_dir):
    with pytest.raises(ValueError, match='teacher'):
        run_distill(_distill_config(tmp_path, domain, '', student_dir))


def test_metric_terms_eq4_has_no_place_for_are_reported(tmp_path, domain, student_dir, caplog):
    """A bot_* student's recipe sets triplet and centre loss; distillation must say it does not use them."""
    cfg = _distill_config(tmp_path, domain, '', student_dir, sampler='pk', triplet_weight=1.0, center_weight=5e-4)
    with caplog.at_level('WARNING'), pytest.raises(ValueError, match='teacher'):
        run_distill(cfg)
    assert 'triplet_weight=1.0, center_weight=0.0005 (from the config' in caplog.text and 'not used' in caplog.text


def test_a_teacher_trained_at_another_input_size_is_named_with_it(tmp_path, domain, student_dir, caplog):
    """The teacher embeds the student's batches: at another size than its own its targets are worse, silently
    unless said."""
    import timm

    from ptl_timm.engine import save_checkpoint
    from ptl_timm.hub import set_preprocessing
    teachers = {}
    for size in (IMG_SIZE, (IMG_SIZE[0] * 2, IMG_SIZE[1] * 2)):
        model = timm.create_model('ptl_net', pretrained=False, num_classes=8, **TINY_MODEL_ARGS)
        set_preprocessing(model, size)
        teachers[size] = save_checkpoint(tmp_path / f'teacher{size[0]}', model)
    for size, teacher in teachers.items():
        caplog.clear()
        with caplog.at_level('WARNING'):
            run_distill(_distill_config(tmp_path, domain, teacher, student_dir, overwrite=True))
        named = f'input_size (3, {IMG_SIZE[0]}, {IMG_SIZE[1]}) instead of its (3, {size[0]}, {size[1]})'
        assert (named in caplog.text) == (size != IMG_SIZE), caplog.text
