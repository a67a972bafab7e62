"""Compute cost of a model at an input size, counted by PyTorch's own FLOP counter (no extra dependency)."""
from typing import Optional, Sequence

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ['count_macs']


def count_macs(model: nn.Module, input_size: Optional[Sequence[int]] = None) -> int:
    """Multiply-accumulates of one eval-mode forward of one image of ``input_size`` (C, H, W; default the
    model's ``pretrained_cfg``). Convolutions and matrix products are counted (PyTorch counts 2 FLOPs
    per MAC); element-wise work (activations, the cells' gates, normalisation) is not, as in fvcore and
    timm's benchmark. A model on the meta device is counted without computing anything."""
    input_size = tuple(input_size or model.pretrained_cfg['input_size'])
    parameter = next(model.parameters())
    was_training = model.training
    model.eval()
    try:
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(torch.zeros(1, *input_size, device=parameter.device, dtype=parameter.dtype))
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2
