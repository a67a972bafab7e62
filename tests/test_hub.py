"""Loading and saving: folders, files, pretrained tags from the weights manifest, ImageNet backbone
weights, the offline Hub cache, classifier changes, strict loading, the saved preprocessing, the
fail-fast check of Hub downloads and the latent state."""
import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import safetensors.torch
import torch
from PIL import Image

import timm
import ptl_timm
from ptl_timm.cli import main
from ptl_timm.errors import CheckpointError
from ptl_timm.eval.features import load_features
from ptl_timm.hub import WEIGHTS_NAME, load_model, save_pretrained, set_preprocessing
from ptl_timm.hub.pretrained import (
    HUB_ORG, MANIFEST_ENV, ManifestError, UnpublishedWeightsError, WeightsUnavailableError, load_manifest,
    manifest_cfgs, register_published_weights,
)
from ptl_timm.hub.publish import publish
from ptl_timm.models import ptl_net
from hub_support import build_hub_cache, offline_hub

SMALL = (3, 64, 32)


def tiny_model(name: str = 'ptl_net', backbone: str = 'test_resnet', num_classes: int = 7, seed: int = 0):
    torch.manual_seed(seed)
    return timm.create_model(name, backbone=backbone, num_classes=num_classes)


def embeddings(model: torch.nn.Module, seed: int = 1) -> torch.Tensor:
    images = torch.randn((2, *SMALL), generator=torch.Generator().manual_seed(seed))
    with torch.inference_mode():
        return model.eval().forward_reid(images).embedding


def train_steps(model: torch.nn.Module, steps: int = 2) -> None:
    model.train()
    with torch.no_grad():
        for _ in range(steps):
            model(torch.randn(2, *SMALL))


def write_manifest(path: Path, entries, hub_org: str = HUB_ORG) -> Path:
    path.write_text(json.dumps({'format': 1, 'hub_org': hub_org, 'weights': entries}))
    return path


def manifest_entry(model: str = 'reid_resnet50', tag: str = 'market1501', **overrides) -> dict:
    entry = dict(
        model=model, tag=tag, hf_hub_id=f'{HUB_ORG}/{model}.{tag}', sha256='0' * 64, num_classes=751,
        dataset='market1501', protocol='single query', training_config={}, metrics={'mAP': 80.0, 'rank1': 90.0},
        license='apache-2.0')
    entry.update(overrides)
    return entry


def run_python(code: str, env: dict) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter: the manifest and the Hub's offline mode are read at import."""
    return subprocess.run([sys.executable, '-c', textwrap.dedent(code)], env={**os.environ, **env},
                          capture_output=True, text=True, timeout=300)


def test_saved_weights_never_hold_the_latent_state(tmp_path):
    model = tiny_model()
    train_steps(model)
    assert any(m.latent_state.abs().sum() > 0 for m in model.modules() if isinstance(m, ptl_timm.BConvCell))
    save_pretrained(model, tmp_path)
    keys = safetensors.torch.load_file(str(tmp_path / WEIGHTS_NAME)).keys()
    assert not [k for k in keys if 'latent_state' in k]


def test_folder_round_trip_gives_identical_eval_features(tmp_path):
    model = tiny_model()
    train_steps(model)  # a non-zero state must not leak into eval features or the files
    save_pretrained(model, tmp_path)
    assert torch.equal(embeddings(load_model(tmp_path)), embeddings(model))


def test_safetensors_file_beside_config_loads(tmp_path):
    model = tiny_model()
    save_pretrained(model, tmp_path)
    assert torch.equal(embeddings(load_model(tmp_path / WEIGHTS_NAME)), embeddings(model))


def test_pretrained_cfg_overlay_file_loads_a_reid_checkpoint(tmp_path):
    model = tiny_model()
    save_pretrained(model, tmp_path)
    loaded = timm.create_model(
        'ptl_net', backbone='test_resnet', num_classes=7, pretrained=True,
        pretrained_cfg_overlay=dict(file=str(tmp_path / WEIGHTS_NAME)))
    assert torch.equal(embeddings(loaded), embeddings(model))


