"""Retrieval: the gallery index (faiss and torch agree), ranked lists with junk skipped and correctness
marks, worst-first order, JSON/CSV/PNG output, and `ptl-timm search` end to end."""
import csv
import json

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from PIL import Image

from ptl_timm.cli import main
from ptl_timm.errors import InputError
from ptl_timm.data.synth import SYNTH_DOMAINS, generate_synthetic
from ptl_timm.eval.features import FeatureSet
from ptl_timm.eval.retrieval import (
    COLOURS, HEADER_HEIGHT, LEGEND, LEGEND_STEP, GalleryIndex, draw_rankings, faiss_available, search, write_rankings)
from ptl_timm.hub import save_pretrained

IMG_SIZE = (64, 32)


def random_set(n, num_ids=4, dim=8, seed=0, labelled=True, prefix='img'):
    g = torch.Generator().manual_seed(seed)
    feats = F.normalize(torch.randn(n, dim, generator=g), dim=1)
    pids = torch.randint(0, num_ids, (n,), generator=g) if labelled else torch.full((n,), -1)
    camids = torch.randint(0, 3, (n,), generator=g) if labelled else torch.full((n,), -1)
    return FeatureSet(feats, pids, camids, [f'{prefix}{i}.jpg' for i in range(n)])


def test_torch_index_returns_the_exact_top_k_by_score_then_index():
    gallery = random_set(50)
    queries = random_set(7, seed=1).feats
    scores, indices = GalleryIndex(gallery.feats, backend='torch', block_size=3).search(queries, 5)
    full = queries @ gallery.feats.T
    expected = torch.from_numpy(np.lexsort((np.arange(50)[None].repeat(7, 0), -full.numpy()), axis=1)[:, :5])
    assert torch.equal(indices, expected)
    torch.testing.assert_close(scores, full.gather(1, expected))


def test_index_orders_tied_scores_by_gallery_index():
    gallery = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    _, indices = GalleryIndex(gallery, backend='torch').search(torch.tensor([[1.0, 0.0]]), 3)
    assert indices.tolist() == [[0, 2, 1]]


@pytest.mark.parametrize('backend', ['torch', 'faiss'] if faiss_available() else ['torch'])
def test_duplicates_tied_at_the_k_th_place_resolve_to_the_lowest_indices(backend):
    g = torch.Generator().manual_seed(0)
    gallery = F.normalize(torch.randn(100, 8, generator=g), dim=1)
    query = F.normalize(torch.randn(1, 8, generator=g), dim=1)
    duplicates = torch.randperm(100, generator=g)[:20]  # 20 exact ties for the top 5 places
    gallery[duplicates] = query[0]
    _, indices = GalleryIndex(gallery, backend=backend, block_size=1).search(query, 5)
    assert indices[0].tolist() == sorted(duplicates.tolist())[:5]


@pytest.mark.skipif(not faiss_available(), reason='faiss is an optional extra')
def test_faiss_and_torch_backends_return_the_same_results():
    gallery, queries = random_set(300, dim=16), random_set(20, dim=16, seed=1).feats
    faiss_scores, faiss_indices = GalleryIndex(gallery.feats, backend='faiss').search(queries, 10)
    torch_scores, torch_indices = GalleryIndex(gallery.feats, backend='torch').search(queries, 10)
    assert torch.equal(faiss_indices, torch_indices)
    torch.testing.assert_close(faiss_scores, torch_scores, atol=1e-5, rtol=1e-5)


def test_unknown_backend_is_rejected():
    with pytest.raises(ValueError, match='backend'):
        GalleryIndex(torch.zeros(2, 2), backend='annoy')


def test_search_skips_junk_and_marks_correct_results():
    query, gallery = random_set(10, seed=2), random_set(40, seed=3)
    for ranking, q in zip(search(query, gallery, top_k=8, backend='torch'), range(10)):
        assert len(ranking['results']) == 8 and [r['rank'] for r in ranking['results']] == list(range(1, 9))
        for item in ranking['results']:
            assert not (item['pid'] == ranking['pid'] and item['camid'] == ranking['camid'])
            assert item['correct'] == (item['pid'] == ranking['pid'])
        scores = [r['score'] for r in ranking['results']]
        assert scores == sorted(scores, reverse=True)


def test_search_fills_top_k_when_junk_items_are_the_nearest():
    query = random_set(1, seed=7)
    junk = FeatureSet(query.feats.repeat(5, 1), query.pids.repeat(5), query.camids.repeat(5), [f'junk{i}.jpg' for i in range(5)])
    others = random_set(6, seed=8)
    gallery = FeatureSet(*(torch.cat([a, b]) for a, b in zip(junk[:3], others[:3])), junk.paths + others.paths)
    results = search(query, gallery, top_k=6, backend='torch')[0]['results']
    assert sorted(r['path'] for r in results) == sorted(others.paths)


def test_query_without_a_true_match_gets_no_ap_instead_of_an_error():
    gallery = random_set(12, num_ids=3, seed=9)
    query = FeatureSet(gallery.feats[:1], torch.tensor([99]), torch.tensor([0]), ['stranger.jpg'])
    ranking = search(query, gallery, top_k=4, backend='torch')[0]
    assert ranking['ap'] is None and len(ranking['results']) == 4
    assert all(r['correct'] is False for r in ranking['results'])


