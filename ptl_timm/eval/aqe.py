"""Alpha-weighted average query expansion (αQE) over queries and gallery, as fast-reid's ``aqe``.

Paper: `Fine-tuning CNN Image Retrieval with No Human Annotation` (Radenović et al., TPAMI 2018), §5.
Every feature (query and gallery alike) is replaced by the mean of its ``k`` most cosine-similar
features (itself included), each weighted by similarity^α; ``times`` repeats it on the result.
fast-reid forms the full N × N similarity matrix (35 GB at MSMT17 scale); here it is taken a block
of rows at a time, so memory is one block plus the features.
"""
from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F

from ptl_timm.utils import resolve_device
from .metrics import ArrayLike, _as_tensor

__all__ = ['query_expansion', 'AQE_K', 'AQE_ALPHA', 'AQE_TIMES']

# fast-reid's settings: the defaults here, in `ptl-timm eval` and in the training config
AQE_K, AQE_ALPHA, AQE_TIMES = 10, 3.0, 1


def query_expansion(q_feats: ArrayLike, g_feats: ArrayLike, k: int = AQE_K, alpha: float = AQE_ALPHA,
                    times: int = AQE_TIMES, chunk_size: int = 1024,
                    device: Optional[Union[str, torch.device]] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """The expanded ``(q_feats, g_feats)`` (float32, on CPU), for any distance the evaluation then uses.

    Args:
        q_feats: Query features [Q, D].
        g_feats: Gallery features [G, D].
        k: Neighbours averaged per feature, itself included (fast-reid's ``QE_K``).
        alpha: Exponent of the similarity weights; an integer keeps the sign of a negative similarity.
        times: Rounds of expansion (fast-reid's ``QE_TIME``).
        chunk_size: Rows of the similarity matrix formed at once.
        device: Where to compute (CUDA when present by default).
    """
    device = resolve_device(device)
    q, g = (_as_tensor(x, torch.float32, device) for x in (q_feats, g_feats))
    if q.ndim != 2 or g.ndim != 2 or q.shape[1] != g.shape[1]:
        raise ValueError(
            f'query and gallery features must be 2-D with the same width, got {tuple(q.shape)} and {tuple(g.shape)}')
    features = torch.cat([q, g])
    if not 1 <= k <= len(features):
        raise ValueError(f'query expansion k must be in [1, {len(features)}] (query + gallery items), got {k}')
    if times < 1:
        raise ValueError(f'query expansion times must be >= 1, got {times}')
    for _ in range(times):
        normalized = F.normalize(features, dim=1)
        expanded = torch.empty_like(features)
        for start in range(0, len(features), chunk_size):
            rows = slice(start, start + chunk_size)
            similarity, neighbours = torch.topk(normalized[rows] @ normalized.T, k, dim=1)
            weights = similarity.pow(alpha)
            expanded[rows] = torch.einsum('bk,bkd->bd', weights, features[neighbours]) / k
        features = expanded
    return features[:len(q)].cpu(), features[len(q):].cpu()