def test_new_num_classes_reinitialises_only_the_identity_layer(tmp_path):
    model = tiny_model(num_classes=7)
    save_pretrained(model, tmp_path)
    loaded = load_model(tmp_path, num_classes=5)
    assert loaded.head.fc.out_features == 5
    for key, value in model.state_dict().items():
        if not key.startswith('head.fc.'):
            assert torch.equal(loaded.state_dict()[key], value), key


def test_num_classes_zero_drops_the_classifier_without_unexpected_keys(tmp_path, caplog):
    model = tiny_model(num_classes=7)
    save_pretrained(model, tmp_path)
    with caplog.at_level(logging.INFO, logger='timm'):
        loaded = load_model(tmp_path, num_classes=0)
    assert isinstance(loaded.head, torch.nn.Identity)
    assert not [r for r in caplog.records if 'Unexpected keys' in r.getMessage()]
    assert torch.equal(embeddings(loaded), embeddings(model))


def test_unpublished_tag_is_not_listed():
    assert 'ptl_densenet161.market1501' not in timm.list_pretrained('ptl_densenet161.*')


def test_unpublished_tag_error_says_how_to_load_a_folder():
    with pytest.raises(UnpublishedWeightsError, match='not in the weights manifest.*local-dir:'):
        load_model('ptl_densenet161.market1501')


def test_shipped_manifest_is_valid():
    entries = load_manifest(Path(ptl_timm.__file__).parent / 'weights_manifest.json')
    assert all(e['hf_hub_id'].startswith(f'{HUB_ORG}/') for e in entries)


def test_manifest_entry_becomes_a_cfg_with_the_hub_id_and_classes():
    base = dict(url='', hf_hub_id='timm/resnet50.tv_in1k', num_classes=751, classifier='head.fc', license='x')
    cfgs = manifest_cfgs('reid_resnet50', base, [manifest_entry(num_classes=1041, tag='msmt17')])
    cfg = cfgs['reid_resnet50.msmt17']
    assert cfg['hf_hub_id'] == f'{HUB_ORG}/reid_resnet50.msmt17'
    assert cfg['num_classes'] == 1041 and cfg['classifier'] == 'head.fc'
    assert base['hf_hub_id'] == 'timm/resnet50.tv_in1k'  # the architecture's cfg is not modified


@pytest.fixture
def published_tag():
    """timm's registry with ptl_densenet161.market1501 published; the shipped manifest's tags again after."""
    register_published_weights([manifest_entry('ptl_densenet161')])
    yield 'ptl_densenet161.market1501'
    register_published_weights()


def test_manifest_tags_follow_the_untagged_default_and_leave_the_model_file_literal(published_tag):
    assert set(timm.list_pretrained('ptl_densenet161.*')) == {'ptl_densenet161.tv_in1k', published_tag}
    assert timm.models.get_pretrained_cfg('ptl_densenet161').tag == 'tv_in1k', 'the default stays the default'
    assert timm.models.get_pretrained_cfg(published_tag).hf_hub_id == f'{HUB_ORG}/{published_tag}'
    assert list(ptl_net.default_cfgs['ptl_densenet161'].tags) == ['tv_in1k'], 'the hub part adds, the model file holds'


def test_timm_create_model_resolves_a_published_tag_and_fails_fast_offline(published_tag, tmp_path, monkeypatch):
    """The tag and the offline check come from the hub part, and work through timm alone: offline and
    not cached, the tag's own Hub repository is named at once, before anything is built."""
    offline_hub(monkeypatch, tmp_path / 'cache')
    start = time.monotonic()
    with pytest.raises(WeightsUnavailableError, match=f'from {HUB_ORG}/{published_tag}: it is not in the local'):
        timm.create_model(published_tag, pretrained=True)
    assert time.monotonic() - start < 10


