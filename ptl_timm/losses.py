""" ReID training objectives, all reading the ``ReIDOutput`` every model's ``forward_reid`` returns.

* ``TripletLoss``: batch-hard triplet loss (Hermans et al., "In Defense of the Triplet Loss", 2017),
  as in open-reid and the official MGN / MGN_PTL code.
* ``CrossEntropyLabelSmooth``: identity cross-entropy with optional label smoothing.
* ``ReIDLoss``: CE averaged over every classifier plus triplet averaged over every metric feature;
  ``ReIDLoss(triplet_weight=1., margin=1.2)`` is MGN's objective (8 classifiers, 3 global features).
  With ``xbm_size`` it adds XBM's cross-batch term (a ``CrossBatchMemory`` of earlier batches).
* ``CrossBatchMemory``: XBM (Wang et al., "Cross-Batch Memory for Embedding Learning", CVPR 2020),
  a FIFO queue of the embeddings and labels of earlier mini-batches.
* ``CenterLoss``: squared distance of each feature to its identity's learnt centre (Wen et al., ECCV 2016),
  BoT's third term (weight 5e-4; the centres have their own SGD optimiser, lr 0.5).
* ``DistillationLoss``: Student-Teacher Distillation, PTL paper Eq. 4.

The losses take a model's output and the identity labels; they never need to know the architecture.
"""
from typing import Dict, Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from .models.reid_output import ReIDOutput

__all__ = [
    'TripletLoss', 'CrossEntropyLabelSmooth', 'ReIDLoss', 'DistillationLoss', 'CrossBatchMemory', 'CenterLoss',
    'pairwise_euclidean']


