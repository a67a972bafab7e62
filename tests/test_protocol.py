"""Data without camera ids (ptl_timm.eval.protocol): the exclusion rule is chosen from the data, stated with
the result, and only the query image itself is excluded when no camera is known."""
import json

import pytest
import torch
import torch.nn.functional as F

from ptl_timm.cli import main
from ptl_timm.errors import InputError
from ptl_timm.eval.features import FeatureSet, save_features
from ptl_timm.eval.metrics import evaluate_rank
from ptl_timm.eval.protocol import resolve_protocol
from ptl_timm.eval.retrieval import search


def feature_set(n, cams=True, seed=0, prefix='g'):
    g = torch.Generator().manual_seed(seed)
    return FeatureSet(F.normalize(torch.randn(n, 6, generator=g), dim=1), torch.arange(n) % 4,
                      torch.arange(n) % 3 if cams else torch.full((n,), -1), [f'/{prefix}/{i}.jpg' for i in range(n)])


def test_auto_protocol_is_camera_with_cameras_and_self_without():
    assert resolve_protocol([feature_set(5), feature_set(7)]).name == 'camera'
    rule = resolve_protocol([feature_set(5, cams=False), feature_set(7, cams=False)])
    assert rule.name == 'self' and 'only the query image itself' in rule.description
    with pytest.raises(InputError, match='3 of 12 images have no camera'):
        resolve_protocol([feature_set(5), feature_set(7, cams=False)._replace(camids=torch.tensor([0, 1, 2, 0, -1, -1, -1]))])
    with pytest.raises(InputError, match='camera protocol needs'):
        resolve_protocol([feature_set(5, cams=False)], 'camera')


def test_self_protocol_excludes_the_same_file_only():
    gallery = feature_set(8, cams=False)
    query = FeatureSet(gallery.feats[:2], gallery.pids[:2], gallery.camids[:2], ['/g/0.jpg', '/q/other.jpg'])
    q_keys, g_keys = resolve_protocol([query, gallery]).keys
    assert q_keys[0] == g_keys[0] and q_keys[1] not in g_keys.tolist() and len(set(g_keys.tolist())) == 8
    rankings = search(query, gallery, top_k=7, backend='torch')
    assert '/g/0.jpg' not in [r['path'] for r in rankings[0]['results']]  # the query itself
    assert rankings[1]['results'][0]['path'] == '/g/1.jpg' and rankings[1]['results'][0]['correct']  # its copy counts
    assert all(r['ap'] is not None for r in rankings)


def test_eval_command_states_the_protocol_of_data_without_cameras(tmp_path, capsys):
    query, gallery = feature_set(6, cams=False, seed=1, prefix='q'), feature_set(20, cams=False)
    save_features({'query': query, 'gallery': gallery}, tmp_path / 'feats.safetensors')
    assert main(['eval', '--features', str(tmp_path / 'feats.safetensors'), '--quiet', '--json',
                 str(tmp_path / 'm.json')]) == 0
    lines = capsys.readouterr().out.splitlines()  # the sentence names its protocol once
    assert any(line.startswith('no-camera protocol: only the query image itself') for line in lines), lines
    metrics = json.loads((tmp_path / 'm.json').read_text())
    expected = evaluate_rank(query.feats, gallery.feats, query.pids, gallery.pids, torch.arange(6), torch.arange(6, 26),
                             device='cpu')
    assert metrics['protocol'] == 'self' and metrics['mAP'] == pytest.approx(100 * expected['mAP'])
    assert main(['eval', '--features', str(tmp_path / 'feats.safetensors'), '--quiet', '--protocol', 'camera']) == 2


def _folder_dataset(root, flatten=('train', 'query', 'gallery')):
    """A synthetic folder dataset whose ``flatten`` splits lose their camera folders (cameras unknown)."""
    from ptl_timm.data.synth import SYNTH_DOMAINS, generate_synthetic
    path = generate_synthetic(root, SYNTH_DOMAINS[0], layout='folder', num_ids=8, images_per_id=4, num_cams=2,
                              img_size=(64, 32), name='own')
    for split in flatten:
        for image in list((path / split).rglob('*.jpg')):
            image.rename(image.parent.parent / f'{image.parent.name}_{image.name}')
        for camera in [p for p in (path / split).glob('*/*') if p.is_dir()]:
            camera.rmdir()
    return path


def _train(tmp_path, data, capsys):
    args = ['train', '--model', 'ptl_net', '--set', 'model_args={backbone: test_resnet, embed_dim: 64}',
            '--no-pretrained', '--dataset', 'folder', '--data-root', str(data), '--img-size', '64', '32',
            '--epochs', '1', '--batch-size', '8', '--workers', '0', '--device', 'cpu', '--output',
            str(tmp_path / 'run')]
    try:
        return main(args), capsys.readouterr()
    except SystemExit as e:
        return e.code, capsys.readouterr()


def test_training_on_data_without_cameras_says_its_evaluation_is_the_no_camera_protocol(tmp_path, capsys, caplog):
    code, printed = _train(tmp_path, _folder_dataset(tmp_path), capsys)
    assert code == 0
    epoch = next(line for line in printed.out.splitlines() + printed.err.splitlines() if line.startswith('epoch 1:'))
    assert ' (no-camera protocol): mAP' in epoch
    assert 'has no camera ids, so it is evaluated under the no-camera protocol' in caplog.text


def test_training_on_data_with_cameras_for_some_images_is_refused_before_anything_is_written(tmp_path, capsys):
    """Evaluation cannot pick an honest rule for it; before, the refusal came after the first epoch."""
    code, printed = _train(tmp_path, _folder_dataset(tmp_path, flatten=('gallery',)), capsys)
    assert code == 2 and 'images have no camera: name the cameras of all of them' in printed.err
    assert '--protocol' not in printed.err and not (tmp_path / 'run').exists()
