"""MGN and ptl_mgn: parameter counts, multi-granularity shapes, pretrained mapping, training, cell state."""
import copy
import math

import pytest
import torch
from safetensors.torch import save_file

import timm
from ptl_timm import MGN, BConvCell, ReIDOutput
from ptl_timm.losses import ReIDLoss
from model_support import cell_states, eval_outputs_around_training

TINY = (96, 32)  # smallest input whose part maps (6×2) still split into 2 and 3 stripes
# ResNet-50's widths and maps with a block per stage (two in layer3, which the branches share): where
# the point is the logic, not the depth
SHALLOW = dict(layers=(1, 1, 2, 1))


@pytest.fixture(scope='module')
def ptl_mgn() -> MGN:
    torch.manual_seed(0)
    return timm.create_model('ptl_mgn', num_classes=4, **SHALLOW).eval()


@pytest.mark.parametrize('name, kwargs, expected', [
    ('mgn_resnet50', {}, 66_678_200),  # the PTL paper's "MGN 66m" (one shared reduction)
    ('mgn_resnet50', dict(shared_reduction=False), 70_351_800),  # eight reductions
    ('ptl_mgn', {}, 80_887_992),  # the official MGN_PTL, counting only modules used in forward
])
def test_parameter_counts_at_751_classes(name, kwargs, expected):
    model = timm.create_model(name, num_classes=751, device='meta', **kwargs)
    assert sum(p.numel() for p in model.parameters()) == expected


@pytest.mark.parametrize('img_size', [(384, 128), (256, 128)])
@pytest.mark.slow
def test_retrieval_feature_logits_and_triplet_features_shapes(ptl_mgn, img_size):
    with torch.no_grad():
        out = ptl_mgn.forward_reid(torch.randn(2, 3, *img_size))
    assert isinstance(out, ReIDOutput)
    assert out.embedding.shape == (2, 2048)
    assert len(out.logits) == 8 and all(l.shape == (2, 4) for l in out.logits)
    assert len(out.metric_features) == 3 and all(f.shape == (2, 256) for f in out.metric_features)
    # the retrieval feature starts with the three reduced global features
    torch.testing.assert_close(out.embedding[:, :768], torch.cat(out.metric_features, 1))


