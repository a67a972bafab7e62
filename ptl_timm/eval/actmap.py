"""Activation maps: where on the person a ReID model's feature map responds (torchreid's ``visualize_actmap``).

The map of an image is the channel-wise energy of its last feature map (Σ_c f_c², ``forward_features``),
upsampled bilinearly to the image and scaled to [0, 1] per image; it is drawn over the image with the
jet colour map. ``save_actmap_grid`` writes a few images and their overlays as one PNG that explains itself:
a title, the colour bar of the map's scale, and each image's file name under it.
"""
from pathlib import Path
from typing import List, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image, ImageDraw
from timm.data import create_transform

from ptl_timm.data.loader import read_image
from ptl_timm.utils import PathLike, atomic_path, resolve_device
from .extract import eval_data_config

__all__ = ['activation_maps', 'overlay_grid', 'with_header', 'save_actmap_grid']

CAPTION_HEIGHT = 14  # one line of text: a file name under each image/overlay pair
BAR_WIDTH, BAR_HEIGHT = 160, 10
MIN_WIDTH = 320  # the header's: room for the colour bar and its legend beside a grid of small images


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


def _fitted(draw: ImageDraw.ImageDraw, text: str, width: int) -> str:
    """``text`` cut at the end (marked '..') to fit ``width`` pixels."""
    if draw.textlength(text) <= width:
        return text
    while text and draw.textlength(text + '..') > width:
        text = text[:-1]
    return text + '..'


def _wrapped(draw: ImageDraw.ImageDraw, text: str, width: int) -> List[str]:
    """``text`` in lines of at most ``width`` pixels, broken at spaces, and inside a word (a long path) only
    where the word alone is too wide."""
    lines = ['']
    for word in text.split(' '):
        candidate = f'{lines[-1]} {word}'.strip()
        if draw.textlength(candidate) <= width or not lines[-1]:
            lines[-1] = candidate
        else:
            lines.append(word)
        while draw.textlength(lines[-1]) > width:
            cut = next((i for i in range(len(lines[-1]) - 1, 1, -1) if draw.textlength(lines[-1][:i]) <= width), 1)
            lines[-1:] = [lines[-1][:cut], lines[-1][cut:]]
    return lines


def overlay_grid(
        images: torch.Tensor,
        maps: torch.Tensor,
        columns: int = 4,
        alpha: float = 0.4,
        spacing: int = 8,
        captions: Optional[Sequence[str]] = None,
) -> Image.Image:
    """One RGB image: for each image [3, H, W] in [0, 1], the image and its map drawn over it side by side,
    ``columns`` pairs per row on a white background; with ``captions``, each pair's caption (cut to the
    pair's width) in a line under it."""
    from matplotlib import colormaps

    heat = colormaps['jet'](maps.numpy())[..., :3]
    pictures = images.permute(0, 2, 3, 1).clamp(0, 1).numpy()
    overlays = (1 - alpha) * pictures + alpha * heat
    num, height, width = maps.shape
    columns = min(columns, num)
    rows = -(-num // columns)
    cell_width, cell_height = 2 * width + spacing, height + (CAPTION_HEIGHT if captions else 0)
    grid = np.ones((rows * (cell_height + spacing) - spacing, columns * (cell_width + spacing) - spacing, 3))
    for i, (picture, overlay) in enumerate(zip(pictures, overlays)):
        top, left = (i // columns) * (cell_height + spacing), (i % columns) * (cell_width + spacing)
        grid[top:top + height, left:left + width] = picture
        grid[top:top + height, left + width + spacing:left + cell_width] = overlay
    image = Image.fromarray(np.uint8(np.round(grid * 255)))
    draw = ImageDraw.Draw(image)
    for i, caption in enumerate(captions or ()):
        top, left = (i // columns) * (cell_height + spacing), (i % columns) * (cell_width + spacing)
        draw.text((left, top + height + 1), _fitted(draw, caption, cell_width), fill=(0, 0, 0))
    return image


def with_header(grid: Image.Image, title: str) -> Image.Image:
    """``grid`` under a header: ``title`` (wrapped to the width), then the jet colour bar of the maps' scale
    with its meaning, so the picture explains itself away from the command that made it."""
    from matplotlib import colormaps

    width = max(grid.width, MIN_WIDTH)
    measure = ImageDraw.Draw(grid)
    scale = 'activation energy (sum of squares over channels), scaled to 0..1 per image'
    lines = _wrapped(measure, title, width - 4) + [''] + _wrapped(measure, scale, width - 4)
    bar_top = 2 + CAPTION_HEIGHT * lines.index('')
    canvas = Image.new('RGB', (width, 4 + CAPTION_HEIGHT * len(lines) + grid.height), 'white')
    draw = ImageDraw.Draw(canvas)
    for i, line in enumerate(lines):
        draw.text((2, 2 + CAPTION_HEIGHT * i), line, fill=(0, 0, 0))
    bar = colormaps['jet'](np.linspace(0, 1, BAR_WIDTH))[:, :3]
    canvas.paste(Image.fromarray(np.uint8(np.round(np.tile(bar, (BAR_HEIGHT, 1, 1)) * 255))), (2, bar_top + 2))
    draw.text((2 + BAR_WIDTH + 6, bar_top), '0 (blue) .. 1 (red)', fill=(0, 0, 0))
    canvas.paste(grid, (0, canvas.height - grid.height))
    return canvas


def save_actmap_grid(
        model: nn.Module,
        paths: Sequence[PathLike],
        output: PathLike,
        img_size: Optional[Sequence[int]] = None,
        columns: int = 4,
        device: Optional[Union[str, torch.device]] = None,
        title: str = 'activation maps',
) -> Path:
    """Write the activation-map grid of the images at ``paths`` to the PNG ``output`` (atomically), under
    ``title`` and the colour bar, each pair captioned with its file name.

    Images are preprocessed as the model's weights expect (its ``pretrained_cfg``; ``img_size`` (H, W)
    overrides the size) and shown at that size, without the normalisation.
    """
    if not paths:
        raise ValueError('no images to draw activation maps of')
    data_cfg = eval_data_config(model.pretrained_cfg, img_size)
    transform = create_transform(**data_cfg, is_training=False)
    batch = torch.stack([transform(read_image(str(p))) for p in paths])
    device = resolve_device(device) if device is not None else next(model.parameters()).device
    maps = activation_maps(model, batch.to(device))
    mean, std = (torch.tensor(data_cfg[k]).view(1, -1, 1, 1) for k in ('mean', 'std'))
    grid = overlay_grid(batch * std + mean, maps, columns, captions=[Path(p).name for p in paths])
    output = Path(output)
    with atomic_path(output) as tmp:
        with_header(grid, title).save(tmp, format='PNG')
    return output
