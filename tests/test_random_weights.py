"""Weights are never silently random: every reader refuses a bare model name (it names an architecture, not
trained weights) with one line saying how to point at weights, unless random weights are asked for."""
import pytest
import timm
import torch

from ptl_timm.cli import main
from ptl_timm.data.datasets import build_dataset
from ptl_timm.data.synth import SYNTH_DOMAINS, generate_synthetic
from ptl_timm.engine.distill import load_teacher
from ptl_timm.errors import InputError
from ptl_timm.eval.extract import FeatureExtractor, evaluate_model
from ptl_timm.hub import load_model, save_pretrained

BARE = 'reid_resnet50'
ADVICE = ('random weights', 'runs/NAME/best', 'local-dir:', 'hf-hub:', f'{BARE}.TAG', '--random-weights',
          'random_weights=True')


@pytest.fixture(scope='module')
def root(tmp_path_factory):
    return generate_synthetic(tmp_path_factory.mktemp('synth'), SYNTH_DOMAINS[0], num_ids=4, images_per_id=4,
                              num_cams=2, img_size=(64, 32), seed=0)


def _cli_doors(root, out):
    return {
        'eval': ['eval', '--dataset', 'market1501', '--data-root', str(root)],
        'extract': ['extract', '--folder', str(root / 'query'), '--output', str(out / 'f.safetensors')],
        'search': ['search', '--query', str(root / 'query'), '--gallery', str(root / 'bounding_box_test'),
                   '--output', str(out / 'ranked.json')],
        'export': ['export', '--output', str(out / 'm.onnx')],
        'actmap': ['actmap', '--folder', str(root / 'query'), '--output', str(out / 'a.png')],
    }


@pytest.mark.parametrize('command', ['eval', 'extract', 'search', 'export', 'actmap'])
def test_every_command_refuses_a_bare_model_name_in_one_line_writing_nothing(root, tmp_path, capsys, command):
    args = _cli_doors(root, tmp_path)[command]
    assert main([*args, '--model', BARE]) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and err.startswith(f'ptl-timm {command}: error: ')
    for advice in ADVICE:
        assert advice in err, (advice, err)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize('read', [
    lambda root: load_model(BARE),
    lambda root: FeatureExtractor(BARE),
    lambda root: evaluate_model(BARE, build_dataset('market1501', root)),
    lambda root: load_teacher('ptl_resnet50', torch.device('cpu')),
], ids=['load_model', 'FeatureExtractor', 'evaluate_model', 'distill teacher'])
def test_every_python_reader_refuses_a_bare_model_name(root, read):
    with pytest.raises(InputError, match='random_weights=True'):
        read(root)


def test_random_weights_are_built_when_asked_for(root, tmp_path, capsys):
    feats = FeatureExtractor('test_resnet', random_weights=True, img_size=(64, 32))(root / 'query')
    assert feats.shape[0] == len(list((root / 'query').iterdir()))
    assert main(['extract', '--model', 'test_resnet', '--random-weights', '--img-size', '64', '32', '--folder',
                 str(root / 'query'), '--output', str(tmp_path / 'f.safetensors'), '--quiet']) == 0
    assert (tmp_path / 'f.safetensors').is_file()


def test_random_weights_of_a_checkpoint_keep_its_architecture_but_not_its_weights(tmp_path):
    torch.manual_seed(0)
    save_pretrained(timm.create_model('reid_net', backbone='test_resnet', num_classes=0), tmp_path)
    saved = load_model(tmp_path).state_dict()
    torch.manual_seed(1)
    built = load_model(tmp_path, random_weights=True).state_dict()
    assert built.keys() == saved.keys()
    assert any(not torch.equal(built[k], saved[k]) for k in saved if saved[k].is_floating_point())


def test_random_weights_are_for_a_source_not_for_a_built_module():
    with pytest.raises(InputError, match='not to a module'):
        FeatureExtractor(timm.create_model('test_resnet', num_classes=0), random_weights=True)