def test_manifest_rejects_a_hub_id_outside_the_organisation(tmp_path):
    path = write_manifest(tmp_path / 'm.json', [manifest_entry(hf_hub_id='someone/reid_resnet50.market1501')])
    with pytest.raises(ManifestError, match='not under the organisation'):
        load_manifest(path)


def test_manifest_rejects_generic_architectures(tmp_path):
    path = write_manifest(tmp_path / 'm.json', [manifest_entry(model='ptl_net', hf_hub_id=f'{HUB_ORG}/ptl_net.x')])
    with pytest.raises(ManifestError, match='backbone'):
        load_manifest(path)


def test_manifest_rejects_missing_fields(tmp_path):
    entry = manifest_entry()
    del entry['sha256']
    with pytest.raises(ManifestError, match='sha256'):
        load_manifest(write_manifest(tmp_path / 'm.json', [entry]))


@pytest.mark.parametrize('name,backbone', [('ptl_net', 'resnet18'), ('reid_net', 'densenet121')])
def test_imagenet_backbone_file_loads_every_backbone_tensor_and_nothing_else(tmp_path, name, backbone):
    """A state dict in the backbone's own timm format, given as a file."""
    torch.manual_seed(123)
    source = timm.create_model(backbone, num_classes=1000).state_dict()
    safetensors.torch.save_file(source, str(tmp_path / 'backbone.safetensors'))
    reference = tiny_model(name, backbone)
    torch.manual_seed(0)
    model = timm.create_model(name, backbone=backbone, num_classes=7, pretrained=True,
                              pretrained_cfg_overlay=dict(file=str(tmp_path / 'backbone.safetensors')))
    own = model.state_dict()
    backbone_keys = [k for k in own if k.startswith('backbone.')]
    flat_source = {k.replace('_', '.'): v for k, v in source.items()}
    for key in backbone_keys:
        assert torch.equal(own[key], flat_source[key[len('backbone.'):].replace('_', '.')]), key
    for key in set(own) - set(backbone_keys):
        assert torch.equal(own[key], reference.state_dict()[key]), f'{key} was overwritten'
    assert len(backbone_keys) == len([k for k in source if not k.startswith(('fc.', 'classifier.'))])


