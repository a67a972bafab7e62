"""The PTL network on timm backbones: registry, contract extras, state semantics at model level."""
import contextlib

import pytest
import torch

import timm
import ptl_timm
from ptl_timm import BConvCell, ReIDOutput, create_ptl, create_reid
from ptl_timm.models.registry import list_models
from model_support import cell_states, eval_outputs_around_training

SMALL = (64, 32)


def tiny_ptl(**kwargs) -> ptl_timm.ReIDNet:
    torch.manual_seed(0)
    return create_ptl('resnet18', num_classes=kwargs.pop('num_classes', 7), **kwargs)


@contextlib.contextmanager
def batch_invariant_kernels():
    """oneDNN and multi-threaded CPU convolutions pick blocking by batch size, so a sample's float
    result can differ in the last bit between batch sizes for any network. With one thread and the
    native kernels every sample is computed the same way, which isolates what the model itself does."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.backends.mkldnn.flags(enabled=False):
            yield
    finally:
        torch.set_num_threads(threads)


def test_import_registers_the_paper_models():
    names = set(list_models())
    assert {'ptl_resnet50', 'ptl_densenet161', 'reid_resnet50', 'reid_densenet161'} <= names
    model = timm.create_model('ptl_densenet161', device='meta')
    assert model.pretrained_cfg['input_size'] == (3, 256, 128)
    assert ptl_timm.__version__


@pytest.mark.parametrize('ptl_name, plain_name, paper_ptl, paper_plain', [
    ('ptl_resnet50', 'reid_resnet50', 35, 28),
    ('ptl_densenet161', 'reid_densenet161', 42, 32),
])
def test_parameter_counts_match_the_paper(ptl_name, plain_name, paper_ptl, paper_plain):
    """Paper §5.4: ResNet-50 28M → PTL 35M, DenseNet-161 32M → PTL 42M (millions, rounded)."""
    def millions(name):
        model = timm.create_model(name, num_classes=751, device='meta')
        return sum(p.numel() for p in model.parameters()) / 1e6
    assert round(millions(ptl_name)) == paper_ptl
    assert round(millions(plain_name)) == paper_plain


@pytest.mark.parametrize('backbone, backbone_args', [
    ('test_convnext', {}),
    ('test_efficientnet', {}),
    ('regnetx_002', {}),
    ('test_mambaout', {}),  # NHWC feature maps
    ('swin_tiny_patch4_window7_224', dict(img_size=SMALL, window_size=4, depths=(1, 1, 1, 1), embed_dim=32,
                                          num_heads=(1, 2, 4, 8))),
])
@pytest.mark.slow
def test_create_ptl_on_other_families_forward_backward(backbone, backbone_args):
    torch.manual_seed(0)
    model = create_ptl(backbone, num_classes=5, backbone_args=backbone_args).train()
    x = torch.randn(2, 3, *SMALL)
    logits = model(x)
    assert logits.shape == (2, 5)
    logits.square().mean().backward()
    first_cell = model.side.stem_cell.gates.weight
    assert first_cell.grad is not None and first_cell.grad.abs().sum() > 0
    backbone_grads = [p.grad for p in model.backbone.parameters() if p.requires_grad]
    assert all(g is not None for g in backbone_grads)
    assert all(s.numel() > 0 for s in cell_states(model))


def test_unknown_kwarg_raises_type_error():
    with pytest.raises(TypeError):
        timm.create_model('ptl_resnet50', num_clases=10, device='meta')


def test_device_and_dtype_reach_every_layer():
    model = create_ptl('resnet18', num_classes=3, dtype=torch.float64)
    assert {p.dtype for p in model.parameters()} == {torch.float64}
    meta = timm.create_model('ptl_resnet50', device='meta')
    assert {p.device.type for p in meta.parameters()} == {'meta'}


def test_forward_reid_matches_timm_forward():
    model = tiny_ptl().eval()
    x = torch.randn(3, 3, *SMALL)
    with torch.no_grad():
        out = model.forward_reid(x)
        assert isinstance(out, ReIDOutput)
        torch.testing.assert_close(out.logits[0], model(x))
        torch.testing.assert_close(out.embedding, model.forward_head(model.forward_features(x), pre_logits=True))
    assert out.embedding.shape == (3, model.num_features)


def test_reset_classifier_gives_embeddings_then_new_identities():
    model = tiny_ptl().eval()
    x = torch.randn(2, 3, *SMALL)
    with torch.no_grad():
        embedding = model.forward_head(model.forward_features(x), pre_logits=True)
        model.reset_classifier(0)
        torch.testing.assert_close(model(x), embedding)
        model.reset_classifier(11)
        assert model(x).shape == (2, 11)
    assert model.get_classifier().fc.out_features == 11


def test_feature_info_and_intermediates_agree():
    model = tiny_ptl().eval()
    x = torch.randn(1, 3, *SMALL)
    with torch.no_grad():
        final, intermediates = model.forward_intermediates(x)
    assert [t.shape[1] for t in intermediates] == [f['num_chs'] for f in model.feature_info]
    assert [SMALL[0] // t.shape[2] for t in intermediates] == [f['reduction'] for f in model.feature_info]
    torch.testing.assert_close(final, model.forward_features(x))


def test_plain_student_has_no_cells_and_same_embedding_width():
    torch.manual_seed(0)
    student, teacher = create_reid('resnet18', num_classes=4), create_ptl('resnet18', num_classes=4)
    assert not any(isinstance(m, BConvCell) for m in student.modules())
    assert student.num_features == teacher.num_features
    assert sum(p.numel() for p in teacher.parameters()) > sum(p.numel() for p in student.parameters())


def test_eval_features_do_not_depend_on_batch_or_training_history():
    model = tiny_ptl(num_classes=0)
    with batch_invariant_kernels(), torch.inference_mode():
        out = eval_outputs_around_training(model, torch.randn(4, 3, *SMALL), steps=3)
    assert all(s.numel() > 0 for s in out['trained_states'])
    assert all(torch.equal(a, b) for a, b in zip(out['final_states'], out['trained_states']))
    assert torch.equal(out['alone'][0], out['batched'][0])
    assert torch.equal(out['alone'], out['after_training'])


@pytest.mark.slow
def test_training_features_depend_on_previous_batches():
    model = tiny_ptl(num_classes=0).train()
    x = torch.randn(2, 3, *SMALL)
    with torch.no_grad():
        first = model(x)
        model.train()  # epoch boundary: the state is back to zero
        again = model(x)
        model(torch.randn(2, 3, *SMALL))
        later = model(x)
    torch.testing.assert_close(first, again)
    assert not torch.allclose(first, later)


def test_latent_state_not_saved_anywhere(tmp_path):
    from safetensors.torch import load_file
    from ptl_timm.hub import save_pretrained
    model = tiny_ptl().train()
    model(torch.randn(2, 3, *SMALL))
    assert not any('latent_state' in k for k in model.state_dict())
    save_pretrained(model, tmp_path / 'ckpt', model_args=dict(backbone='resnet18', num_classes=7))
    assert not any('latent_state' in k for k in load_file(tmp_path / 'ckpt' / 'model.safetensors'))


def test_timm_ema_does_not_average_the_state():
    from timm.utils import ModelEmaV3
    model = tiny_ptl().train()
    ema = ModelEmaV3(model, decay=0.5)
    model(torch.randn(2, 3, *SMALL))
    ema.update(model)
    assert not any('latent_state' in k for k in ema.module.state_dict())
    assert all(s.numel() == 0 for s in cell_states(ema.module))


def test_ddp_ignore_list_names_every_cell_state():
    model = tiny_ptl()
    states = {n for n, _ in model.named_buffers() if n.endswith('latent_state')}
    assert len(states) == sum(isinstance(m, BConvCell) for m in model.modules())
    assert states == set(model._ddp_params_and_buffers_to_ignore)


def test_reset_state_zeroes_every_cell():
    model = tiny_ptl().train()
    model(torch.randn(2, 3, *SMALL))
    model.reset_state()
    assert all(s.numel() == 0 for s in cell_states(model))


@pytest.mark.slow
def test_grad_checkpointing_model_matches_plain_step():
    plain, ckpt = tiny_ptl().train(), tiny_ptl().train()
    ckpt.set_grad_checkpointing(True)
    for _ in range(2):
        x = torch.randn(2, 3, *SMALL)
        plain(x).sum().backward()
        ckpt(x).sum().backward()
    for a, b in zip(cell_states(plain), cell_states(ckpt)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(
        plain.side.stem_cell.gates.weight.grad, ckpt.side.stem_cell.gates.weight.grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize('name', ['ptl_resnet50.market1501', 'mgn_resnet50.msmt17'])
def test_unpublished_tag_says_so(name):
    from ptl_timm.hub.pretrained import UnpublishedWeightsError
    with pytest.raises(UnpublishedWeightsError, match='not in the weights manifest'):
        timm.create_model(name, device='meta')


def test_capacity_matched_side_network_has_ptls_parameters_and_macs_without_cells():
    """``side_block='conv'``: the control arm of the state benchmark adds what PTL adds in parameters and
    multiply-adds (within 5%, the benchmark's criterion), but holds no BConv-Cell and no state."""
    from ptl_timm.models.complexity import count_macs
    ptl, matched = (create_ptl('resnet18', num_classes=7, embed_dim=512, side_block=block) for block in ('bconv', 'conv'))
    plain = create_reid('resnet18', num_classes=7, embed_dim=512)

    def params(model):
        return sum(p.numel() for p in model.parameters())
    size = (3, 128, 64)
    added = {name: (params(m) - params(plain), count_macs(m, size) - count_macs(plain, size))
             for name, m in (('ptl', ptl), ('matched', matched))}
    assert added['ptl'][0] > 0 and added['ptl'][1] > 0
    for got, want in zip(added['matched'], added['ptl']):
        assert abs(got - want) <= 0.05 * want
    assert not any(isinstance(m, BConvCell) for m in matched.modules())
    matched.train()
    x = torch.randn(4, 3, *SMALL)
    first = matched.forward_features(x)
    matched.forward_features(torch.randn(4, 3, *SMALL))
    assert torch.equal(matched.forward_features(x), first)  # nothing carried between batches
    with pytest.raises(ptl_timm.errors.InputError, match='side_block'):
        create_ptl('resnet18', side_block='lstm')
