"""Feature extraction: eval-mode embeddings, every input kind, checkpoints, flip TTA, saved features."""
import json

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from PIL import Image

import ptl_timm
from ptl_timm.cli import main
from ptl_timm.data.datasets import build_dataset
from ptl_timm.data.synth import SYNTH_DOMAINS, generate_synthetic
from ptl_timm.eval.extract import FeatureExtractor, evaluate_model, extract_features, image_files
from ptl_timm.models import embed
from ptl_timm.eval.features import FeatureSet, load_features, save_features
from ptl_timm.eval.metrics import evaluate_rank
from ptl_timm.hub import save_pretrained

IMG_SIZE = (64, 32)
TINY_MODEL_ARGS = dict(backbone='test_resnet', embed_dim=64, classifier_dims=(32, 16))


@pytest.fixture(scope='module')
def dataset_root(tmp_path_factory):
    return generate_synthetic(tmp_path_factory.mktemp('synth'), SYNTH_DOMAINS[0], num_ids=6, images_per_id=4,
                              num_cams=2, img_size=IMG_SIZE, seed=0)


@pytest.fixture(scope='module')
def model():
    torch.manual_seed(0)
    return timm.create_model('ptl_net', num_classes=0, **TINY_MODEL_ARGS)


@pytest.fixture(scope='module')
def extractor(model):
    return FeatureExtractor(model, device='cpu', batch_size=4, img_size=IMG_SIZE)


def test_feature_extractor_is_exported_at_package_level():
    assert ptl_timm.FeatureExtractor is FeatureExtractor


def test_embeddings_are_unit_norm_rows(extractor, dataset_root):
    feats = extractor(dataset_root / 'query')
    assert feats.dtype == torch.float32 and feats.shape == (len(image_files(dataset_root / 'query')), 64)
    torch.testing.assert_close(feats.norm(dim=1), torch.ones(len(feats)))


def test_embedding_of_an_image_does_not_depend_on_its_batch(model, dataset_root):
    paths = image_files(dataset_root / 'query')
    one_by_one = FeatureExtractor(model, device='cpu', batch_size=1, img_size=IMG_SIZE)(paths)
    batched = FeatureExtractor(model, device='cpu', batch_size=5, img_size=IMG_SIZE)(paths)
    torch.testing.assert_close(one_by_one, batched, atol=1e-5, rtol=1e-5)


def test_extract_features_restores_training_mode_and_leaves_cell_states_untouched(extractor, dataset_root):
    model = timm.create_model('ptl_net', num_classes=0, **TINY_MODEL_ARGS).train()
    states = [b.clone() for n, b in model.named_buffers() if 'latent_state' in n]
    batches = [torch.stack([extractor.transform(Image.open(p).convert('RGB')) for p in image_files(dataset_root / 'query')])]
    extract_features(model, batches, device='cpu', progress=False)
    assert model.training
    after = [b for n, b in model.named_buffers() if 'latent_state' in n]
    assert all(torch.equal(a, b) for a, b in zip(states, after)) and len(states) > 0


def test_folder_paths_pil_images_and_tensors_give_the_same_features(extractor, dataset_root):
    paths = image_files(dataset_root / 'query')[:3]
    from_paths = extractor(paths)
    images = [Image.open(p) for p in paths]
    from_pil = extractor(images)
    from_tensor = extractor(torch.stack([extractor.transform(im.convert('RGB')) for im in images]))
    torch.testing.assert_close(from_pil, from_paths)
    torch.testing.assert_close(from_tensor, from_paths)
    torch.testing.assert_close(extractor(paths[0]), from_paths[:1])


def test_flip_sums_the_embeddings_of_image_and_mirror_before_normalising(model, dataset_root):
    paths = image_files(dataset_root / 'query')[:2]
    flipped = FeatureExtractor(model, device='cpu', img_size=IMG_SIZE, flip=True)
    batch = torch.stack([flipped.transform(Image.open(p).convert('RGB')) for p in paths])
    with torch.inference_mode():
        expected = F.normalize(embed(model.eval(), batch) + embed(model, batch.flip(3)), dim=1)
    torch.testing.assert_close(flipped(paths), expected)


