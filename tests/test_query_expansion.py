"""Average query expansion against fast-reid's ``aqe`` written out with numpy."""
import numpy as np
import pytest
import torch

from ptl_timm.eval import query_expansion


def fast_reid_aqe(q: np.ndarray, g: np.ndarray, k: int, alpha: float, times: int):
    """fast-reid's ``fastreid/evaluation/query_expansion.py::aqe`` (dense N × N similarities)."""
    features = np.concatenate([q, g]).astype(np.float64)
    for _ in range(times):
        normalized = features / np.linalg.norm(features, axis=1, keepdims=True)
        expanded = []
        for sim in normalized @ normalized.T:
            top = np.argsort(-sim, kind='stable')[:k]
            weights = np.power(sim[top], alpha)[:, None]
            expanded.append(np.mean(features[top] * weights, axis=0))
        features = np.stack(expanded)
    return features[:len(q)], features[len(q):]


@pytest.mark.parametrize('k, alpha, times, chunk_size', [
    (10, 3.0, 1, 1024), (4, 3.0, 2, 7), (1, 1.0, 1, 5), (6, 2.0, 1, 3)])
def test_matches_fast_reid_aqe(k, alpha, times, chunk_size):
    rng = np.random.default_rng(0)
    q, g = rng.normal(size=(9, 16)), rng.normal(size=(23, 16))
    got_q, got_g = query_expansion(q, g, k=k, alpha=alpha, times=times, chunk_size=chunk_size, device='cpu')
    want_q, want_g = fast_reid_aqe(q, g, k, alpha, times)
    np.testing.assert_allclose(got_q.numpy(), want_q, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got_g.numpy(), want_g, rtol=1e-4, atol=1e-5)


def test_k_one_keeps_each_feature():
    q, g = torch.randn(3, 8), torch.randn(5, 8)
    got_q, got_g = query_expansion(q, g, k=1, alpha=3.0)
    torch.testing.assert_close(got_q, q)
    torch.testing.assert_close(got_g, g)


def test_expansion_pulls_a_query_towards_its_identity():
    """Two tight clusters: after expansion a noisy query is closer (cosine) to its own cluster."""
    torch.manual_seed(0)
    centre_a, centre_b = torch.randn(32), torch.randn(32)
    g = torch.cat([centre_a + 0.1 * torch.randn(5, 32), centre_b + 0.1 * torch.randn(5, 32)])
    q = (centre_a + 1.0 * torch.randn(1, 32))
    cos = torch.nn.functional.cosine_similarity
    before = cos(q, centre_a[None]).item()
    after = cos(query_expansion(q, g, k=4)[0], centre_a[None]).item()
    assert after > before


@pytest.mark.parametrize('kwargs, match', [(dict(k=0), 'k must be in'), (dict(k=99), 'k must be in'),
                                           (dict(k=2, times=0), 'times must be')])
def test_invalid_parameters_raise_value_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        query_expansion(torch.randn(2, 4), torch.randn(3, 4), **kwargs)