def _at_least_float32(x: torch.Tensor) -> torch.Tensor:
    """Losses under autocast are computed in float32 (float64 inputs stay float64)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def pairwise_euclidean(features: torch.Tensor, others: Optional[torch.Tensor] = None) -> torch.Tensor:
    """[N, M] euclidean distances of ``features`` to ``others`` (default: to themselves, [N, N]); the
    clamp keeps the gradient finite where a distance is zero (the diagonal, duplicated features)."""
    others = features if others is None else others
    squared = features.pow(2).sum(1, keepdim=True) + others.pow(2).sum(1) - 2 * features @ others.t()
    return squared.clamp(min=1e-12).sqrt()


def _check_features(features: torch.Tensor, targets: torch.Tensor) -> None:
    if features.dim() != 2 or targets.shape != features.shape[:1]:
        raise ValueError(
            f'TripletLoss takes features [N, D] and targets [N]; got {tuple(features.shape)} and '
            f'{tuple(targets.shape)}')


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
        _check_features(features, targets)
        same_identity = targets[:, None] == targets[None, :]
        if bool(same_identity.all()):
            raise ValueError(
                f'batch-hard triplet loss needs at least two identities per batch, got only identity '
                f'{targets[0].item()} ({targets.numel()} samples); sample P×K batches with P >= 2 (PKSampler)')
        return self._hinge(pairwise_euclidean(_at_least_float32(features)), same_identity)

    def cross(self, features: torch.Tensor, targets: torch.Tensor, memory: torch.Tensor,
              memory_targets: torch.Tensor) -> torch.Tensor:
        """The same loss with the anchors of this batch and the positives and negatives mined from
        ``memory`` (XBM's cross-batch term; the memory is not differentiated). The anchor still counts
        as its own positive; an anchor with no negative in the memory contributes 0."""
        _check_features(features, targets)
        _check_features(memory, memory_targets)
        dist = pairwise_euclidean(_at_least_float32(features), _at_least_float32(memory.detach()))
        own = torch.zeros_like(dist[:, :1])  # the anchor itself, at distance 0
        same_identity = targets[:, None] == memory_targets[None, :]
        return self._hinge(torch.cat([own, dist], 1), F.pad(same_identity, (1, 0), value=True))

    def _hinge(self, dist: torch.Tensor, same_identity: torch.Tensor) -> torch.Tensor:
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


class CrossBatchMemory(nn.Module):
    """XBM's memory: the embeddings and labels of the last ``size`` training samples, newest first.

    Embeddings drift slowly once training has settled, so features computed a few batches ago still
    serve as positives and negatives: the metric loss then sees far more pairs than one mini-batch
    holds (Wang et al., CVPR 2020). The queue is training-time scratch, not part of any checkpoint
    (a resumed run starts it empty).
    """

    def __init__(self, size: int):
        super().__init__()
        if size < 1:
            raise ValueError(f'CrossBatchMemory size must be >= 1, got {size}')
        self.size = size
        self.register_buffer('features', torch.empty(0), persistent=False)
        self.register_buffer('targets', torch.empty(0, dtype=torch.long), persistent=False)

    def __len__(self) -> int:
        return len(self.targets)

    def enqueue(self, features: torch.Tensor, targets: torch.Tensor) -> None:
        """Put a batch in front (detached); the oldest samples beyond ``size`` drop out."""
        old = self.features if len(self) else features.new_empty((0, features.shape[1]))
        self.features = torch.cat([features.detach(), old])[:self.size]
        self.targets = torch.cat([targets.detach(), self.targets.to(targets.device)])[:self.size]

    def extra_repr(self) -> str:
        return f'size={self.size}'


class CenterLoss(nn.Module):
    """Mean over the batch of ||f_i - c_{y_i}||², with one learnt centre per identity (Wen et al., "A
    Discriminative Feature Learning Approach for Deep Face Recognition", ECCV 2016; BoT's form).

    BoT weights it by 5e-4 in the total and trains the centres with their own SGD (lr 0.5) on the
    unweighted gradient: ``center_optimizer`` builds that optimiser, ``unweight_center_grads`` undoes the
    weight on the centres' gradients before its step.

    Args:
        num_classes: Training identities.
        feat_dim: Width of the features (the metric feature of the model's ``forward_reid``).
    """

    def __init__(self, num_classes: int, feat_dim: int, device=None, dtype=None):
        super().__init__()
        if num_classes < 1 or feat_dim < 1:
            raise ValueError(f'CenterLoss needs num_classes >= 1 and feat_dim >= 1, got {num_classes}, {feat_dim}')
        self.centers = nn.Parameter(torch.randn(num_classes, feat_dim, device=device, dtype=dtype))

    def forward(self, features: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if features.dim() != 2 or features.shape[1] != self.centers.shape[1] or targets.shape != features.shape[:1]:
            raise ValueError(
                f'CenterLoss takes features [N, {self.centers.shape[1]}] and targets [N]; got '
                f'{tuple(features.shape)} and {tuple(targets.shape)}')
        features = _at_least_float32(features)
        return (features - self.centers[targets].to(features.dtype)).pow(2).sum(1).mean()

    def center_optimizer(self, lr: float = 0.5) -> torch.optim.Optimizer:
        """BoT's optimiser of the centres: plain SGD."""
        return torch.optim.SGD(self.parameters(), lr=lr)

    def unweight_center_grads(self, weight: float) -> None:
        """Divide the centres' gradient by the loss weight (BoT), so their step does not depend on it."""
        if self.centers.grad is not None:
            self.centers.grad.div_(weight)

    def extra_repr(self) -> str:
        return f'num_classes={self.centers.shape[0]}, feat_dim={self.centers.shape[1]}'


class ReIDLoss(nn.Module):
    """``ce_weight · mean_k CE(logits_k) + triplet_weight · mean_j Triplet(metric_features_j)``
    ``+ xbm_weight · mean_j Triplet(metric_features_j against memory_j)``.

    One classifier and one metric feature give the usual CE + triplet baseline;
    ``ReIDLoss(triplet_weight=1., margin=1.2)`` on MGN averages CE over its 8 classifiers and the
    triplet loss over its 3 reduced global features (the official MGN / MGN_PTL objective).
    ``center_loss`` (a ``CenterLoss``) adds ``center_weight · mean_j Center(metric_features_j)`` (BoT:
    CE with label smoothing 0.1 + triplet margin 0.3 + centre 5e-4); several metric features share its centres.
    ``xbm_size > 0`` keeps a ``CrossBatchMemory`` of that many samples per metric feature; each batch's
    anchors mine their hardest positive and negative from it (before the batch itself is enqueued).
    A term whose weight is 0 is not computed.

    Returns ``(total, parts)`` with ``parts`` the detached unweighted terms ('ce', 'triplet', 'xbm', 'center').
    """

    def __init__(
            self,
            ce_weight: float = 1.0,
            triplet_weight: float = 0.0,
            margin: float = 0.3,
            label_smoothing: float = 0.0,
            xbm_size: int = 0,
            xbm_weight: float = 1.0,
            center_loss: Optional[CenterLoss] = None,
            center_weight: float = 5e-4,
    ):
        super().__init__()
        if ce_weight < 0 or triplet_weight < 0 or ce_weight + triplet_weight == 0:
            raise ValueError(
                f'ReIDLoss weights must be >= 0 and not both 0, got ce_weight={ce_weight}, '
                f'triplet_weight={triplet_weight}')
        if xbm_size < 0 or xbm_weight < 0:
            raise ValueError(
                f'xbm_size and xbm_weight must be >= 0 (xbm_size 0: no memory), got {xbm_size}, {xbm_weight}')
        self.ce_weight = ce_weight
        self.triplet_weight = triplet_weight
        self.xbm_weight = xbm_weight if xbm_size else 0.0
        self.xbm_size = xbm_size
        self.cross_entropy = CrossEntropyLabelSmooth(label_smoothing)
        self.triplet = TripletLoss(margin)
        self.memories = nn.ModuleList()  # one CrossBatchMemory per metric feature, made at the first batch
        if center_weight < 0:
            raise ValueError(f'center_weight must be >= 0, got {center_weight}')
        self.center_loss = center_loss
        self.center_weight = center_weight if center_loss is not None else 0.0

    def forward(self, output: ReIDOutput, targets: torch.Tensor) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        parts = {}
        if self.ce_weight:
            parts['ce'] = _identity_ce(self.cross_entropy, output, targets)
        if self.triplet_weight:
            if not output.metric_features:
                raise ValueError('the triplet term needs metric features, but the model output has none')
            parts['triplet'] = torch.stack([self.triplet(f, targets) for f in output.metric_features]).mean()
        if self.xbm_weight:
            parts['xbm'] = self._cross_batch(output, targets)
        if self.center_weight:
            if not output.metric_features:
                raise ValueError('the centre term needs metric features, but the model output has none')
            parts['center'] = torch.stack([self.center_loss(f, targets) for f in output.metric_features]).mean()
        weights = {'ce': self.ce_weight, 'triplet': self.triplet_weight, 'xbm': self.xbm_weight,
                   'center': self.center_weight}
        total = sum(weights[name] * value for name, value in parts.items())
        return total, {name: value.detach() for name, value in parts.items()}

    def _cross_batch(self, output: ReIDOutput, targets: torch.Tensor) -> torch.Tensor:
        if not output.metric_features:
            raise ValueError('the XBM term needs metric features, but the model output has none')
        while len(self.memories) < len(output.metric_features):
            self.memories.append(CrossBatchMemory(self.xbm_size))
        terms = []
        for features, memory in zip(output.metric_features, self.memories):
            # the first batch meets an empty memory: a zero term that keeps the graph
            terms.append(self.triplet.cross(features, targets, memory.features, memory.targets) if len(memory)
                         else _at_least_float32(features).sum() * 0)
            memory.enqueue(features, targets)
        return torch.stack(terms).mean()


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