def test_search_without_identities_keeps_everything_unmarked():
    query, gallery = random_set(3, labelled=False, prefix='q'), random_set(12, seed=4, labelled=False)
    rankings = search(query, gallery, top_k=12, backend='torch')
    assert all(len(r['results']) == 12 and r['ap'] is None for r in rankings)
    assert all(item['correct'] is None for r in rankings for item in r['results'])


def test_search_without_identities_never_returns_the_query_file_itself():
    gallery = random_set(12, seed=4, labelled=False)
    query = FeatureSet(gallery.feats[[3, 7]], gallery.pids[:2], gallery.camids[:2], ['./img3.jpg', 'img7.jpg'])
    rankings = search(query, gallery, top_k=11, backend='torch')
    assert [len(r['results']) for r in rankings] == [11, 11]  # every other image, none twice
    assert [{item['path'] for item in r['results']} for r in rankings] == [
        set(gallery.paths) - {'img3.jpg'}, set(gallery.paths) - {'img7.jpg'}]
    other = random_set(2, seed=9, labelled=False, prefix='elsewhere')
    assert all(len(r['results']) == 5 for r in search(other, gallery, top_k=5, backend='torch'))


def test_worst_first_orders_queries_by_increasing_ap():
    rankings = search(random_set(15, seed=5), random_set(60, seed=6), top_k=3, backend='torch', worst_first=True)
    aps = [r['ap'] for r in rankings if r['ap'] is not None]
    assert aps == sorted(aps) and len(aps) > 1
    assert all(r['ap'] is None for r in rankings[len(aps):])


def test_worst_first_needs_identities():
    with pytest.raises(ValueError, match='identities'):
        search(random_set(2, labelled=False), random_set(5, labelled=False), worst_first=True)


def test_rankings_are_written_as_json_and_csv(tmp_path):
    rankings = search(random_set(4, seed=7), random_set(20, seed=8), top_k=3, backend='torch')
    assert json.loads(write_rankings(rankings, tmp_path / 'r.json').read_text()) == rankings
    with open(write_rankings(rankings, tmp_path / 'r.csv')) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == sum(len(r['results']) for r in rankings)
    assert rows[0]['gallery'] == rankings[0]['results'][0]['path'] and rows[0]['rank'] == '1'
    with pytest.raises(ValueError, match='must end in'):
        write_rankings(rankings, tmp_path / 'r.txt')


def test_picture_frames_query_and_results_by_correctness(tmp_path):
    for i, colour in enumerate([(10, 10, 10), (200, 200, 200), (90, 90, 90)]):
        Image.new('RGB', (32, 64), colour).save(tmp_path / f'{i}.png')
    rankings = [dict(query=str(tmp_path / '0.png'), pid=1, camid=0, ap=0.5, results=[
        dict(rank=1, path=str(tmp_path / '1.png'), score=0.9, pid=2, camid=1, correct=False),
        dict(rank=2, path=str(tmp_path / '2.png'), score=0.8, pid=1, camid=1, correct=True)])]
    picture = Image.open(draw_rankings(rankings, tmp_path / 'ranks.png', thumb_size=(64, 32), border=3))
    assert picture.size[1] >= HEADER_HEIGHT + 64
    # the top-left pixel of each thumbnail is its frame
    assert picture.getpixel((0, HEADER_HEIGHT)) == COLOURS['query']
    assert picture.getpixel((36 + 12, HEADER_HEIGHT)) == COLOURS['wrong']
    assert picture.getpixel((2 * 36 + 12, HEADER_HEIGHT)) == COLOURS['correct']
    # the header carries a title and a swatch of every frame colour (the legend)
    header = picture.crop((0, 0, picture.size[0], HEADER_HEIGHT))
    assert any(max(colour) < 60 for _, colour in header.getcolors(1 << 16))  # dark (anti-aliased) text
    for i, state in enumerate(LEGEND):
        assert header.getpixel((2 + i * LEGEND_STEP + 5, 23)) == COLOURS[state]


@pytest.fixture(scope='module')
def synthetic(tmp_path_factory):
    root = tmp_path_factory.mktemp('search')
    data = generate_synthetic(root, SYNTH_DOMAINS[0], num_ids=6, images_per_id=4, num_cams=2, img_size=IMG_SIZE)
    torch.manual_seed(0)
    model = timm.create_model('ptl_net', num_classes=0, backbone='test_resnet', embed_dim=32, classifier_dims=(16,))
    return data, save_pretrained(model, root / 'model')


def model_args(model_dir):
    return ['--model', str(model_dir), '--img-size', *map(str, IMG_SIZE), '--device', 'cpu', '--quiet']


