"""The training-time output every ReID model in this package shares.

timm's contract makes ``forward`` return one logits tensor, which is all an unmodified timm
training loop can use. ReID objectives need more (the embedding for distillation, several
classifiers and metric-learning features for MGN), so each model also has ``forward_reid``,
which returns this tuple; the engine's losses consume it without knowing the architecture.
"""
from typing import List, NamedTuple

import torch

__all__ = ['ReIDOutput']


class ReIDOutput(NamedTuple):
    """``embedding``: the retrieval feature (what ``forward_head(pre_logits=True)`` returns, and the
    feature Student-Teacher Distillation matches); ``logits``: one tensor per identity classifier
    (empty when ``num_classes=0``); ``metric_features``: the features a triplet loss reads."""
    embedding: torch.Tensor
    logits: List[torch.Tensor]
    metric_features: List[torch.Tensor]
