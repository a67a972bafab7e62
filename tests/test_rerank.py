"""Bounded-memory k-reciprocal re-ranking against the classic Zhong et al. numpy code."""
import numpy as np
import pytest
import torch

from ptl_timm.eval.metrics import evaluate_distance_chunks, evaluate_distmat
from ptl_timm.eval.rerank import (_encoding, _expansion_sets, _Features, _neighbours, _query_expansion, iter_re_ranking,
                                  re_ranking)

from rerank_reference import classic_encoding, classic_re_ranking


def euclidean(a, b):
    return np.sqrt(np.maximum(((a[:, None, :] - b[None]) ** 2).sum(-1), 0))


def clustered_features(seed, num_query, num_gallery, dim=8, num_ids=6):
    """Identity clusters on the unit sphere, like ReID embeddings (neighbour lists overlap)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((num_ids, dim))
    feats = centres[rng.integers(0, num_ids, num_query + num_gallery)] + 0.6 * rng.standard_normal(
        (num_query + num_gallery, dim))
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    return feats[:num_query], feats[num_query:]


def classic_from_features(q, g, **kwargs):
    return classic_re_ranking(euclidean(q, g), euclidean(q, q), euclidean(g, g), **kwargs)


@pytest.mark.parametrize('k1,k2,lambda_value', [(20, 6, 0.3), (6, 3, 0.3), (5, 1, 0.5), (9, 10, 0.0)])
def test_re_ranking_equals_classic_code(k1, k2, lambda_value):
    for seed in range(3):
        q, g = clustered_features(seed, num_query=15, num_gallery=60)
        expected = classic_from_features(q, g, k1=k1, k2=k2, lambda_value=lambda_value)
        result = re_ranking(q.astype(np.float32), g.astype(np.float32), k1=k1, k2=k2, lambda_value=lambda_value,
                            chunk_size=16, device='cpu')
        np.testing.assert_allclose(result.numpy(), expected, atol=2e-5)


def sparse_encoding(q, g, k1, k2, block):
    features = _Features(q.astype(np.float32), g.astype(np.float32), torch.device('cpu'))
    initial_rank, row_max = _neighbours(features, k1 + 1, chunk_size=16)
    encoding = _encoding(features, *_expansion_sets(initial_rank, k1, block=block), row_max, block=block)
    return _query_expansion(encoding, initial_rank, k2, block=block) if k2 > 1 else encoding


@pytest.mark.parametrize('k1,k2', [(20, 6), (6, 3), (5, 1)])
def test_compressed_rows_hold_the_classic_dense_encoding(k1, k2):
    q, g = clustered_features(10, num_query=12, num_gallery=70)
    x = np.concatenate([q, g])
    squared = euclidean(x, x).astype(np.float32) ** 2
    expected = classic_encoding(np.transpose(squared / squared.max(0)), k1, k2)
    for block in (5, 1024):  # several blocks and one: the blocked construction is the same matrix
        sparse = sparse_encoding(q, g, k1, k2, block)
        assert sparse.cols.dtype == torch.int32 and sparse.values.dtype == torch.float32
        rows, cols, values = sparse.entries(0, len(x))
        assert all((c[1:] > c[:-1]).all() for c in np.split(cols.numpy(), sparse.row_ptr[1:-1].numpy()))
        assert (values != 0).all() and len(values) == (expected != 0).sum()
        dense = torch.zeros(len(x), len(x))
        dense[rows, cols] = values
        np.testing.assert_allclose(dense.numpy(), expected, rtol=0, atol=1e-7)


def test_re_ranking_does_not_depend_on_chunk_size():
    q, g = clustered_features(5, num_query=21, num_gallery=50)
    results = [re_ranking(q, g, k1=8, k2=3, chunk_size=size, device='cpu') for size in (4, 13, 1000)]
    for result in results[1:]:
        torch.testing.assert_close(result, results[0])


def test_streamed_blocks_cover_every_query_once():
    q, g = clustered_features(6, num_query=30, num_gallery=40)
    blocks = list(iter_re_ranking(q, g, k1=8, k2=3, chunk_size=8, device='cpu'))
    covered = np.concatenate([np.arange(rows.start, rows.stop) for rows, _ in blocks])
    assert (covered == np.arange(30)).all() and all(block.shape[1] == 40 for _, block in blocks)


def test_streamed_evaluation_equals_evaluation_of_full_matrix():
    rng = np.random.default_rng(7)
    q, g = clustered_features(7, num_query=20, num_gallery=60)
    labels = (rng.integers(0, 5, 20), rng.integers(0, 5, 60), rng.integers(0, 3, 20), rng.integers(0, 3, 60))
    streamed = evaluate_distance_chunks(iter_re_ranking(q, g, k1=10, k2=4, chunk_size=8, device='cpu'), *labels)
    full = evaluate_distmat(re_ranking(q, g, k1=10, k2=4, device='cpu'), *labels, device='cpu')
    assert streamed['mAP'] == full['mAP'] and (streamed['cmc'] == full['cmc']).all()


def test_re_ranking_improves_retrieval_of_clustered_identities():
    rng = np.random.default_rng(8)
    num_ids = 8
    centres = rng.standard_normal((num_ids, 16))
    q_pids, g_pids = rng.integers(0, num_ids, 40), np.repeat(np.arange(num_ids), 12)
    q = centres[q_pids] + 1.2 * rng.standard_normal((40, 16))
    g = centres[g_pids] + 1.2 * rng.standard_normal((len(g_pids), 16))
    q, g = (x / np.linalg.norm(x, axis=1, keepdims=True) for x in (q, g))
    labels = (q_pids, g_pids, np.zeros(40, dtype=int), np.ones(len(g_pids), dtype=int))
    plain = evaluate_distmat(euclidean(q, g) ** 2, *labels, device='cpu')
    reranked = evaluate_distmat(re_ranking(q, g, device='cpu'), *labels, device='cpu')
    assert reranked['mAP'] > plain['mAP']


def test_k_larger_than_the_image_count_is_rejected():
    q, g = clustered_features(9, num_query=3, num_gallery=5)
    with pytest.raises(ValueError, match='k1'):
        re_ranking(q, g, k1=20, device='cpu')