def test_search_command_on_a_dataset_writes_ranked_list_and_picture(synthetic, tmp_path):
    data, model_dir = synthetic
    status = main(['search', *model_args(model_dir), '--dataset', 'market1501', '--data-root', str(data), '--top-k', '4',
                   '--worst-first', '--output', str(tmp_path / 'ranks.json')])
    assert status == 0
    rankings = json.loads((tmp_path / 'ranks.json').read_text())
    assert rankings and all(len(r['results']) == 4 and r['query'].endswith('.jpg') for r in rankings)
    assert all(item['correct'] in (True, False) for r in rankings for item in r['results'])
    picture = Image.open(tmp_path / 'ranks.png')
    assert picture.size[0] > 4 * IMG_SIZE[1]


def test_search_command_with_query_images_and_saved_gallery_features(synthetic, tmp_path):
    data, model_dir = synthetic
    features = tmp_path / 'gallery.npz'
    assert main(['extract', *model_args(model_dir), '--folder', str(data / 'bounding_box_test'), '--output', str(features)]) == 0
    query = sorted((data / 'query').iterdir())[0]
    status = main(['search', *model_args(model_dir), '--query', str(query), '--features', str(features), '--top-k', '3',
                   '--output', str(tmp_path / 'ranks.csv'), '--png', str(tmp_path / 'picture.png')])
    assert status == 0
    with open(tmp_path / 'ranks.csv') as f:
        rows = list(csv.DictReader(f))
    # the files are named as Market-1501 names them, so identities and cameras are known on both sides
    assert [r['rank'] for r in rows] == ['1', '2', '3'] and all(r['correct'] in ('0', '1') for r in rows)
    assert (tmp_path / 'picture.png').is_file()


@pytest.mark.parametrize('suffix', ['.safetensors', '.npz'])
def test_saved_features_of_another_model_or_preprocessing_are_not_ranked_against(synthetic, tmp_path, capsys, suffix):
    data, model_dir = synthetic
    torch.manual_seed(1)
    other = save_pretrained(timm.create_model('ptl_net', num_classes=0, backbone='test_resnet', embed_dim=32,
                                              classifier_dims=(16,)), tmp_path / 'other')
    features = tmp_path / f'gallery{suffix}'
    gallery = str(data / 'bounding_box_test')
    assert main(['extract', *model_args(other), '--folder', gallery, '--output', str(features)]) == 0
    query = str(sorted((data / 'query').iterdir())[0])
    search_args = ['search', '--query', query, '--features', str(features), '--output', str(tmp_path / 'r.json')]
    assert main([*search_args, *model_args(model_dir)]) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and 'weights_sha256' in err and 'ptl-timm extract' in err
    assert main([*search_args, *model_args(other), '--flip']) == 2
    assert 'flip False in the file, True here' in capsys.readouterr().err
    assert main([*search_args, *model_args(other)]) == 0 and not (tmp_path / 'r.png').is_dir()
    assert main([*search_args, '--model', str(other), '--img-size', '32', '16', '--device', 'cpu', '--quiet']) == 2
    assert 'input_size [3, 64, 32] in the file, [3, 32, 16] here' in capsys.readouterr().err


def test_embeddings_of_different_widths_are_refused_by_name():
    with pytest.raises(InputError, match='query embeddings are 8-d and gallery embeddings 16-d'):
        search(random_set(2), random_set(5, dim=16), backend='torch')


def test_search_command_without_a_gallery_is_a_clear_error(synthetic, tmp_path, capsys):
    data, model_dir = synthetic
    status = main(['search', *model_args(model_dir), '--query', str(data / 'query'), '--output', str(tmp_path / 'r.json')])
    assert status == 2 and 'no gallery images' in capsys.readouterr().err


def test_num_queries_with_worst_first_picks_the_worst_of_all_queries():
    query, gallery = random_set(30, seed=5), random_set(60, seed=6)
    everything = search(query, gallery, top_k=3, backend='torch', worst_first=True)
    worst = search(query, gallery, top_k=3, backend='torch', worst_first=True, num_queries=4)
    assert worst == everything[:4]
    first_four = {f'img{i}.jpg' for i in range(4)}
    assert {r['query'] for r in worst} != first_four  # not the first four queries re-ordered
    assert [r['query'] for r in search(query, gallery, top_k=3, backend='torch', num_queries=4)] == sorted(first_four)


@pytest.mark.slow
def test_search_command_marks_matches_of_folders_named_like_a_dataset(synthetic, tmp_path):
    """--query/--gallery folders whose files follow Market-1501's naming: right/wrong, junk skipped, the
    worst queries of all with --worst-first --num-queries."""
    data, model_dir = synthetic
    common = ['search', *model_args(model_dir), '--query', str(data / 'query'), '--gallery',
              str(data / 'bounding_box_test'), '--top-k', '5', '--worst-first']
    assert main([*common, '--output', str(tmp_path / 'all.json')]) == 0
    assert main([*common, '--num-queries', '4', '--output', str(tmp_path / 'worst.json')]) == 0
    everything = json.loads((tmp_path / 'all.json').read_text())
    assert all(item['correct'] in (True, False) for r in everything for item in r['results'])
    assert not [item for r in everything for item in r['results']
                if item['pid'] == r['pid'] and item['camid'] == r['camid']]  # same identity and camera: junk
    worst = json.loads((tmp_path / 'worst.json').read_text())
    assert worst == everything[:4] and len(everything) > 4
