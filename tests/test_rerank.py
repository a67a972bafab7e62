"""Bounded-memory k-reciprocal re-ranking against the classic Zhong et al. numpy code."""
import numpy as np
import pytest
import torch

from ptl_timm.eval.metrics import evaluate_distance_chunks, evaluate_distmat
from ptl_timm.eval.rerank import iter_re_ranking, re_ranking


def classic_re_ranking(q_g_dist, q_q_dist, g_g_dist, k1=20, k2=6, lambda_value=0.3):
    """The classic numpy port (Zhong et al. CVPR'17; torchreid/fast-reid ``re_ranking``), verbatim
    apart from formatting: dense N × N matrices, full argsort. Inputs are euclidean distances."""
    original_dist = np.concatenate(
        [np.concatenate([q_q_dist, q_g_dist], axis=1), np.concatenate([q_g_dist.T, g_g_dist], axis=1)], axis=0)
    original_dist = np.power(original_dist, 2).astype(np.float32)
    original_dist = np.transpose(1. * original_dist / np.max(original_dist, axis=0))
    V = np.zeros_like(original_dist).astype(np.float32)
    initial_rank = np.argsort(original_dist).astype(np.int32)
    query_num = q_g_dist.shape[0]
    gallery_num = q_g_dist.shape[0] + q_g_dist.shape[1]
    all_num = gallery_num
    for i in range(all_num):
        forward_k_neigh_index = initial_rank[i, :k1 + 1]
        backward_k_neigh_index = initial_rank[forward_k_neigh_index, :k1 + 1]
        fi = np.where(backward_k_neigh_index == i)[0]
        k_reciprocal_index = forward_k_neigh_index[fi]
        k_reciprocal_expansion_index = k_reciprocal_index
        for j in range(len(k_reciprocal_index)):
            candidate = k_reciprocal_index[j]
            candidate_forward_k_neigh_index = initial_rank[candidate, :int(np.around(k1 / 2.)) + 1]
            candidate_backward_k_neigh_index = initial_rank[candidate_forward_k_neigh_index, :int(np.around(k1 / 2.)) + 1]
            fi_candidate = np.where(candidate_backward_k_neigh_index == candidate)[0]
            candidate_k_reciprocal_index = candidate_forward_k_neigh_index[fi_candidate]
            if len(np.intersect1d(candidate_k_reciprocal_index, k_reciprocal_index)) > 2. / 3 * len(
                    candidate_k_reciprocal_index):
                k_reciprocal_expansion_index = np.append(k_reciprocal_expansion_index, candidate_k_reciprocal_index)
        k_reciprocal_expansion_index = np.unique(k_reciprocal_expansion_index)
        weight = np.exp(-original_dist[i, k_reciprocal_expansion_index])
        V[i, k_reciprocal_expansion_index] = 1. * weight / np.sum(weight)
    original_dist = original_dist[:query_num, ]
    if k2 != 1:
        V_qe = np.zeros_like(V, dtype=np.float32)
        for i in range(all_num):
            V_qe[i, :] = np.mean(V[initial_rank[i, :k2], :], axis=0)
        V = V_qe
    invIndex = []
    for i in range(gallery_num):
        invIndex.append(np.where(V[:, i] != 0)[0])
    jaccard_dist = np.zeros_like(original_dist, dtype=np.float32)
    for i in range(query_num):
        temp_min = np.zeros(shape=[1, gallery_num], dtype=np.float32)
        indNonZero = np.where(V[i, :] != 0)[0]
        indImages = [invIndex[ind] for ind in indNonZero]
        for j in range(len(indNonZero)):
            temp_min[0, indImages[j]] = temp_min[0, indImages[j]] + np.minimum(V[i, indNonZero[j]],
                                                                               V[indImages[j], indNonZero[j]])
        jaccard_dist[i] = 1 - temp_min / (2. - temp_min)
    final_dist = jaccard_dist * (1 - lambda_value) + original_dist * lambda_value
    return final_dist[:query_num, query_num:]


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
