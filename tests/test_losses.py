"""Losses against brute-force references written with explicit loops."""
import math

import pytest
import torch
import torch.nn.functional as F

from ptl_timm import ReIDOutput
from ptl_timm.losses import CrossEntropyLabelSmooth, DistillationLoss, ReIDLoss, TripletLoss


def pk_batch(num_ids: int = 4, per_id: int = 4, dim: int = 8, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(num_ids * per_id, dim, generator=generator, dtype=torch.float64)
    targets = torch.arange(num_ids).repeat_interleave(per_id)
    return features, targets


def brute_force_triplet(features: torch.Tensor, targets: torch.Tensor, margin: float) -> float:
    losses = []
    for a in range(len(targets)):
        positives = [float(torch.dist(features[a], features[p])) for p in range(len(targets))
                     if targets[p] == targets[a]]
        negatives = [float(torch.dist(features[a], features[n])) for n in range(len(targets))
                     if targets[n] != targets[a]]
        losses.append(max(0.0, max(positives) - min(negatives) + margin))
    return sum(losses) / len(losses)


def brute_force_ce(logits: torch.Tensor, targets: torch.Tensor, epsilon: float) -> float:
    num_classes = logits.shape[1]
    total = 0.0
    for row, target in zip(logits.tolist(), targets.tolist()):
        log_norm = math.log(sum(math.exp(v) for v in row))
        for c, value in enumerate(row):
            weight = (1 - epsilon) * (c == target) + epsilon / num_classes
            total -= weight * (value - log_norm)
    return total / len(targets)


@pytest.mark.parametrize('seed', range(3))
@pytest.mark.parametrize('margin', [0.3, 1.2])
def test_triplet_matches_brute_force_on_pk_batches(seed, margin):
    features, targets = pk_batch(seed=seed)
    loss = TripletLoss(margin)(features, targets)
    assert loss.item() == pytest.approx(brute_force_triplet(features, targets, margin), abs=1e-6)


def test_triplet_matches_brute_force_with_tied_distances():
    features, targets = pk_batch(num_ids=3, per_id=3, dim=4)
    features[1] = features[0]  # a positive at distance 0
    features[3] = features[0]  # a negative at distance 0 (tie between identities)
    features[7] = features[6] = features[4]  # several equal hardest candidates
    loss = TripletLoss(0.5)(features, targets)
    assert loss.item() == pytest.approx(brute_force_triplet(features, targets, 0.5), abs=1e-5)


def test_triplet_gradient_is_finite_with_duplicate_features():
    features, targets = pk_batch(num_ids=2, per_id=2, dim=4)
    features[1] = features[0]
    features.requires_grad_(True)
    TripletLoss(0.3)(features, targets).backward()
    assert torch.isfinite(features.grad).all()


def test_triplet_anchor_without_positive_uses_itself_as_positive():
    features = torch.tensor([[0.0, 0.0], [0.5, 0.0], [3.0, 0.0], [0.0, 0.2]], dtype=torch.float64)
    targets = torch.tensor([0, 1, 2, 2])  # identities 0 and 1 have a single image in the batch
    loss = TripletLoss(1.0)(features, targets)
    assert loss.item() == pytest.approx(brute_force_triplet(features, targets, 1.0), abs=1e-6)
    assert loss.item() > 0


def test_triplet_single_identity_batch_raises_clear_error():
    features, _ = pk_batch(num_ids=1, per_id=4)
    with pytest.raises(ValueError, match='at least two identities'):
        TripletLoss()(features, torch.zeros(4, dtype=torch.long))


def test_triplet_is_zero_when_identities_are_separated_by_the_margin():
    targets = torch.tensor([0, 0, 1, 1])
    features = torch.tensor([[0.0], [0.1], [5.0], [5.1]])
    assert TripletLoss(1.2)(features, targets).item() == 0.0


@pytest.mark.parametrize('epsilon', [0.0, 0.1])
def test_cross_entropy_matches_brute_force(epsilon):
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(6, 5, generator=generator, dtype=torch.float64)
    targets = torch.tensor([0, 4, 2, 2, 1, 3])
    loss = CrossEntropyLabelSmooth(epsilon)(logits, targets)
    assert loss.item() == pytest.approx(brute_force_ce(logits, targets, epsilon), abs=1e-6)


def mgn_like_output(batch: int, num_classes: int = 5, seed: int = 0) -> ReIDOutput:
    generator = torch.Generator().manual_seed(seed)
    globals_ = [torch.randn(batch, 6, generator=generator) for _ in range(3)]
    logits = [torch.randn(batch, num_classes, generator=generator) for _ in range(8)]
    return ReIDOutput(torch.cat(globals_, 1), logits, globals_)


def test_reid_loss_is_mean_ce_over_logits_plus_mean_triplet_over_metric_features():
    features, targets = pk_batch(num_ids=2, per_id=3)
    out = mgn_like_output(len(targets))
    total, parts = ReIDLoss(triplet_weight=1.0, margin=1.2)(out, targets)
    ce = sum(brute_force_ce(l.double(), targets, 0.0) for l in out.logits) / 8
    triplet = sum(brute_force_triplet(f.double(), targets, 1.2) for f in out.metric_features) / 3
    assert parts['ce'].item() == pytest.approx(ce, abs=1e-5)
    assert parts['triplet'].item() == pytest.approx(triplet, abs=1e-5)
    assert total.item() == pytest.approx(ce + triplet, abs=1e-5)


def test_reid_loss_weights_scale_the_terms():
    _, targets = pk_batch(num_ids=2, per_id=3)
    out = mgn_like_output(len(targets))
    total, parts = ReIDLoss(ce_weight=2.0, triplet_weight=0.5)(out, targets)
    assert total.item() == pytest.approx(2.0 * parts['ce'].item() + 0.5 * parts['triplet'].item(), rel=1e-6)


def test_reid_loss_without_triplet_weight_accepts_a_single_identity_batch():
    out = mgn_like_output(4)
    total, parts = ReIDLoss()(out, torch.zeros(4, dtype=torch.long))
    assert set(parts) == {'ce'} and torch.isfinite(total)


def test_reid_loss_ce_without_logits_raises_clear_error():
    out = ReIDOutput(torch.randn(4, 6), [], [torch.randn(4, 6)])
    with pytest.raises(ValueError, match='num_classes=0'):
        ReIDLoss()(out, torch.tensor([0, 0, 1, 1]))


def test_distillation_loss_is_paper_eq4():
    generator = torch.Generator().manual_seed(2)
    targets = torch.tensor([0, 1, 2, 1])
    student = ReIDOutput(torch.randn(4, 6, generator=generator), [torch.randn(4, 3, generator=generator)], [])
    teacher = torch.randn(4, 6, generator=generator)
    total, parts = DistillationLoss(lam=0.8)(student, teacher, targets)
    l1 = (student.embedding - teacher).abs().mean().item()
    ce = brute_force_ce(student.logits[0].double(), targets, 0.0)
    assert parts['l1'].item() == pytest.approx(l1, abs=1e-6)
    assert total.item() == pytest.approx(0.2 * ce + 0.8 * l1, abs=1e-5)


def test_distillation_loss_trains_the_student_only():
    student_embedding = torch.randn(2, 4, requires_grad=True)
    teacher = ReIDOutput(torch.randn(2, 4, requires_grad=True), [], [])
    student = ReIDOutput(student_embedding, [torch.randn(2, 3, requires_grad=True)], [])
    total, _ = DistillationLoss()(student, teacher, torch.tensor([0, 2]))
    total.backward()
    assert student_embedding.grad is not None and teacher.embedding.grad is None


def test_distillation_shape_mismatch_asks_for_an_adapter():
    student = ReIDOutput(torch.randn(2, 4), [torch.randn(2, 3)], [])
    with pytest.raises(ValueError, match='adapter'):
        DistillationLoss()(student, torch.randn(2, 8), torch.tensor([0, 1]))


def test_invalid_hyperparameters_raise_value_error():
    with pytest.raises(ValueError):
        TripletLoss(margin=-1)
    with pytest.raises(ValueError):
        CrossEntropyLabelSmooth(1.0)
    with pytest.raises(ValueError):
        ReIDLoss(ce_weight=0.0, triplet_weight=0.0)
    with pytest.raises(ValueError):
        DistillationLoss(lam=1.5)


def test_cross_entropy_equals_torch_for_epsilon_zero():
    logits, targets = torch.randn(4, 7), torch.tensor([1, 6, 0, 3])
    torch.testing.assert_close(CrossEntropyLabelSmooth()(logits, targets), F.cross_entropy(logits, targets))


def bot_center_loss(features: torch.Tensor, centers: torch.Tensor, targets: torch.Tensor) -> float:
    """BoT's ``CenterLoss.forward``: the masked N × C distance matrix, clamped, summed over the batch."""
    distmat = (features.pow(2).sum(1, keepdim=True) + centers.pow(2).sum(1)[None] - 2 * features @ centers.t())
    mask = targets[:, None] == torch.arange(len(centers))[None]
    return float((distmat * mask).clamp(min=1e-12, max=1e12).sum() / len(targets))


def test_center_loss_matches_bot():
    from ptl_timm.losses import CenterLoss
    torch.manual_seed(0)
    features, targets = pk_batch()
    center = CenterLoss(num_classes=5, feat_dim=8, dtype=torch.float64)
    # BoT's clamp lifts each masked-out zero to 1e-12: (C - 1) of them per row
    expected = bot_center_loss(features, center.centers.detach(), targets) - 4 * 1e-12
    assert float(center(features, targets).detach()) == pytest.approx(expected, rel=1e-12)


def test_reid_loss_adds_the_weighted_center_term_and_bot_center_step_ignores_the_weight():
    from ptl_timm.losses import CenterLoss
    torch.manual_seed(0)
    features, targets = pk_batch()
    features = features.float().requires_grad_()
    logits = torch.randn(len(targets), 4, requires_grad=True)
    center = CenterLoss(4, 8)
    output = ReIDOutput(features, [logits], [features])
    total, parts = ReIDLoss(center_loss=center, center_weight=5e-4)(output, targets)
    torch.testing.assert_close(total, parts['ce'] + 5e-4 * parts['center'])
    torch.testing.assert_close(parts['center'], center(features, targets).detach())
    total.backward()
    center.unweight_center_grads(5e-4)
    unweighted = torch.autograd.grad(center(features.detach(), targets), center.centers)[0]
    torch.testing.assert_close(center.centers.grad, unweighted)
    before = (features.detach() - center.centers.detach()[targets]).norm(dim=1).mean()
    center.center_optimizer(lr=0.5).step()
    assert (features.detach() - center.centers.detach()[targets]).norm(dim=1).mean() < before


def test_reid_loss_without_center_loss_has_no_center_term():
    features, targets = pk_batch()
    _, parts = ReIDLoss()(ReIDOutput(features, [torch.randn(len(targets), 4)], [features]), targets)
    assert 'center' not in parts
