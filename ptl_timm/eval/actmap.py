"""Activation maps: where on the person a ReID model's feature map responds (torchreid's ``visualize_actmap``).

The map of an image is the channel-wise energy of its last feature map (Σ_c f_c², ``forward_features``),
upsampled bilinearly to the image and scaled to [0, 1] per image; it is drawn over the image with the
jet colour map. ``save_actmap_grid`` writes a few images and their overlays as one PNG.
"""
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from timm.data import create_transform

from ptl_timm.data.loader import read_image
from ptl_timm.utils import PathLike, atomic_path
from .extract import eval_data_config

__all__ = ['activation_maps', 'overlay_grid', 'save_actmap_grid']



def activation_maps(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """[B, H, W] maps in [0, 1] of a preprocessed batch [B, C, H, W] (eval mode, the caller's mode restored)."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            features = model.forward_features(images).float()
    finally:
        model.train(was_training)
    if features.ndim != 4 or getattr(model, 'output_fmt', 'NCHW') != 'NCHW':
        raise ValueError(
            f'activation maps need an NCHW feature map from forward_features, got shape {tuple(features.shape)} '
            f'from {model.__class__.__name__}')
    energy = F.interpolate(features.pow(2).sum(1, keepdim=True), size=images.shape[-2:], mode='bilinear',
                           align_corners=False)[:, 0]
    low = energy.flatten(1).min(1).values[:, None, None]
    high = energy.flatten(1).max(1).values[:, None, None]
    return ((energy - low) / (high - low).clamp_min(1e-12)).cpu()


def overlay_grid(
        images: torch.Tensor,
        maps: torch.Tensor,
        columns: int = 4,
        alpha: float = 0.4,
        spacing: int = 8,
) -> Image.Image:
    """One RGB image: for each image [3, H, W] in [0, 1], the image and its map drawn over it side by side,
    ``columns`` pairs per row on a white background."""
    from matplotlib import colormaps

    heat = colormaps['jet'](maps.numpy())[..., :3]
    pictures = images.permute(0, 2, 3, 1).clamp(0, 1).numpy()
    overlays = (1 - alpha) * pictures + alpha * heat
    num, height, width = maps.shape
    columns = min(columns, num)
    rows = -(-num // columns)
    cell_width = 2 * width + spacing
    grid = np.ones((rows * (height + spacing) - spacing, columns * (cell_width + spacing) - spacing, 3))
    for i, (picture, overlay) in enumerate(zip(pictures, overlays)):
        top, left = (i // columns) * (height + spacing), (i % columns) * (cell_width + spacing)
        grid[top:top + height, left:left + width] = picture
        grid[top:top + height, left + width + spacing:left + cell_width] = overlay
    return Image.fromarray(np.uint8(np.round(grid * 255)))


def save_actmap_grid(
        model: nn.Module,
        paths: Sequence[PathLike],
        output: PathLike,
        img_size: Optional[Sequence[int]] = None,
        columns: int = 4,
        device: Optional[Union[str, torch.device]] = None,
) -> Path:
    """Write the activation-map grid of the images at ``paths`` to the PNG ``output`` (atomically).

    Images are preprocessed as the model's weights expect (its ``pretrained_cfg``; ``img_size`` (H, W)
    overrides the size) and shown at that size, without the normalisation.
    """
    if not paths:
        raise ValueError('no images to draw activation maps of')
    data_cfg = eval_data_config(model.pretrained_cfg, img_size)
    transform = create_transform(**data_cfg, is_training=False)
    batch = torch.stack([transform(read_image(str(p))) for p in paths])
    device = torch.device(device) if device is not None else next(model.parameters()).device
    maps = activation_maps(model, batch.to(device))
    mean, std = (torch.tensor(data_cfg[k]).view(1, -1, 1, 1) for k in ('mean', 'std'))
    grid = overlay_grid(batch * std + mean, maps, columns)
    output = Path(output)
    with atomic_path(output) as tmp:
        grid.save(tmp, format='PNG')
    return output
