""" ReID training objectives, all reading the ``ReIDOutput`` every model's ``forward_reid`` returns.

* ``TripletLoss``: batch-hard triplet loss (Hermans et al., "In Defense of the Triplet Loss", 2017),
  as in open-reid and the official MGN / MGN_PTL code.
* ``CrossEntropyLabelSmooth``: identity cross-entropy with optional label smoothing.
* ``ReIDLoss``: CE averaged over every classifier plus triplet averaged over every metric feature;
  ``ReIDLoss(triplet_weight=1., margin=1.2)`` is MGN's objective (8 classifiers, 3 global features).
* ``DistillationLoss``: Student-Teacher Distillation, PTL paper Eq. 4.

The losses take a model's output and the identity labels; they never need to know the architecture.
"""
from typing import Dict, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from .models.reid_output import ReIDOutput

__all__ = ['TripletLoss', 'CrossEntropyLabelSmooth', 'ReIDLoss', 'DistillationLoss', 'pairwise_euclidean']


def _at_least_float32(x: torch.Tensor) -> torch.Tensor:
    """Losses under autocast are computed in float32 (float64 inputs stay float64)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def pairwise_euclidean(features: torch.Tensor) -> torch.Tensor:
    """[N, N] euclidean distances; the clamp keeps the gradient finite where a distance is zero
    (the diagonal, duplicated features)."""
    squared_norms = features.pow(2).sum(1, keepdim=True)
    squared = squared_norms + squared_norms.t() - 2 * features @ features.t()
    return squared.clamp(min=1e-12).sqrt()


class TripletLoss(nn.Module):
    """Batch-hard triplet loss: mean over anchors of max(0, d(a, hardest p) - d(a, hardest n) + margin).

    The hardest positive is the farthest sample of the anchor's identity, the hardest negative the
    closest sample of any other identity (euclidean distance, features not normalised, as in MGN).
    The anchor counts as its own positive (distance 0): with the usual P×K batches (K ≥ 2) this
    changes nothing, and an anchor whose identity has no other image in the batch still pushes its
    closest negative beyond the margin instead of being dropped. A batch with a single identity has
    no negatives at all and raises ``ValueError``.

    Args:
        margin: Hinge margin (0.3 in most ReID baselines, 1.2 in MGN).
    """

    def __init__(self, margin: float = 0.3):
        super().__init__()
        if margin < 0:
            raise ValueError(f'TripletLoss margin must be >= 0, got {margin}')
        self.margin = margin

    def forward(self, features: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if features.dim() != 2 or targets.shape != features.shape[:1]:
            raise ValueError(
                f'TripletLoss takes features [N, D] and targets [N]; got {tuple(features.shape)} and '
                f'{tuple(targets.shape)}')
        same_identity = targets[:, None] == targets[None, :]
        if bool(same_identity.all()):
            raise ValueError(
                f'batch-hard triplet loss needs at least two identities per batch, got only identity '
                f'{targets[0].item()} ({targets.numel()} samples); sample P×K batches with P >= 2 (PKSampler)')
        dist = pairwise_euclidean(_at_least_float32(features))
        hardest_positive = dist.masked_fill(~same_identity, float('-inf')).amax(1)
        hardest_negative = dist.masked_fill(same_identity, float('inf')).amin(1)
        return F.relu(hardest_positive - hardest_negative + self.margin).mean()

    def extra_repr(self) -> str:
        return f'margin={self.margin}'


class CrossEntropyLabelSmooth(nn.Module):
    """Identity cross-entropy against (1 - ε)·one_hot + ε / num_classes (ε = 0: plain CE).

    Args:
        epsilon: Label smoothing ε in [0, 1).
    """

    def __init__(self, epsilon: float = 0.0):
        super().__init__()
        if not 0.0 <= epsilon < 1.0:
            raise ValueError(f'label smoothing epsilon must be in [0, 1), got {epsilon}')
        self.epsilon = epsilon

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(_at_least_float32(logits), targets, label_smoothing=self.epsilon)

    def extra_repr(self) -> str:
        return f'epsilon={self.epsilon}'


def _identity_ce(criterion: CrossEntropyLabelSmooth, output: ReIDOutput, targets: torch.Tensor) -> torch.Tensor:
    if not output.logits:
        raise ValueError(
            'the CE term needs identity logits, but the model output has none (num_classes=0); '
            'build the model with num_classes=<training identities> or set the CE weight to 0')
    return torch.stack([criterion(logits, targets) for logits in output.logits]).mean()


class ReIDLoss(nn.Module):
    """``ce_weight · mean_k CE(logits_k) + triplet_weight · mean_j Triplet(metric_features_j)``.

    One classifier and one metric feature give the usual CE + triplet baseline;
    ``ReIDLoss(triplet_weight=1., margin=1.2)`` on MGN averages CE over its 8 classifiers and the
    triplet loss over its 3 reduced global features (the official MGN / MGN_PTL objective).
    A term whose weight is 0 is not computed.

    Returns ``(total, parts)`` with ``parts`` the detached unweighted terms ('ce', 'triplet').
    """

    def __init__(
            self,
            ce_weight: float = 1.0,
            triplet_weight: float = 0.0,
            margin: float = 0.3,
            label_smoothing: float = 0.0,
    ):
        super().__init__()
        if ce_weight < 0 or triplet_weight < 0 or ce_weight + triplet_weight == 0:
            raise ValueError(
                f'ReIDLoss weights must be >= 0 and not both 0, got ce_weight={ce_weight}, '
                f'triplet_weight={triplet_weight}')
        self.ce_weight = ce_weight
        self.triplet_weight = triplet_weight
        self.cross_entropy = CrossEntropyLabelSmooth(label_smoothing)
        self.triplet = TripletLoss(margin)

    def forward(self, output: ReIDOutput, targets: torch.Tensor) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        parts = {}
        if self.ce_weight:
            parts['ce'] = _identity_ce(self.cross_entropy, output, targets)
        if self.triplet_weight:
            if not output.metric_features:
                raise ValueError('the triplet term needs metric features, but the model output has none')
            parts['triplet'] = torch.stack([self.triplet(f, targets) for f in output.metric_features]).mean()
        weights = {'ce': self.ce_weight, 'triplet': self.triplet_weight}
        total = sum(weights[name] * value for name, value in parts.items())
        return total, {name: value.detach() for name, value in parts.items()}


class DistillationLoss(nn.Module):
    """Student-Teacher Distillation, PTL paper Eq. 4: ``(1 - λ)·CE(student) + λ·L1(f_student, f_teacher)``.

    L1 is the mean absolute error between the student's and the teacher's embeddings (the teacher is
    detached: only the student learns). CE is averaged over the student's classifiers.

    Args:
        lam: λ, the weight of the feature-matching term (0.8 in the paper).
        label_smoothing: Label smoothing of the CE term.
    """

    def __init__(self, lam: float = 0.8, label_smoothing: float = 0.0):
        super().__init__()
        if not 0.0 <= lam <= 1.0:
            raise ValueError(f'DistillationLoss lam must be in [0, 1], got {lam}')
        self.lam = lam
        self.cross_entropy = CrossEntropyLabelSmooth(label_smoothing)

    def forward(
            self,
            student: ReIDOutput,
            teacher: Union[ReIDOutput, torch.Tensor],
            targets: torch.Tensor,
    ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """``teacher``: the teacher's ``ReIDOutput`` or its embedding."""
        teacher_embedding = teacher.embedding if isinstance(teacher, ReIDOutput) else teacher
        if student.embedding.shape != teacher_embedding.shape:
            raise ValueError(
                f'student embedding {tuple(student.embedding.shape)} and teacher embedding '
                f'{tuple(teacher_embedding.shape)} differ in shape; build the student with the teacher\'s '
                f'embedding width (the reid_* models match their ptl_* teachers) or put a linear adapter '
                f'on the student side')
        parts = {'l1': F.l1_loss(_at_least_float32(student.embedding), _at_least_float32(teacher_embedding.detach()))}
        if self.lam < 1.0:
            parts['ce'] = _identity_ce(self.cross_entropy, student, targets)
        total = self.lam * parts['l1'] + (1.0 - self.lam) * parts.get('ce', 0.0)
        return total, {name: value.detach() for name, value in parts.items()}
