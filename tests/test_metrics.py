"""Chunked metrics against straightforward full-matrix references of torchreid's algorithm and of
the official Market-1501 (trapezoid) AP, on random cases with ties, missing matches and junk."""
import numpy as np
import pytest
import torch

from ptl_timm.eval import metrics
from ptl_timm.errors import InputError
from ptl_timm.eval.metrics import evaluate_distmat, evaluate_rank

TOL = 1e-6


def reference_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=50, ap_mode='default'):
    """torchreid ``eval_market1501`` (full argsort, per-query loop) with a stable sort (distance, then
    gallery index) and fast-reid's mINP; ``ap_mode='official'`` is the Market-1501 MATLAB AP loop."""
    num_q, num_g = distmat.shape
    max_rank = min(max_rank, num_g)
    indices = np.argsort(distmat, axis=1, kind='stable')
    all_cmc, all_ap, all_inp = [], [], []
    for q in range(num_q):
        order = indices[q]
        remove = (g_pids[order] == q_pids[q]) & (g_camids[order] == q_camids[q])
        raw = (g_pids[order] == q_pids[q])[~remove].astype(np.int64)
        if not raw.any():
            continue
        cumulative = raw.cumsum()
        hardest = np.where(raw == 1)[0].max()
        all_inp.append(cumulative[hardest] / (hardest + 1.0))
        cmc = np.minimum(cumulative, 1)
        cmc = np.concatenate([cmc, np.ones(max(0, max_rank - len(cmc)), dtype=cmc.dtype)])[:max_rank]
        all_cmc.append(cmc)
        num_rel = raw.sum()
        if ap_mode == 'default':
            precision = cumulative / np.arange(1, len(raw) + 1)
            all_ap.append((precision * raw).sum() / num_rel)
        else:
            ap, old_recall, old_precision, found = 0.0, 0.0, 1.0, 0
            for position, hit in enumerate(raw, start=1):
                found += hit
                recall, precision = found / num_rel, found / position
                ap += (recall - old_recall) * (old_precision + precision) / 2
                old_recall, old_precision = recall, precision
                if found == num_rel:
                    break
            all_ap.append(ap)
    return dict(mAP=np.mean(all_ap), cmc=np.mean(all_cmc, axis=0), mINP=np.mean(all_inp), num_valid_queries=len(all_ap))


def random_case(rng, num_q=None, num_g=None, distinct_distances=4):
    """Integer distances in a tiny range (many exact ties), few ids and cameras (junk), and query
    ids that may be missing from the gallery."""
    num_q = num_q or int(rng.integers(1, 40))
    num_g = num_g or int(rng.integers(1, 80))
    num_ids = int(rng.integers(1, 12))
    q_pids = rng.integers(0, num_ids + 2, num_q)
    g_pids = rng.integers(0, num_ids, num_g)
    q_camids = rng.integers(0, 3, num_q)
    g_camids = rng.integers(0, 3, num_g)
    distmat = rng.integers(0, distinct_distances, (num_q, num_g)).astype(np.float32)
    return distmat, q_pids, g_pids, q_camids, g_camids


def assert_same_metrics(result, expected):
    assert result['num_valid_queries'] == expected['num_valid_queries']
    assert abs(result['mAP'] - expected['mAP']) <= TOL
    assert abs(result['mINP'] - expected['mINP']) <= TOL
    assert result['cmc'].shape == expected['cmc'].shape
    assert np.abs(result['cmc'] - expected['cmc']).max() <= TOL


def has_valid_query(distmat, q_pids, g_pids, q_camids, g_camids):
    return any(((g_pids == p) & (g_camids != c)).any() for p, c in zip(q_pids, q_camids))


def valid_random_cases(seed, count, **kwargs):
    rng = np.random.default_rng(seed)
    cases = []
    while len(cases) < count:
        case = random_case(rng, **kwargs)
        if has_valid_query(*case):
            cases.append(case)
    return cases


@pytest.mark.parametrize('ap_mode', ['default', 'official'])
@pytest.mark.slow
def test_chunked_metrics_equal_full_matrix_reference_with_ties_and_junk(ap_mode):
    for distmat, *labels in valid_random_cases(seed=0, count=200):
        expected = reference_rank(distmat, *labels, max_rank=10, ap_mode=ap_mode)
        result = evaluate_distmat(distmat, *labels, max_rank=10, ap_mode=ap_mode, chunk_size=7, device='cpu')
        assert_same_metrics(result, expected)


