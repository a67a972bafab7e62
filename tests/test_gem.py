"""GeM pooling: the formula, its learnable exponent, and the pool factory of the ReID models."""
import pytest
import torch

from ptl_timm.layers import GeneralizedMeanPool2d, create_global_pool


def test_gem_matches_the_direct_formula():
    torch.manual_seed(0)
    x = torch.rand(2, 3, 5, 4, dtype=torch.float64)
    pool = GeneralizedMeanPool2d(p=2.5).double()
    expected = torch.stack([
        torch.stack([(x[b, c].clamp(min=1e-6) ** 2.5).sum() / 20 for c in range(3)]) for b in range(2)]) ** (1 / 2.5)
    torch.testing.assert_close(pool(x), expected)


def test_gem_spans_average_to_max_pooling():
    x = torch.rand(2, 3, 6, 4) + 0.1
    torch.testing.assert_close(GeneralizedMeanPool2d(p=1.0)(x), x.mean((2, 3)))
    torch.testing.assert_close(GeneralizedMeanPool2d(p=200.0)(x), x.amax((2, 3)), rtol=0.02, atol=0)


def test_gem_exponent_learns_and_zero_inputs_keep_finite_gradients():
    pool = GeneralizedMeanPool2d()
    x = torch.relu(torch.randn(2, 4, 3, 3)).requires_grad_()  # exact zeros, as after a ReLU
    pool(x).sum().backward()
    assert pool.p.grad is not None and pool.p.grad.abs() > 0
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize('pool_type, width', [('gem', 8), ('avg', 8), ('catavgmax', 16)])
def test_factory_gives_pooled_vectors_with_the_pool_type_recorded(pool_type, width):
    pool = create_global_pool(pool_type)
    assert pool(torch.rand(2, 8, 4, 4)).shape == (2, width)
    assert pool.pool_type == pool_type and pool.feat_mult() * 8 == width


def test_factory_without_pooling_passes_the_map_through():
    x = torch.rand(2, 8, 4, 4)
    assert torch.equal(create_global_pool('')(x), x)


def test_gem_scripts():
    pool = GeneralizedMeanPool2d()
    x = torch.rand(2, 3, 4, 4)
    torch.testing.assert_close(torch.jit.script(pool)(x), pool(x))
