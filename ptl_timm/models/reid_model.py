"""What both ReID networks (``ReIDNet`` and ``MGN``) share: a trunk with an optional side network of
BConv-Cells, whose last feature map is fused from every earlier level.

Because that last map needs every level (the side network's cells or the branches read them all),
timm's ``forward_intermediates`` computes every level and nothing but the head can be pruned.
"""
from typing import Any, Dict, List, Optional, Tuple, Union

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from ptl_timm.layers import reset_latent_states

__all__ = ['ReIDModelMixin', 'reid_cfg', 'embed']


def _take_indices(num_levels: int, indices: Optional[Union[int, List[int]]]) -> List[int]:
    """The levels ``forward_intermediates`` returns (timm's convention): None → all, an int n → the
    last n, a list → those (negative from the end)."""
    if indices is None or isinstance(indices, int):
        count = num_levels if indices is None else indices
        assert 0 < count <= num_levels, f'take {count} of {num_levels} levels'
        return list(range(num_levels - count, num_levels))
    taken = [num_levels + i if i < 0 else i for i in indices]
    assert all(0 <= i < num_levels for i in taken), f'levels {indices} of {num_levels}'
    return taken


def reid_cfg(url: str = '', **kwargs) -> Dict[str, Any]:
    """The pretrained cfg fields every ReID model shares: Market-1501's 751 identities, and the ReID
    preprocessing, a squash resize of the whole crop to exactly ``input_size`` (as
    ``ptl_timm.data.build_transforms``); each model family adds its size, classifier and paper."""
    return {
        'url': url,
        'num_classes': 751,
        'crop_pct': 1.0,
        'crop_mode': 'squash',
        'mean': IMAGENET_DEFAULT_MEAN,
        'std': IMAGENET_DEFAULT_STD,
        'license': 'apache-2.0',
        'origin_url': 'https://github.com/ZJULearning/PTL',
        **kwargs,
    }


def embed(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The retrieval embedding of a batch (no normalisation): ``forward_reid(x).embedding`` of a ReID
    model, the pre-logits feature of any other timm model."""
    if hasattr(model, 'forward_reid'):
        return model.forward_reid(images).embedding
    return model.forward_head(model.forward_features(images), pre_logits=True)


class ReIDModelMixin:
    """timm's model API parts that need only ``side`` (the side network or None), ``feature_info`` and
    ``_levels(x)`` (one map per ``feature_info`` entry, the last equal to ``forward_features(x)``).
    (No class annotations here: TorchScript would read them as attribute types of the model.)"""

    @torch.jit.ignore
    def reset_state(self) -> None:
        """Zero the latent state of every BConv-Cell (``train()`` does this too)."""
        reset_latent_states(self)

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable
        if self.side is not None:
            self.side.set_grad_checkpointing(enable)

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        return set()

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
        take_indices = _take_indices(len(self.feature_info), indices)
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
        take_indices = _take_indices(len(self.feature_info), indices)
        if prune_head:
            self.reset_classifier(0, '')
        return take_indices