@pytest.mark.parametrize('ap_mode', ['default', 'official'])
def test_accelerator_ranking_path_equals_reference_when_run_on_cpu(monkeypatch, ap_mode):
    # the sort-key binary search that CUDA uses, checked here without a GPU
    monkeypatch.setattr(metrics, '_sorts_rows_with_numpy', lambda device: False)
    for distmat, *labels in valid_random_cases(seed=10, count=100):
        expected = reference_rank(distmat, *labels, max_rank=10, ap_mode=ap_mode)
        assert_same_metrics(evaluate_distmat(distmat, *labels, max_rank=10, ap_mode=ap_mode, chunk_size=5, device='cpu'),
                            expected)


def test_metrics_equal_reference_without_ties():
    for distmat, *labels in valid_random_cases(seed=1, count=50, distinct_distances=1 << 20):
        assert_same_metrics(evaluate_distmat(distmat, *labels, device='cpu'), reference_rank(distmat, *labels))


def test_ties_resolve_to_the_earlier_gallery_item():
    # two equidistant gallery items: the match first in gallery order ranks first
    q_pids, q_camids, g_camids = np.array([1]), np.array([0]), np.array([1, 1])
    distmat = np.zeros((1, 2), dtype=np.float32)
    match_first = evaluate_distmat(distmat, q_pids, np.array([1, 2]), q_camids, g_camids, device='cpu')
    match_second = evaluate_distmat(distmat, q_pids, np.array([2, 1]), q_camids, g_camids, device='cpu')
    assert match_first['mAP'] == 1.0 and match_first['cmc'][0] == 1.0
    assert match_second['mAP'] == 0.5 and match_second['cmc'][0] == 0.0


def test_queries_without_a_valid_match_are_skipped():
    distmat = np.array([[0.1, 0.2], [0.3, 0.4], [0.5, 0.6]], dtype=np.float32)
    # query 0 only has a same-camera (junk) match, query 1's id is absent, query 2 has a match at rank 2
    result = evaluate_distmat(distmat, np.array([1, 5, 1]), np.array([2, 1]), np.array([1, 0, 0]), np.array([0, 1]),
                              device='cpu')
    assert result['num_valid_queries'] == 1
    assert np.isnan(result['per_query_ap'][:2]).all() and result['per_query_ap'][2] == 0.5
    assert result['mAP'] == 0.5


def test_no_valid_query_at_all_is_an_error():
    distmat = np.zeros((1, 2), dtype=np.float32)
    with pytest.raises(ValueError, match='no query has a true match'):
        evaluate_distmat(distmat, np.array([1]), np.array([1, 2]), np.array([0]), np.array([0, 1]), device='cpu')


def test_junk_neither_hits_nor_misses():
    # the same-id-same-camera item is nearest; removing it makes the cross-camera match rank 1
    distmat = np.array([[0.1, 0.2, 0.3]], dtype=np.float32)
    result = evaluate_distmat(distmat, np.array([1]), np.array([1, 1, 2]), np.array([0]), np.array([0, 1, 1]), device='cpu')
    assert result['mAP'] == 1.0 and result['cmc'][0] == 1.0 and result['mINP'] == 1.0


def test_cosine_features_equal_reference_on_full_distance_matrix():
    rng = np.random.default_rng(2)
    for _ in range(10):
        q_feats, g_feats = rng.standard_normal((30, 16)), rng.standard_normal((90, 16))
        labels = (rng.integers(0, 8, 30), rng.integers(0, 8, 90), rng.integers(0, 3, 30), rng.integers(0, 3, 90))
        qn = q_feats / np.linalg.norm(q_feats, axis=1, keepdims=True)
        gn = g_feats / np.linalg.norm(g_feats, axis=1, keepdims=True)
        expected = reference_rank(1 - qn @ gn.T, *labels)
        result = evaluate_rank(q_feats.astype(np.float32), g_feats.astype(np.float32), *labels, metric='cosine',
                               chunk_size=8, device='cpu')
        assert_same_metrics(result, expected)


def test_euclidean_features_with_exact_ties_equal_reference():
    rng = np.random.default_rng(3)
    for _ in range(20):
        q_feats, g_feats = rng.integers(0, 3, (25, 4)), rng.integers(0, 3, (70, 4))
        labels = (rng.integers(0, 6, 25), rng.integers(0, 6, 70), rng.integers(0, 3, 25), rng.integers(0, 3, 70))
        distmat = ((q_feats[:, None, :] - g_feats[None]) ** 2).sum(-1).astype(np.float64)
        if not has_valid_query(distmat, *labels):
            continue
        result = evaluate_rank(q_feats.astype(np.float32), g_feats.astype(np.float32), *labels, metric='euclidean',
                               chunk_size=6, device='cpu')
        assert_same_metrics(result, reference_rank(distmat, *labels))


