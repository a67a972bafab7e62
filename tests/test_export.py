"""ONNX export: PTL models and students match PyTorch in eval mode, with a dynamic batch axis."""
import copy
import importlib.util

import pytest
import torch

import timm
from ptl_timm.cli import main
from ptl_timm.hub.export import MissingExtraError, ReIDExportWrapper, export_onnx
from ptl_timm.hub import save_pretrained, set_preprocessing

SMALL = (3, 64, 32)
BACKBONE = 'test_resnet'  # timm's smallest ResNet: the exporter traces it in seconds
needs_exporter = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ('onnx', 'onnxscript')),
    reason='the onnx extra (onnx, onnxscript) is not installed: pip install "ptl_timm[onnx]"')


def tiny_model(name: str = 'ptl_net', num_classes: int = 7) -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model(name, backbone=BACKBONE, num_classes=num_classes)


def run_onnx(path, images: torch.Tensor) -> torch.Tensor:
    onnxruntime = pytest.importorskip('onnxruntime', reason='onnxruntime is not installed: no comparison')
    session = onnxruntime.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    return torch.from_numpy(session.run(None, {'images': images.numpy()})[0])


def pytorch_output(model: torch.nn.Module, images: torch.Tensor, output: str = 'embedding') -> torch.Tensor:
    with torch.inference_mode():
        return ReIDExportWrapper(model, output).eval()(images)


@pytest.fixture(scope='module', params=['ptl_net', 'reid_net'])
def exported(request, tmp_path_factory):
    """A PTL model that holds a latent state and a student, each with its preprocessing recorded and
    exported once in training mode (export takes seconds)."""
    model = tiny_model(request.param)
    set_preprocessing(model, SMALL[1:])
    with torch.no_grad():
        for _ in range(2):
            model(torch.randn(2, *SMALL))  # training mode: a PTL model's cells now hold a non-zero state
    stateless = copy.deepcopy(model)
    stateless.reset_state()
    path = tmp_path_factory.mktemp('onnx') / f'{request.param}.onnx'
    result = export_onnx(model, path)  # input size from the recorded preprocessing
    return model, stateless, path, result


@pytest.mark.slow
@needs_exporter
@pytest.mark.parametrize('batch_size', [1, 5])
def test_export_matches_pytorch_for_any_batch_size(exported, batch_size):
    _, stateless, path, _ = exported
    images = torch.randn(batch_size, *SMALL)
    assert (run_onnx(path, images) - pytorch_output(stateless, images)).abs().max() <= 1e-4


@pytest.mark.slow
@needs_exporter
def test_export_of_a_trained_model_ignores_its_latent_state_and_restores_its_mode(exported):
    model, stateless, path, result = exported
    assert model.training  # the caller's mode is restored
    assert result.max_abs_diff <= 1e-4 and result.normalized and result.input_size == SMALL
    images = torch.randn(3, *SMALL)
    assert (run_onnx(path, images) - pytorch_output(stateless, images)).abs().max() <= 1e-4


@pytest.mark.slow
@needs_exporter
def test_exported_embedding_is_the_feature_extract_saves(exported):
    """ONNX and `ptl-timm extract` give the same unit-norm embedding of the same preprocessed image."""
    from ptl_timm.eval.extract import FeatureExtractor

    _, stateless, path, _ = exported
    images = torch.randn(3, *SMALL)
    onnx_feats = run_onnx(path, images)
    torch.testing.assert_close(onnx_feats.norm(dim=1), torch.ones(3))
    extracted = FeatureExtractor(stateless, device='cpu')(images)
    assert (onnx_feats - extracted).abs().max() <= 1e-5


@pytest.mark.slow
@needs_exporter
def test_logits_output_matches_the_classifier(tmp_path):
    model = tiny_model(num_classes=7)
    export_onnx(model, tmp_path / 'm.onnx', output='logits', input_size=SMALL, verify=False)
    images = torch.randn(2, *SMALL)
    logits = run_onnx(tmp_path / 'm.onnx', images)
    assert logits.shape == (2, 7)
    assert (logits - pytorch_output(model, images, 'logits')).abs().max() <= 1e-4


def test_logits_of_an_embedding_model_are_refused():
    with pytest.raises(ValueError, match='no classifier'):
        ReIDExportWrapper(tiny_model(num_classes=0), 'logits')


def test_missing_extra_is_a_clear_error(tmp_path, monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, 'find_spec', lambda n, *a: None if n == 'onnxscript' else real_find_spec(n, *a))
    with pytest.raises(MissingExtraError, match=r'onnxscript.*pip install "ptl_timm\[onnx\]"'):
        export_onnx(tiny_model(), tmp_path / 'm.onnx', input_size=SMALL)
    assert not (tmp_path / 'm.onnx').exists()


@pytest.mark.slow
@needs_exporter
def test_raw_embedding_option_exports_the_embedding_before_normalisation(tmp_path, capsys):
    model = tiny_model()
    save_pretrained(model, tmp_path / 'ckpt')
    args = ['export', '--model', str(tmp_path / 'ckpt'), '--output', str(tmp_path / 'm.onnx'), '--img-size', '64', '32',
            '--raw-embedding', '--quiet']
    assert main(args) == 0
    images = torch.randn(2, *SMALL)
    with torch.inference_mode():
        raw = model.eval().forward_reid(images).embedding
    assert (run_onnx(tmp_path / 'm.onnx', images) - raw).abs().max() <= 1e-4
    assert 'L2-normalised' not in capsys.readouterr().out
