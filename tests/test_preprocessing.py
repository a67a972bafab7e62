"""Every reader uses the preprocessing a checkpoint records: a model trained at 64×32 is
evaluated, extracted, searched, exported and published at 64×32 without being told, and a size
option that disagrees with the checkpoint warns, naming both."""
import importlib.util
import json
import logging

import pytest
import timm
import torch
import torch.nn.functional as F

from ptl_timm.cli import main
from ptl_timm.data.datasets import build_dataset
from ptl_timm.data.loader import ImageDataset, build_transforms
from ptl_timm.data.synth import SYNTH_DOMAINS, generate_synthetic
from ptl_timm.eval.extract import FeatureExtractor
from ptl_timm.models import embed
from ptl_timm.eval.features import load_features
from ptl_timm.eval.metrics import evaluate_rank
from ptl_timm.hub import load_model, save_pretrained, set_preprocessing

TRAINED_SIZE = (64, 32)  # what the checkpoint records; the architecture's default is 256×128
DEVICE = ['--device', 'cpu', '--quiet']


@pytest.fixture(scope='module')
def run(tmp_path_factory):
    """A synthetic Market-layout dataset (images 128×64) and a checkpoint recording 64×32."""
    root = tmp_path_factory.mktemp('preprocessing')
    data = generate_synthetic(root, SYNTH_DOMAINS[0], num_ids=6, images_per_id=4, num_cams=2, img_size=(128, 64))
    torch.manual_seed(0)
    model = timm.create_model('ptl_net', num_classes=5, backbone='test_resnet', embed_dim=32, classifier_dims=(16,))
    set_preprocessing(model, TRAINED_SIZE)
    checkpoint = save_pretrained(model, root / 'run' / 'last', metadata={'ptl_timm_dataset': 'market1501'})
    return data, checkpoint, model


def features_at(model: torch.nn.Module, records, size) -> torch.Tensor:
    """The reference: the training code's eval transform at ``size``, the embedding, L2 normalisation."""
    dataset = ImageDataset(records, build_transforms(size, is_training=False))
    images = torch.stack([dataset[i][0] for i in range(len(dataset))])
    with torch.inference_mode():
        return F.normalize(embed(model.eval(), images), dim=1)


@pytest.fixture(scope='module')
def reference(run):
    data, _, model = run
    dataset = build_dataset('market1501', data)
    return dataset, {split: features_at(model, getattr(dataset, split), TRAINED_SIZE) for split in ('query', 'gallery')}


@pytest.mark.slow
def test_feature_extractor_takes_the_recorded_size(run, reference):
    _, checkpoint, model = run
    dataset, expected = reference
    extractor = FeatureExtractor(checkpoint, device='cpu')
    assert extractor.img_size == TRAINED_SIZE
    feats, _, _ = extractor.extract_records(dataset.query)
    assert (feats - expected['query']).abs().max() < 1e-5
    default_size = features_at(model, dataset.query, (256, 128))
    assert (feats - default_size).abs().max() > 1e-3  # the test can tell the two sizes apart


def test_extract_command_takes_the_recorded_size(run, reference, tmp_path):
    data, checkpoint, _ = run
    _, expected = reference
    out = tmp_path / 'feats.safetensors'
    assert main(['extract', '--model', str(checkpoint), '--dataset', 'market1501', '--data-root', str(data),
                 '--output', str(out), *DEVICE]) == 0
    sets = load_features(out)
    for split in ('query', 'gallery'):
        assert (sets[split].feats - expected[split]).abs().max() < 1e-5


def test_eval_command_takes_the_recorded_size(run, reference, tmp_path):
    data, checkpoint, _ = run
    dataset, expected = reference
    assert main(['eval', '--model', str(checkpoint), '--dataset', 'market1501', '--data-root', str(data),
                 '--json', str(tmp_path / 'm.json'), *DEVICE]) == 0
    pids = {s: torch.tensor([r.pid for r in getattr(dataset, s)]) for s in ('query', 'gallery')}
    camids = {s: torch.tensor([r.camid for r in getattr(dataset, s)]) for s in ('query', 'gallery')}
    result = evaluate_rank(expected['query'], expected['gallery'], pids['query'], pids['gallery'], camids['query'],
                           camids['gallery'], device='cpu')
    assert json.loads((tmp_path / 'm.json').read_text())['mAP'] == pytest.approx(100 * result['mAP'], abs=1e-9)


def test_search_command_takes_the_recorded_size(run, reference, tmp_path):
    data, checkpoint, _ = run
    dataset, expected = reference
    assert main(['search', '--model', str(checkpoint), '--dataset', 'market1501', '--data-root', str(data),
                 '--top-k', '1', '--num-queries', '1', '--output', str(tmp_path / 'r.json'), *DEVICE]) == 0
    (ranking,) = json.loads((tmp_path / 'r.json').read_text())
    top = ranking['results'][0]
    gallery_index = [r.path for r in dataset.gallery].index(top['path'])
    assert top['score'] == pytest.approx(float(expected['query'][0] @ expected['gallery'][gallery_index]), abs=1e-5)


@pytest.mark.slow
@pytest.mark.skipif(any(importlib.util.find_spec(m) is None for m in ('onnx', 'onnxscript', 'onnxruntime')),
                    reason='the onnx extra is not installed')
def test_export_command_takes_the_recorded_size(run, reference, tmp_path, capsys):
    _, checkpoint, model = run
    dataset, expected = reference
    assert main(['export', '--model', str(checkpoint), '--output', str(tmp_path / 'm.onnx'), '--quiet']) == 0
    printed = capsys.readouterr().out
    assert 'input Nx3x64x32' in printed and 'max abs difference vs PyTorch' in printed
    import onnxruntime
    images = torch.stack([ImageDataset(dataset.query[:2], build_transforms(TRAINED_SIZE, False))[i][0] for i in (0, 1)])
    session = onnxruntime.InferenceSession(str(tmp_path / 'm.onnx'), providers=['CPUExecutionProvider'])
    (onnx_feats,) = session.run(None, {'images': images.numpy()})
    assert (torch.from_numpy(onnx_feats) - expected['query'][:2]).abs().max() < 1e-4


def test_publish_carries_the_recorded_preprocessing_to_the_hub_folder_and_card(run, tmp_path):
    _, checkpoint, _ = run
    assert main(['publish', '--model', str(checkpoint), '--output', str(tmp_path / 'hub'), '--quiet']) == 0
    config = json.loads((tmp_path / 'hub' / 'config.json').read_text())['pretrained_cfg']
    assert config['input_size'] == [3, *TRAINED_SIZE] and config['crop_mode'] == 'squash'
    assert '- Input: 64×32 (height × width), bilinear resize' in (tmp_path / 'hub' / 'README.md').read_text()
    assert load_model(tmp_path / 'hub').pretrained_cfg['input_size'] == (3, *TRAINED_SIZE)


def test_a_size_that_disagrees_with_the_checkpoint_warns_naming_both(run, caplog):
    _, checkpoint, _ = run
    with caplog.at_level(logging.WARNING, logger='ptl_timm.eval.extract'):
        extractor = FeatureExtractor(checkpoint, device='cpu', img_size=(128, 64))
    assert extractor.img_size == (128, 64)
    assert any('(128, 64)' in r.getMessage() and '(64, 32)' in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger='ptl_timm.eval.extract'):
        FeatureExtractor(checkpoint, device='cpu', img_size=TRAINED_SIZE)
    assert not caplog.records