def test_result_does_not_depend_on_chunk_size():
    distmat, *labels = valid_random_cases(seed=4, count=1, num_q=37, num_g=60)[0]
    results = [evaluate_distmat(distmat, *labels, chunk_size=size, device='cpu') for size in (1, 5, 37, 1000)]
    for result in results[1:]:
        assert result['mAP'] == results[0]['mAP'] and (result['cmc'] == results[0]['cmc']).all()


def test_official_ap_is_at_most_default_ap():
    for distmat, *labels in valid_random_cases(seed=5, count=20):
        official = evaluate_distmat(distmat, *labels, ap_mode='official', device='cpu')
        default = evaluate_distmat(distmat, *labels, device='cpu')
        assert official['mAP'] <= default['mAP'] + TOL


def test_single_gallery_shot_is_deterministic_per_seed():
    distmat, *labels = valid_random_cases(seed=6, count=1, num_q=20, num_g=60)[0]
    first, second = (evaluate_distmat(distmat, *labels, single_gallery_shot=True, seed=3, device='cpu') for _ in range(2))
    assert (first['cmc'] == second['cmc']).all()


def test_single_gallery_shot_equals_plain_cmc_with_one_image_per_identity():
    rng = np.random.default_rng(7)
    num_ids = 15
    g_pids = rng.permutation(num_ids)
    q_pids = rng.integers(0, num_ids, 12)
    distmat = rng.random((12, num_ids)).astype(np.float32)
    labels = (q_pids, g_pids, np.zeros(12, dtype=int), np.ones(num_ids, dtype=int))
    single_shot = evaluate_distmat(distmat, *labels, single_gallery_shot=True, device='cpu')
    assert_same_metrics(single_shot, reference_rank(distmat, *labels))


def test_single_gallery_shot_cmc_averages_draws_of_one_image_per_identity():
    # the match (id 1) has one image at distance 0.5; id 2 has images at 0.1 and 0.9: it is ahead in
    # half of the draws, so rank-1 is 0.5 in expectation (within sampling error over many repeats)
    distmat = np.array([[0.5, 0.1, 0.9]], dtype=np.float32)
    labels = (np.array([1]), np.array([1, 2, 2]), np.array([0]), np.array([1, 1, 1]))
    result = evaluate_distmat(distmat, *labels, single_gallery_shot=True, num_repeats=2000, device='cpu')
    assert abs(result['cmc'][0] - 0.5) < 0.05 and result['cmc'][1] == 1.0


def test_unknown_metric_is_rejected():
    with pytest.raises(ValueError, match='metric'):
        evaluate_rank(np.zeros((1, 2)), np.zeros((1, 2)), [0], [0], [0], [1], metric='manhattan')


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_cuda_equals_cpu():
    distmat, *labels = valid_random_cases(seed=8, count=1, num_q=30, num_g=80)[0]
    cpu = evaluate_distmat(distmat, *labels, device='cpu')
    assert_same_metrics(evaluate_distmat(torch.from_numpy(distmat).cuda(), *labels), cpu)


def test_nan_features_are_rejected():
    q_feats = np.array([[np.nan, 1.0]], dtype=np.float32)
    with pytest.raises(ValueError, match='NaN'):
        evaluate_rank(q_feats, np.ones((2, 2), dtype=np.float32), [0], [0, 1], [0], [1, 1], device='cpu')


@pytest.mark.parametrize('side', ['query', 'gallery'])
def test_unknown_camera_is_refused(side):
    """Camera -1 would switch off the same-camera exclusion for those images and inflate the metrics."""
    distmat = np.array([[0.1, 0.2, 0.3]], dtype=np.float32)
    q_camids, g_camids = np.array([0]), np.array([0, 1, 1])
    if side == 'query':
        q_camids = np.array([-1])
    else:
        g_camids = np.array([0, -1, 1])
    with pytest.raises(InputError, match=f'{int(side == "query")} query and {int(side == "gallery")} gallery '
                                          r'images have an unknown camera'):
        evaluate_distmat(distmat, np.array([1]), np.array([1, 1, 2]), q_camids, g_camids, device='cpu')
