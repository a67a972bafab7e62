"""The strong-baseline (BoT) options of every ReID model: BNNeck, last stride 1, GeM, the BoT models,
and backbones with a fixed input size."""
import importlib.util

import pytest
import torch
import torch.nn.functional as F

import timm
from ptl_timm import BConvCell, create_ptl
from ptl_timm.errors import InputError
from ptl_timm.hub.export import export_onnx
from ptl_timm.hub import load_model, save_pretrained
from ptl_timm.models.ptl_net import BNNeck
from ptl_timm.models.registry import list_models

SMALL = (64, 32)
BOT_OPTIONS = dict(neck='bnneck', last_stride=1, global_pool='gem', classifier_dims=())


def tiny(ptl: bool = True, num_classes: int = 7, **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_ptl('resnet18', ptl=ptl, num_classes=num_classes, **kwargs)


def trained_a_little(model: torch.nn.Module) -> torch.nn.Module:
    """A few training forwards: BatchNorm statistics move away from their (0, 1) start."""
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(4, 3, *SMALL))
    return model.eval()


@pytest.mark.parametrize('ptl', [True, False])
@pytest.mark.slow
def test_bnneck_gives_the_triplet_the_pooled_feature_and_the_classifier_the_normalised_one(ptl):
    model = tiny(ptl, neck='bnneck', classifier_dims=()).train()
    x = torch.randn(4, 3, *SMALL)
    out = model.forward_reid(x)
    pooled = out.metric_features[0]
    assert pooled.shape == out.embedding.shape == (4, model.head_hidden_size)
    # train mode: batch statistics, a scale and no shift
    expected = F.batch_norm(pooled, None, None, model.bnneck.weight, None, training=True)
    torch.testing.assert_close(out.embedding, expected)
    torch.testing.assert_close(out.logits[0], out.embedding @ model.head.fc.weight.t())
    assert model.head.fc.bias is None

    model.eval()
    with torch.no_grad():
        out = model.forward_reid(x)
        bn = model.bnneck
        expected = (out.metric_features[0] - bn.running_mean) / (bn.running_var + bn.eps).sqrt() * bn.weight
        torch.testing.assert_close(out.embedding, expected)
        torch.testing.assert_close(model.forward_head(model.forward_features(x), pre_logits=True), out.embedding)
        torch.testing.assert_close(model(x), out.logits[0])


def test_without_bnneck_the_triplet_feature_is_the_embedding():
    model = tiny(ptl=False).eval()
    with torch.no_grad():
        out = model.forward_reid(torch.randn(2, 3, *SMALL))
    assert torch.equal(out.metric_features[0], out.embedding)
    assert model.head.fc.bias is not None


def test_bnneck_has_no_shift_and_every_parameter_gets_a_gradient():
    model = tiny(**BOT_OPTIONS).train()
    assert isinstance(model.bnneck, BNNeck) and model.bnneck.bias is None
    model(torch.randn(4, 3, *SMALL)).square().mean().backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []


@pytest.mark.parametrize('backbone', ['resnet18', 'test_efficientnet', 'densenet121'])
def test_last_stride_one_keeps_the_last_stage_resolution_and_the_cells_follow(backbone):
    torch.manual_seed(0)
    model = create_ptl(backbone, num_classes=3, last_stride=1).eval()
    reductions = [f['reduction'] for f in model.feature_info]
    assert reductions[-1] == reductions[-2] == 16
    with torch.no_grad():
        intermediates = model.forward_intermediates(torch.randn(2, 3, *SMALL), intermediates_only=True)
    assert [SMALL[0] // t.shape[-2] for t in intermediates] == reductions
    assert [SMALL[1] // t.shape[-1] for t in intermediates] == reductions
    assert model.side.cells[-1].gates.stride == (1, 1)  # the last cell meets the stride-16 last stage
    assert all(c.gates.stride == (2, 2) for c in model.side.cells[:-1])


def test_last_stride_one_refuses_a_patchify_downsampler():
    with pytest.raises(InputError, match=r'last_stride=1 .*test_convnext downsamples with stages_3\.downsample'):
        create_ptl('test_convnext', last_stride=1)


@pytest.mark.parametrize('kwargs, match', [
    (dict(neck='bn'), 'neck must be one of'),
    (dict(last_stride=2), 'last_stride must be None'),
    (dict(embed_dim=0), 'embed_dim=0 .* needs ptl=False'),
])
def test_invalid_options_are_user_errors(kwargs, match):
    with pytest.raises(InputError, match=match):
        timm.create_model('ptl_net', backbone='resnet18', device='meta', **kwargs)


def test_bot_models_are_registered_so_timm_contract_runs_them():
    assert {'bot_resnet50', 'ptl_bot_resnet50'} <= set(list_models())


def test_bot_resnet50_is_the_bot_architecture():
    model = timm.create_model('bot_resnet50', num_classes=751, device='meta')
    assert isinstance(model.neck, torch.nn.Identity) and model.side is None
    assert isinstance(model.bnneck, BNNeck)
    assert isinstance(model.head.hidden, torch.nn.Identity) and model.head.fc.bias is None
    assert [f['reduction'] for f in model.feature_info][-2:] == [16, 16]
    # ResNet-50 without its ImageNet fc (23.5m) + BNNeck scale + a 2048 × 751 classifier
    assert sum(p.numel() for p in model.parameters()) == 23_508_032 + 2048 + 2048 * 751
    features = model.forward_features(torch.zeros(1, 3, 256, 128, device='meta'))
    assert tuple(features.shape[-2:]) == model.pretrained_cfg['pool_size'] == (16, 8)


def test_ptl_bot_resnet50_adds_cells_fused_by_the_1x1_conv():
    plain = timm.create_model('bot_resnet50', num_classes=751, device='meta')
    model = timm.create_model('ptl_bot_resnet50', num_classes=751, device='meta')
    assert sum(isinstance(m, BConvCell) for m in model.modules()) == 5
    assert model.neck.conv.in_channels == 2048 + model.side.out_chs
    assert model.head_hidden_size == plain.head_hidden_size == 2048
    features = model.forward_features(torch.zeros(1, 3, 256, 128, device='meta'))
    assert tuple(features.shape[-2:]) == (16, 8)


@pytest.mark.slow
def test_options_survive_reset_classifier():
    model = tiny(**BOT_OPTIONS)
    with torch.no_grad():
        model.global_pool.p.fill_(4.5)  # as if learnt
    model.reset_classifier(5)
    assert model.global_pool.p.item() == 4.5 and model.head.fc.out_features == 5
    model.reset_classifier(0, 'gem')
    assert model.global_pool.p.item() == 4.5
    x = torch.randn(2, 3, *SMALL)
    model.eval()
    with torch.no_grad():
        assert model(x).shape == (2, model.head_hidden_size)
        model.reset_classifier(0, 'catavgmax')  # the pooled width doubles: so does the BNNeck
        assert model.bnneck.num_features == model.head_hidden_size == 2 * model.num_features
        assert model.forward_head(model.forward_features(x), pre_logits=True).shape == (2, model.head_hidden_size)
        model.reset_classifier(0, '')
        assert model(x).shape == (2, model.num_features, 4, 2)


def test_options_survive_features_only():
    torch.manual_seed(0)
    model = timm.create_model('ptl_net', backbone='resnet18', features_only=True, **BOT_OPTIONS).eval()
    with torch.no_grad():
        maps = model(torch.randn(2, 3, *SMALL))
    assert [SMALL[0] // m.shape[-2] for m in maps] == [2, 4, 8, 16, 16]


@pytest.mark.slow
def test_options_survive_a_hub_round_trip(tmp_path):
    model = trained_a_little(tiny(**BOT_OPTIONS))
    with torch.no_grad():
        model.global_pool.p.fill_(3.7)
    save_pretrained(model, tmp_path / 'bot')
    loaded = load_model(tmp_path / 'bot').eval()
    x = torch.randn(2, 3, *SMALL)
    with torch.no_grad():
        torch.testing.assert_close(loaded.forward_reid(x).embedding, model.forward_reid(x).embedding)
    assert loaded.global_pool.p.item() == pytest.approx(3.7)
    assert isinstance(loaded.bnneck, BNNeck) and loaded.feature_info[-1]['reduction'] == 16


@pytest.mark.slow
def test_options_script_and_match_eager():
    model = trained_a_little(tiny(**BOT_OPTIONS))
    x = torch.randn(2, 3, *SMALL)
    with torch.no_grad():
        torch.testing.assert_close(torch.jit.script(model)(x), model(x))


@pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ('onnx', 'onnxscript', 'onnxruntime')),
    reason='the onnx extra (onnx, onnxscript) and onnxruntime are needed')
@pytest.mark.slow
def test_options_export_to_onnx(tmp_path):
    model = trained_a_little(tiny(**BOT_OPTIONS))
    result = export_onnx(model, tmp_path / 'bot.onnx', input_size=(3, *SMALL))
    assert result.max_abs_diff <= 1e-4


def test_fixed_input_size_backbone_is_built_for_the_reid_input_size():
    """The wrapper reports 256×128, so a ViT is built for 256×128 (timm's img_size)."""
    torch.manual_seed(0)
    model = create_ptl('test_vit', num_classes=3).eval()
    assert model.pretrained_cfg['input_size'] == (3, 256, 128)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 256, 128)).shape == (1, 3)
    resized = create_ptl('test_vit', num_classes=3, pretrained_cfg_overlay=dict(input_size=(3, 128, 64))).eval()
    with torch.no_grad():
        assert resized(torch.randn(1, 3, 128, 64)).shape == (1, 3)


@pytest.mark.parametrize('name, kwargs, backbone_prefixes', [
    ('ptl_net', dict(backbone='resnet18', **BOT_OPTIONS), ('backbone.',)),
    ('ptl_mgn', {}, ('stem.', 'trunk.', 'branches.')),
])
def test_freeze_backbone_leaves_only_the_new_layers_training(name, kwargs, backbone_prefixes):
    model = timm.create_model(name, num_classes=5, device='meta', **kwargs)
    model.freeze_backbone()
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert frozen and all(n.startswith(backbone_prefixes) for n in frozen)
    assert trainable and not any(n.startswith(backbone_prefixes) for n in trainable)
    assert any(n.startswith('side.') for n in trainable)
    model.freeze_backbone(False)
    assert all(p.requires_grad for p in model.parameters())
