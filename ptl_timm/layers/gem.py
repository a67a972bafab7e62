""" Generalized-mean (GeM) pooling with a learnable exponent, and the global-pool factory of the ReID models.

Paper: `Fine-tuning CNN Image Retrieval with No Human Annotation` (Radenović et al., TPAMI 2018),
https://arxiv.org/abs/1711.02512. GeM(x) = (mean over H×W of clamp(x, eps)^p)^(1/p): p = 1 is average
pooling and p → ∞ max pooling; learning p lets a ReID model choose in between (fast-reid's
``GeneralizedMeanPoolingP``).

timm's ``SelectAdaptivePool2d`` has no GeM, so ``create_global_pool`` returns this layer for
``global_pool='gem'`` and timm's layer for every other pool type. Both expose ``pool_type``,
``feat_mult()`` and ``is_identity()``, which timm's model utilities and ``config.json`` read.
"""
import torch
import torch.nn as nn

from timm.layers import SelectAdaptivePool2d

__all__ = ['GeneralizedMeanPool2d', 'create_global_pool']


class GeneralizedMeanPool2d(nn.Module):
    """GeM of an NCHW map over H×W into [B, C], with one learnable exponent ``p``.

    Args:
        p: Initial exponent (3 as in the paper and fast-reid).
        eps: Lower clamp of the input, so that a fractional power of a ReLU zero stays differentiable.
    """
    pool_type: torch.jit.Final[str]

    def __init__(self, p: float = 3.0, eps: float = 1e-6, device=None, dtype=None):
        super().__init__()
        self.p = nn.Parameter(torch.full((1,), p, device=device, dtype=dtype))
        self.eps = eps
        self.pool_type = 'gem'

    def is_identity(self) -> bool:
        return False

    def feat_mult(self) -> int:
        return 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.clamp(min=self.eps).pow(self.p).mean((2, 3)).pow(self.p.reciprocal())

    def extra_repr(self) -> str:
        return f'eps={self.eps}'


def create_global_pool(pool_type: str, device=None, dtype=None) -> nn.Module:
    """Global pooling of an NCHW map into [B, C·feat_mult()]: ``'gem'`` is ``GeneralizedMeanPool2d``,
    every other type timm's ``SelectAdaptivePool2d`` ('avg', 'max', 'avgmax', 'catavgmax'); '' passes
    the map through unpooled."""
    if pool_type == 'gem':
        return GeneralizedMeanPool2d(device=device, dtype=dtype)
    return SelectAdaptivePool2d(pool_type=pool_type, flatten=bool(pool_type))