@pytest.mark.slow  # a fresh interpreter, shared by the checks that need one (each costs torch's import)
def test_a_fresh_interpreter_loads_published_weights_offline_by_hub_id_registry_tag_and_cli(tmp_path):
    """``import ptl_timm`` alone gives the hub and the extractor; then, offline: publish → Hub cache →
    ``hf-hub:ORG/NAME`` and the manifest's registry tag; a slashed ``hf-hub:`` id through ``load_model`` and
    ``ptl-timm extract``."""
    torch.manual_seed(0)
    model = timm.create_model('reid_resnet50', num_classes=11)
    save_pretrained(model, tmp_path / 'ckpt', metadata={'ptl_timm_dataset': 'market1501'})
    result = publish(tmp_path / 'ckpt', tmp_path / 'hub', progress=False)
    build_hub_cache(result.folder, tmp_path / 'cache', result.repo_id)
    write_manifest(tmp_path / 'manifest.json', [result.manifest_entry])
    torch.save(embeddings(model), tmp_path / 'expected.pt')

    tiny = tiny_model()
    set_preprocessing(tiny, SMALL[1:])
    save_pretrained(tiny, tmp_path / 'folder')
    tiny_id = f'{HUB_ORG}/ptl_net.tiny'
    build_hub_cache(tmp_path / 'folder', tmp_path / 'cache', tiny_id)
    images = tmp_path / 'images'
    images.mkdir()
    for i in range(2):
        Image.new('RGB', (32, 64), (40 * i, 90, 200)).save(images / f'{i}.png')
    torch.save(ptl_timm.FeatureExtractor(tiny, device='cpu')(str(images)), tmp_path / 'tiny_expected.pt')

    code = f"""
        import ptl_timm
        assert callable(ptl_timm.hub.load_model) and callable(ptl_timm.FeatureExtractor)
        assert ptl_timm.hub.pretrained.HUB_ORG == {HUB_ORG!r}
        import torch, timm
        import huggingface_hub.constants as c
        from ptl_timm.cli import main
        from ptl_timm.eval.features import load_features
        assert c.HF_HUB_OFFLINE
        images = torch.randn((2, *{SMALL}), generator=torch.Generator().manual_seed(1))
        expected = torch.load({str(tmp_path / 'expected.pt')!r}, weights_only=True)
        assert 'reid_resnet50.market1501' in timm.list_pretrained('reid_resnet50.*')
        for name in ('hf-hub:{result.repo_id}', 'reid_resnet50.market1501'):
            model = timm.create_model(name, pretrained=True).eval()
            assert model.num_classes == 11, name
            with torch.inference_mode():
                assert torch.equal(model.forward_reid(images).embedding, expected), name
        model = ptl_timm.hub.load_model('hf-hub:{tiny_id}', num_classes=0)
        assert model.pretrained_cfg['input_size'] == {SMALL}
        assert main(['extract', '--model', 'hf-hub:{tiny_id}', '--folder', {str(images)!r},
                     '--output', {str(tmp_path / 'feats.safetensors')!r}, '--device', 'cpu', '--quiet']) == 0
        feats = load_features({str(tmp_path / 'feats.safetensors')!r})['images'].feats
        assert torch.allclose(feats, torch.load({str(tmp_path / 'tiny_expected.pt')!r}), atol=1e-6)
        print('ok')
    """
    env = {MANIFEST_ENV: str(tmp_path / 'manifest.json'), 'HF_HUB_CACHE': str(tmp_path / 'cache'),
           'HF_HUB_OFFLINE': '1'}
    proc = run_python(code, env)
    assert proc.returncode == 0 and proc.stdout.strip() == 'ok', proc.stderr[-3000:]


def test_loaded_model_keeps_the_saved_pretrained_cfg(tmp_path):
    model = tiny_model()
    set_preprocessing(model, SMALL[1:])
    save_pretrained(model, tmp_path)
    for source in (tmp_path, tmp_path / WEIGHTS_NAME, f'local-dir:{tmp_path}'):
        loaded = load_model(source, num_classes=0)
        assert loaded.pretrained_cfg['input_size'] == SMALL, source
        data_config = timm.data.resolve_data_config({}, model=loaded)
        assert data_config['input_size'] == SMALL and data_config['crop_mode'] == 'squash', source


@pytest.mark.slow
def test_local_dir_prefix_with_an_absolute_path_is_honoured(tmp_path):
    model = tiny_model()
    save_pretrained(model, tmp_path / 'run' / 'last')
    loaded = load_model(f'local-dir:{(tmp_path / "run" / "last").resolve()}')
    assert torch.equal(embeddings(loaded), embeddings(model))
    with pytest.raises(CheckpointError, match='does not exist'):
        load_model(f'local-dir:{tmp_path / "absent"}')


def _strip_tensors(folder: Path, keep: int) -> list:
    weights = safetensors.torch.load_file(str(folder / WEIGHTS_NAME))
    removed = sorted(weights)[keep:]
    safetensors.torch.save_file({k: weights[k] for k in sorted(weights)[:keep]}, str(folder / WEIGHTS_NAME))
    return removed