def test_channels_last_gives_the_same_features(model, dataset_root):
    paths = image_files(dataset_root / 'query')[:4]
    plain = FeatureExtractor(model, device='cpu', img_size=IMG_SIZE)(paths)
    channels_last = FeatureExtractor(model, device='cpu', img_size=IMG_SIZE, channels_last=True)(paths)
    torch.testing.assert_close(channels_last, plain, atol=1e-5, rtol=1e-5)


def test_checkpoint_folder_gives_the_same_features_as_the_module(model, extractor, dataset_root, tmp_path):
    save_pretrained(model, tmp_path / 'ckpt')
    from_folder = FeatureExtractor(tmp_path / 'ckpt', device='cpu', img_size=IMG_SIZE)
    paths = image_files(dataset_root / 'query')[:3]
    torch.testing.assert_close(from_folder(paths), extractor(paths))


def test_image_size_defaults_to_the_pretrained_cfg(model):
    assert FeatureExtractor(model, device='cpu').img_size == tuple(model.pretrained_cfg['input_size'][1:])


def test_plain_timm_models_are_supported(dataset_root):
    model = timm.create_model('test_resnet', num_classes=0)
    feats = FeatureExtractor(model, device='cpu', img_size=IMG_SIZE)(dataset_root / 'query')
    assert feats.shape[1] == model.num_features


def test_missing_folder_and_bad_tensors_give_clear_errors(extractor, tmp_path):
    with pytest.raises(FileNotFoundError, match='does not exist'):
        extractor(tmp_path / 'nowhere')
    with pytest.raises(FileNotFoundError, match='no images'):
        extractor(tmp_path)
    with pytest.raises(ValueError, match='B × 3 × H × W'):
        extractor(torch.zeros(2, 2))


def test_missing_image_files_are_named_in_the_error(extractor, dataset_root, tmp_path):
    paths = image_files(dataset_root / 'query')[:1] + [tmp_path / 'gone.jpg', tmp_path / 'also_gone.jpg']
    with pytest.raises(FileNotFoundError, match=r'gone\.jpg does not exist \(and 1 more\)'):
        extractor(paths)


def test_evaluate_model_leaves_a_training_model_in_training_mode(dataset_root):
    model = timm.create_model('ptl_net', num_classes=0, **TINY_MODEL_ARGS).train()
    evaluate_model(model, build_dataset('market1501', dataset_root), img_size=IMG_SIZE, device='cpu', progress=False)
    assert model.training and all(m.training for m in model.modules())


def test_evaluate_model_equals_metrics_of_the_extracted_features(model, extractor, dataset_root):
    dataset = build_dataset('market1501', dataset_root)
    result = evaluate_model(model, dataset, img_size=IMG_SIZE, batch_size=4, device='cpu', progress=False)
    q = extractor.extract_records(dataset.query)
    g = extractor.extract_records(dataset.gallery)
    expected = evaluate_rank(q[0], g[0], q[1], g[1], q[2], g[2], device='cpu')
    assert result['mAP'] == pytest.approx(expected['mAP']) and 0 <= result['mAP'] <= 1
    assert (result['cmc'] == expected['cmc']).all()


@pytest.mark.parametrize('suffix', ['.safetensors', '.npz'])
def test_saved_features_round_trip(tmp_path, suffix):
    sets = {name: FeatureSet(torch.randn(3, 4), torch.tensor([1, 2, -1]), torch.tensor([0, 1, 0]), [f'{name}{i}.jpg' for i in range(3)])
            for name in ('query', 'gallery')}
    loaded = load_features(save_features(sets, tmp_path / f'feats{suffix}'))
    assert sorted(loaded) == ['gallery', 'query']
    for name, expected in sets.items():
        torch.testing.assert_close(loaded[name].feats, expected.feats)
        assert torch.equal(loaded[name].pids, expected.pids) and loaded[name].paths == expected.paths


def test_features_file_with_an_unknown_suffix_is_rejected(tmp_path):
    with pytest.raises(ValueError, match='must end in'):
        save_features({}, tmp_path / 'feats.pt')


def test_foreign_file_is_not_taken_for_features(tmp_path):
    np.savez(tmp_path / 'other.npz', weights=np.zeros(3))
    with pytest.raises(ValueError, match='not a ptl_timm features file'):
        load_features(tmp_path / 'other.npz')


@pytest.fixture(scope='module')
def model_dir(model, tmp_path_factory):
    return save_pretrained(model, tmp_path_factory.mktemp('model'))