@pytest.mark.parametrize('img_size', [(384, 128), (256, 128)])
def test_feature_map_is_three_branches_on_the_stride16_grid(img_size):
    model = timm.create_model('mgn_resnet50', device='meta')
    features = model.forward_features(torch.randn(1, 3, *img_size, device='meta'))
    assert features.shape == (1, 3 * 2048, img_size[0] // 16, img_size[1] // 16)
    global_branch, part_branch = model.branches[0], model.branches[1]
    shared = torch.randn(1, 1024, img_size[0] // 16, img_size[1] // 16, device='meta')
    assert global_branch(shared).shape[-2:] == (img_size[0] // 32, img_size[1] // 32)  # stride-2 conv5
    assert part_branch(shared).shape[-2:] == shared.shape[-2:]  # stride-1 conv5


def stripe_windows(rows: int, num_stripes: int):
    """Adaptive pooling windows [floor(i·H/n), ceil((i+1)·H/n)): the official 12- and 8-row stripes
    at 384×128, overlapping by a row where n does not divide H."""
    return [(i * rows // num_stripes, math.ceil((i + 1) * rows / num_stripes)) for i in range(num_stripes)]


@pytest.mark.parametrize('rows', [24, 16, 6])
def test_pooling_gives_branch_globals_then_2_and_3_stripes(rows):
    model = timm.create_model('mgn_resnet50', device='meta')
    row_index = torch.arange(rows, dtype=torch.float32).view(1, 1, rows, 1).expand(1, 3 * model.branch_chs, rows, 2)
    last_rows = [int(p.flatten()[0]) for p in model._pool_parts(row_index.contiguous())]
    first_rows = [-int(p.flatten()[0]) for p in model._pool_parts(-row_index.contiguous())]
    windows = [(0, rows)] * 3 + stripe_windows(rows, 2) + stripe_windows(rows, 3)
    assert list(zip(first_rows, [r + 1 for r in last_rows])) == windows
    if rows == 24:
        assert windows[3:] == [(0, 12), (12, 24), (0, 8), (8, 16), (16, 24)]


def test_global_max_survives_the_repeat_onto_the_part_grid():
    model = timm.create_model('mgn_resnet50', device='meta')
    coarse, grid = torch.randn(1, 4, 7, 3), torch.zeros(1, 4, 13, 5)
    repeated = model.grid(coarse, grid)
    assert repeated.shape[-2:] == grid.shape[-2:]
    torch.testing.assert_close(repeated.amax((2, 3)), coarse.amax((2, 3)))


@pytest.mark.slow
def test_forward_is_the_mean_of_the_eight_logits(ptl_mgn):
    x = torch.randn(2, 3, *TINY)
    with torch.no_grad():
        out = ptl_mgn.forward_reid(x)
        torch.testing.assert_close(ptl_mgn(x), torch.stack(out.logits).mean(0))
        torch.testing.assert_close(
            ptl_mgn.forward_head(ptl_mgn.forward_features(x), pre_logits=True), out.embedding)


@pytest.mark.slow
def test_intermediates_follow_feature_info(ptl_mgn):
    x = torch.randn(1, 3, *TINY)
    with torch.no_grad():
        final, intermediates = ptl_mgn.forward_intermediates(x)
        torch.testing.assert_close(final, ptl_mgn.forward_features(x))
    assert [t.shape[1] for t in intermediates] == [f['num_chs'] for f in ptl_mgn.feature_info]
    assert [TINY[0] // t.shape[2] for t in intermediates] == [f['reduction'] for f in ptl_mgn.feature_info]


@pytest.mark.slow
def test_without_classifiers_forward_gives_the_retrieval_feature():
    torch.manual_seed(0)
    model = timm.create_model('mgn_resnet50', num_classes=0, **SHALLOW).eval()
    with torch.no_grad():
        x = torch.randn(2, 3, *TINY)
        out = model.forward_reid(x)
        torch.testing.assert_close(model(x), out.embedding)
    assert out.logits == []


def test_unsupported_pooling_raises_value_error():
    with pytest.raises(ValueError, match="'max' or ''"):
        timm.create_model('mgn_resnet50', global_pool='avg', device='meta')


@pytest.mark.slow
def test_pretrained_resnet50_fills_trunk_and_every_branch(tmp_path):
    torch.manual_seed(1)
    resnet_state = {k: v + 1 for k, v in timm.create_model('resnet50').state_dict().items()}
    weights = tmp_path / 'resnet50.safetensors'
    save_file(resnet_state, str(weights))
    torch.manual_seed(2)
    initialised = timm.create_model('ptl_mgn', num_classes=3).state_dict()
    torch.manual_seed(2)
    model = timm.create_model(
        'ptl_mgn', num_classes=3, pretrained=True, pretrained_cfg_overlay=dict(file=str(weights)))
    loaded = model.state_dict()

    def source_key(key):
        for prefix in ('stem.', 'trunk.'):
            if key.startswith(prefix):
                return key[len(prefix):]
        return key.split('.', 2)[2] if key.startswith('branches.') else None

    backbone_keys = [k for k in loaded if source_key(k) is not None]
    assert sum(k.startswith('branches.2.layer4.') for k in backbone_keys) > 0
    for key in backbone_keys:
        assert torch.equal(loaded[key], resnet_state[source_key(key)]), key
    for key in (k for k in loaded if source_key(k) is None):  # side network, reductions, classifiers
        assert torch.equal(loaded[key], initialised[key]), key


def test_pretrained_state_dict_of_another_network_names_missing_tensors():
    from ptl_timm.models.mgn import filter_resnet_pretrained
    model = timm.create_model('mgn_resnet50', device='meta')
    resnet18 = timm.create_model('resnet18', device='meta').state_dict()
    with pytest.raises(KeyError, match='ResNet-50 tensors'):
        filter_resnet_pretrained(resnet18, model)


@pytest.mark.slow
def test_training_ptl_mgn_with_the_mgn_objective_reduces_the_loss():
    torch.manual_seed(0)
    model = timm.create_model('ptl_mgn', num_classes=2, **SHALLOW).train()
    images = torch.randn(4, 3, *TINY)
    targets = torch.tensor([0, 0, 1, 1])  # P=2 identities × K=2 images
    criterion = ReIDLoss(triplet_weight=1.0, margin=1.2)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-4)  # the official optimiser
    losses = []
    for _ in range(3):
        loss, parts = criterion(model.forward_reid(images), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert set(parts) == {'ce', 'triplet'}
    assert losses[-1] < 0.5 * losses[0], losses
    assert all(s.numel() > 0 for s in cell_states(model))


@pytest.mark.slow
def test_eval_features_do_not_depend_on_batch_or_training_history():
    torch.manual_seed(0)
    model = timm.create_model('ptl_mgn', num_classes=0, **SHALLOW)
    with torch.no_grad():
        out = eval_outputs_around_training(model, torch.randn(3, 3, *TINY), steps=2)
    assert all(s.numel() > 0 for s in out['trained_states'])
    assert all(torch.equal(a, b) for a, b in zip(out['final_states'], out['trained_states']))
    torch.testing.assert_close(out['batched'][:1], out['alone'], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out['after_training'], out['alone'], rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_latent_state_is_outside_state_dict_ignored_by_ddp_and_reset_by_train():
    torch.manual_seed(0)
    model = timm.create_model('ptl_mgn', num_classes=3, **SHALLOW).train()
    with torch.no_grad():
        model(torch.randn(2, 3, *TINY))
    states = {n for n, _ in model.named_buffers() if n.endswith('latent_state')}
    assert len(states) == 8 == sum(isinstance(m, BConvCell) for m in model.modules())
    assert not any('latent_state' in k for k in model.state_dict())
    assert states == set(model._ddp_params_and_buffers_to_ignore)
    assert all(s.numel() > 0 for s in cell_states(model))
    model.train()
    assert all(s.numel() == 0 for s in cell_states(model))
    model(torch.randn(2, 3, *TINY))
    model.reset_state()
    assert all(s.numel() == 0 for s in cell_states(model))


@pytest.mark.slow
def test_grad_checkpointing_gives_the_same_losses_and_gradients_over_steps():
    torch.manual_seed(0)
    plain = timm.create_model('ptl_mgn', num_classes=2, **SHALLOW).train()
    checkpointed = copy.deepcopy(plain)
    checkpointed.set_grad_checkpointing(True)
    images, targets = torch.randn(4, 3, *TINY), torch.tensor([0, 0, 1, 1])
    criterion = ReIDLoss(triplet_weight=1.0, margin=1.2)
    losses = {}
    for name, model in (('plain', plain), ('checkpointed', checkpointed)):
        for _ in range(2):  # the second step reads the state the first one stored
            model.zero_grad()
            loss, _ = criterion(model.forward_reid(images), targets)
            loss.backward()
        losses[name] = loss.item()
    assert losses['plain'] == losses['checkpointed']
    for p, q in zip(plain.parameters(), checkpointed.parameters()):
        torch.testing.assert_close(q.grad, p.grad)


@pytest.mark.slow
def test_save_pretrained_round_trip_keeps_the_variant(tmp_path):
    from ptl_timm.hub import load_model, save_pretrained
    torch.manual_seed(0)
    model = timm.create_model('mgn_resnet50', num_classes=3, shared_reduction=False, **SHALLOW).eval()
    save_pretrained(model, tmp_path / 'mgn')
    restored = load_model(tmp_path / 'mgn').eval()
    assert len(restored.reductions) == 8 and len(restored.branches[1].layer3) == 1, 'the variant and its depth'
    images = torch.randn(2, 3, *TINY)
    with torch.no_grad():
        torch.testing.assert_close(restored(images), model(images))


@pytest.mark.parametrize('ptl', [False, True])
@pytest.mark.slow
def test_last_stride_one_keeps_the_global_branch_on_the_part_grid(ptl):
    torch.manual_seed(0)
    model = timm.create_model('ptl_mgn' if ptl else 'mgn_resnet50', num_classes=5, last_stride=1, **SHALLOW).eval()
    assert model.branches[0].layer4[0].conv2.stride == (1, 1)
    if ptl:
        assert model.side.branch_cells[0].gates.stride == (1, 1)
    x = torch.randn(2, 3, 96, 32)
    with torch.no_grad():
        maps = [branch(model._forward_trunk(x)[-1]) for branch in model.branches]
        out = model.forward_reid(x)
    assert {tuple(m.shape[-2:]) for m in maps} == {(6, 2)}  # stride 16: no upsampling of the global branch
    assert out.embedding.shape == (2, 2048) and len(out.logits) == 8


def test_last_stride_other_than_one_is_a_user_error():
    from ptl_timm.errors import InputError
    with pytest.raises(InputError, match='last_stride must be None'):
        timm.create_model('mgn_resnet50', last_stride=2, device='meta')


def test_layers_need_two_blocks_in_layer3():
    from ptl_timm.errors import InputError
    with pytest.raises(InputError, match='layer3'):
        timm.create_model('mgn_resnet50', layers=(1, 1, 1, 1), device='meta')
