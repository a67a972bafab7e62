"""XBM's cross-batch memory (ReIDLoss(xbm_size=...)): the queue, and the cross-batch triplet term
against a brute-force reference written with explicit loops."""
import pytest
import torch

from ptl_timm import ReIDOutput
from ptl_timm.losses import CrossBatchMemory, ReIDLoss, TripletLoss


def brute_force_cross_triplet(features, targets, memory, memory_targets, margin: float) -> float:
    losses = []
    for a in range(len(targets)):
        positives = [0.0] + [float(torch.dist(features[a], memory[m])) for m in range(len(memory_targets))
                             if memory_targets[m] == targets[a]]
        negatives = [float(torch.dist(features[a], memory[m])) for m in range(len(memory_targets))
                     if memory_targets[m] != targets[a]]
        losses.append(max(0.0, max(positives) - min(negatives) + margin) if negatives else 0.0)
    return sum(losses) / len(losses)


def test_cross_triplet_matches_brute_force_and_leaves_the_memory_without_gradient():
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(6, 5, generator=generator, dtype=torch.float64, requires_grad=True)
    targets = torch.tensor([0, 0, 1, 1, 2, 2])
    memory = torch.randn(7, 5, generator=generator, dtype=torch.float64, requires_grad=True)
    memory_targets = torch.tensor([0, 1, 3, 3, 2, 2, 4])  # identity 3 and 4 never appear in the batch
    loss = TripletLoss(0.5).cross(features, targets, memory, memory_targets)
    assert loss.item() == pytest.approx(brute_force_cross_triplet(features.detach(), targets, memory.detach(),
                                                                  memory_targets, 0.5), rel=1e-9)
    loss.backward()
    assert features.grad.abs().sum() > 0 and memory.grad is None


def test_an_anchor_without_negatives_in_memory_contributes_zero():
    features, targets = torch.randn(2, 3), torch.tensor([0, 1])
    memory, memory_targets = torch.randn(3, 3), torch.zeros(3, dtype=torch.long)
    loss = TripletLoss(0.3).cross(features, targets, memory, memory_targets)
    alone = TripletLoss(0.3).cross(features[1:], targets[1:], memory, memory_targets)
    assert loss.item() == pytest.approx(alone.item() / 2)  # anchor 0 has only positives: its term is 0


def test_memory_is_a_fifo_of_the_newest_samples():
    memory = CrossBatchMemory(5)
    for step in range(3):  # batches of 2: samples 0..5, the oldest drops out
        memory.enqueue(torch.full((2, 4), float(step), requires_grad=True), torch.tensor([2 * step, 2 * step + 1]))
    assert len(memory) == 5
    assert memory.targets.tolist() == [4, 5, 2, 3, 0]
    assert memory.features[:, 0].tolist() == [2, 2, 1, 1, 0] and not memory.features.requires_grad
    assert 'features' not in memory.state_dict()  # scratch, never written into a checkpoint


def output_of(features: torch.Tensor) -> ReIDOutput:
    return ReIDOutput(embedding=features, logits=[], metric_features=[features])


def test_reid_loss_xbm_term_mines_the_previous_batches():
    criterion = ReIDLoss(ce_weight=0.0, triplet_weight=1.0, margin=0.3, xbm_size=4, xbm_weight=0.5)
    first, second = torch.randn(4, 3), torch.randn(4, 3)
    targets_first, targets_second = torch.tensor([0, 0, 1, 1]), torch.tensor([1, 1, 2, 2])
    total, parts = criterion(output_of(first), targets_first)
    assert parts['xbm'].item() == 0.0  # an empty memory: nothing to mine yet
    total, parts = criterion(output_of(second), targets_second)
    expected = TripletLoss(0.3).cross(second, targets_second, first, targets_first)
    assert parts['xbm'].item() == pytest.approx(expected.item())
    assert total.item() == pytest.approx(parts['triplet'].item() + 0.5 * expected.item())
    assert criterion.memories[0].targets.tolist() == targets_second.tolist()  # size 4: the newest batch only


def test_reid_loss_without_memory_has_no_xbm_term_and_rejects_bad_sizes():
    _, parts = ReIDLoss(ce_weight=0.0, triplet_weight=1.0)(output_of(torch.randn(4, 3)), torch.tensor([0, 0, 1, 1]))
    assert 'xbm' not in parts
    with pytest.raises(ValueError, match='xbm_size'):
        ReIDLoss(triplet_weight=1.0, xbm_size=-1)
    with pytest.raises(ValueError, match='size must be >= 1'):
        CrossBatchMemory(0)
