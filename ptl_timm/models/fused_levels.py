"""timm's intermediate-feature API for networks whose last feature level is fused from all the others.

Both PTL networks (``ReIDNet`` and ``MGN``) end in a map that needs every earlier level (the side
network's cells or the branches read them all), so ``forward_intermediates`` computes every level
and nothing but the head can be pruned.
"""
from typing import List, Optional, Tuple, Union

import torch
from timm.models._features import feature_take_indices

__all__ = ['FusedLevelsMixin']


class FusedLevelsMixin:
    """Adds ``forward_intermediates`` and ``prune_intermediate_layers`` given ``_levels(x)``: one map per
    ``feature_info`` entry, the last equal to ``forward_features(x)``. (No class annotations here:
    TorchScript would read them as attribute types of the model.)"""

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        assert output_fmt == 'NCHW', 'Output format must be NCHW.'
        take_indices, _ = feature_take_indices(len(self.feature_info), indices)
        levels = self._levels(x)
        intermediates = [levels[i] for i in take_indices]
        if intermediates_only:
            return intermediates
        return levels[-1], intermediates

    @torch.jit.ignore
    def prune_intermediate_layers(
            self,
            indices: Union[int, List[int]] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> List[int]:
        take_indices, _ = feature_take_indices(len(self.feature_info), indices)
        if prune_head:
            self.reset_classifier(0, '')
        return take_indices