def cli_model_args(model_dir):
    return ['--model', str(model_dir), '--img-size', *map(str, IMG_SIZE), '--device', 'cpu', '--quiet']


@pytest.mark.slow
def test_extract_command_saves_query_and_gallery_sets(model_dir, dataset_root, tmp_path):
    out = tmp_path / 'feats.safetensors'
    assert main(['extract', *cli_model_args(model_dir), '--dataset', 'market1501', '--data-root', str(dataset_root),
                 '--output', str(out)]) == 0
    sets = load_features(out)
    dataset = build_dataset('market1501', dataset_root)
    assert sets['query'].paths == [r.path for r in dataset.query]
    assert sets['gallery'].pids.tolist() == [r.pid for r in dataset.gallery]


@pytest.mark.slow
def test_eval_command_from_features_equals_eval_from_model(model_dir, dataset_root, tmp_path):
    feats = tmp_path / 'feats.npz'
    main(['extract', *cli_model_args(model_dir), '--dataset', 'market1501', '--data-root', str(dataset_root), '--output', str(feats)])
    assert main(['eval', '--features', str(feats), '--json', str(tmp_path / 'a.json'), '--quiet']) == 0
    assert main(['eval', *cli_model_args(model_dir), '--dataset', 'market1501', '--data-root', str(dataset_root),
                 '--json', str(tmp_path / 'b.json')]) == 0
    from_features, from_model = (json.loads((tmp_path / name).read_text()) for name in ('a.json', 'b.json'))
    assert from_features['mAP'] == pytest.approx(from_model['mAP'], abs=1e-4)
    assert 0 <= from_features['mAP'] <= 100 and len(from_features['cmc']) == from_features['num_gallery']


@pytest.mark.slow
def test_eval_command_re_ranks(model_dir, tmp_path):
    root = generate_synthetic(tmp_path, SYNTH_DOMAINS[1], num_ids=12, images_per_id=4, num_cams=2, img_size=IMG_SIZE)
    args = ['eval', *cli_model_args(model_dir), '--dataset', 'market1501', '--data-root', str(root)]
    assert main([*args, '--rerank', '--json', str(tmp_path / 'rerank.json')]) == 0
    assert main([*args, '--json', str(tmp_path / 'plain.json')]) == 0
    reranked, plain = (json.loads((tmp_path / f'{n}.json').read_text()) for n in ('rerank', 'plain'))
    assert reranked['rerank'] and reranked['num_valid_queries'] == plain['num_valid_queries']
    assert reranked['mAP'] != plain['mAP']


def test_eval_command_without_a_source_is_a_clear_error(capsys):
    assert main(['eval', '--quiet']) == 2
    assert '--features' in capsys.readouterr().err


def test_eval_command_refuses_unknown_query_cameras(tmp_path, capsys):
    """Camera -1 would keep same-camera gallery images as matches (as reported: mAP 19.92 -> 33.94, exit 0)."""
    g = torch.Generator().manual_seed(0)
    gallery = FeatureSet(F.normalize(torch.randn(8, 4, generator=g), dim=1), torch.arange(8) % 4, torch.arange(8) % 2,
                         [f'g{i}.jpg' for i in range(8)])
    query = FeatureSet(gallery.feats[:4].clone(), torch.arange(4), torch.full((4,), -1), [f'q{i}.jpg' for i in range(4)])
    save_features({'query': query, 'gallery': gallery}, tmp_path / 'feats.safetensors')
    assert main(['eval', '--features', str(tmp_path / 'feats.safetensors'), '--quiet']) == 2
    assert '4 of 12 images have no camera' in capsys.readouterr().err  # known for some only: no honest rule


def test_progress_bars_name_the_split_they_extract(model_dir, dataset_root, tmp_path, capsys):
    assert main(['extract', '--model', str(model_dir), '--img-size', *map(str, IMG_SIZE), '--device', 'cpu',
                 '--dataset', 'market1501', '--data-root', str(dataset_root), '--output', str(tmp_path / 'f.npz')]) == 0
    err = capsys.readouterr().err
    assert 'extract query:' in err and 'extract gallery:' in err and 'extract:' not in err
    evaluate_model(model_dir, build_dataset('market1501', dataset_root), img_size=IMG_SIZE, device='cpu')
    err = capsys.readouterr().err
    assert err.index('extract query:') < err.index('extract gallery:')