@pytest.mark.parametrize('num_classes', [None, 0, 5])
def test_weights_with_tensors_removed_are_refused_naming_them(tmp_path, num_classes):
    save_pretrained(tiny_model(), tmp_path)
    removed = _strip_tensors(tmp_path, keep=len(tiny_model().state_dict()) // 2)
    kwargs = {} if num_classes is None else dict(num_classes=num_classes)
    with pytest.raises(CheckpointError, match=r'\d+ missing \(e\.g\. ') as info:
        load_model(tmp_path, **kwargs)
    assert any(key in str(info.value) for key in removed)


def test_config_naming_another_architecture_is_refused_naming_the_tensors(tmp_path):
    save_pretrained(tiny_model(), tmp_path)
    resnet_config = tmp_path / 'resnet18'
    save_pretrained(timm.create_model('resnet18', num_classes=7), resnet_config)
    shutil.copyfile(resnet_config / 'config.json', tmp_path / 'config.json')
    with pytest.raises(CheckpointError, match=r'resnet18 model .*missing.*unexpected \(e\.g\. backbone\.'):
        load_model(tmp_path, num_classes=0)


def test_only_the_classifier_may_be_dropped(tmp_path):
    """num_classes=0 drops the whole head (hidden layers too), another count only the last layer."""
    model = tiny_model()
    save_pretrained(model, tmp_path)
    weights = safetensors.torch.load_file(str(tmp_path / WEIGHTS_NAME))
    weights = {k: v for k, v in weights.items() if not k.startswith('head.fc.')}
    safetensors.torch.save_file(weights, str(tmp_path / WEIGHTS_NAME))
    assert load_model(tmp_path, num_classes=5).head.fc.out_features == 5
    assert torch.equal(embeddings(load_model(tmp_path, num_classes=0)), embeddings(model))
    with pytest.raises(CheckpointError, match='head.fc.bias'):
        load_model(tmp_path)  # the same num_classes: the classifier is part of the weights


@pytest.mark.parametrize('build', [
    lambda: ptl_timm.create_ptl('resnet18', pretrained=True, num_classes=3),
    lambda: timm.create_model('reid_resnet50', pretrained=True, num_classes=3),
    lambda: load_model('resnet18.a1_in1k'),
], ids=['create_ptl', 'timm.create_model', 'load_model'])
def test_pretrained_weights_fail_fast_when_the_hub_is_unreachable(tmp_path, monkeypatch, build):
    offline_hub(monkeypatch, tmp_path / 'cache')
    start = time.monotonic()
    with pytest.raises(WeightsUnavailableError) as info:
        build()
    assert time.monotonic() - start < 10
    message = str(info.value)
    for advice in ('cannot be reached', '--no-pretrained', 'pretrained=False', 'HF_HUB_OFFLINE=1',
                   "pretrained_cfg_overlay=dict(file="):
        assert advice in message


def test_pretrained_weights_in_the_cache_load_although_the_hub_is_unreachable(tmp_path, monkeypatch):
    torch.manual_seed(0)
    source = timm.create_model('resnet18', num_classes=1000)
    save_pretrained(source, tmp_path / 'resnet18')
    build_hub_cache(tmp_path / 'resnet18', tmp_path / 'cache', 'timm/resnet18.a1_in1k')
    offline_hub(monkeypatch, tmp_path / 'cache')
    model = ptl_timm.create_ptl('resnet18', pretrained=True, num_classes=3)
    assert torch.equal(model.backbone.conv1.weight, source.conv1.weight)


def test_local_dir_ids_load_through_the_cli(tmp_path):
    model = tiny_model()
    set_preprocessing(model, SMALL[1:])
    save_pretrained(model, tmp_path / 'run' / 'last')
    images = tmp_path / 'images'
    images.mkdir()
    Image.new('RGB', (32, 64), (10, 90, 200)).save(images / 'a.png')
    out = tmp_path / 'feats.safetensors'
    assert main(['extract', '--model', f'local-dir:{(tmp_path / "run" / "last").resolve()}', '--folder', str(images),
                 '--output', str(out), '--device', 'cpu', '--quiet']) == 0
    expected = ptl_timm.FeatureExtractor(model, device='cpu')(str(images))
    assert torch.allclose(load_features(out)['images'].feats, expected, atol=1e-6)
