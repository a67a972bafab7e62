"""Images as every reader sees them: the one list of file types accepted (datasets, image folders,
search) and the one conversion of a decoded image, of any mode Pillow opens, to 8-bit RGB.

Pillow's own ``convert('RGB')`` clips wider pixels at 255, so a 16-bit PNG reads as a flat white image.
:func:`to_rgb` scales them instead. The rules, by mode:

* 8-bit modes (``1``, ``L``, ``P``, ``RGB``, ``CMYK``, ``YCbCr``, ``LAB``, ``HSV``, ``RGBX``): Pillow's
  conversion. Modes with alpha (``RGBA``, ``RGBa``, ``LA``, ``La``, ``PA``): the colour as stored, alpha
  dropped (what Pillow does; a person crop is not composited on a background).
* ``I;16``, ``I;16B``, ``I;16L``, ``I;16N`` (16-bit grey, e.g. a 16-bit PNG): the 0..65535 range scaled to
  0..255 (÷257).
* ``I`` (32-bit integers) holds 8-bit values (Pillow's own conversions) or 16-bit ones (16-bit files in
  older Pillow versions): values up to 255 are read as 8-bit, up to 65535 as 16-bit.
* ``F`` (32-bit float): values up to 1 are read as the 0..1 range (the float convention of image
  libraries), up to 255 as Pillow's 0..255.

Anything else (negative, NaN or larger values, a mode Pillow cannot convert) is refused with the image
named, never guessed: a wrong guess would be a silently wrong embedding.
"""
import warnings
from pathlib import Path
from typing import List, Tuple

import numpy as np
from PIL import Image

from ptl_timm.errors import CorruptFileError
from .io import PathLike

__all__ = ['IMAGE_EXTENSIONS', 'list_images', 'to_rgb']

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.webp', '.tif', '.tiff')


def list_images(folder: PathLike, recursive: bool = False) -> List[Path]:
    """The image files in ``folder`` (and its sub-folders if ``recursive``), sorted.

    Entries named like images that are not readable files (a folder called ``x.jpg``, a broken
    link) are skipped, counted and reported in one warning naming an example, never dropped silently.
    """
    folder = Path(folder)
    entries = folder.rglob('*') if recursive else folder.iterdir()
    images, skipped = [], []
    for entry in entries:
        if entry.suffix.lower() in IMAGE_EXTENSIONS:
            (images if entry.is_file() else skipped).append(entry)
    if skipped:
        skipped.sort()
        warnings.warn(f'{folder}: skipped {len(skipped)} entr{"y" if len(skipped) == 1 else "ies"} named like an image '
                      f'that {"is" if len(skipped) == 1 else "are"} not a readable file (a folder or a broken link), '
                      f'e.g. {skipped[0]}', stacklevel=2)
    return sorted(images)


# the value ranges each wide mode may hold, smallest first (see the module notes)
_RANGES: Tuple[Tuple[str, Tuple[int, ...]], ...] = (('I;16', (65535,)), ('I', (255, 65535)), ('F', (1, 255)))


def _range(values: np.ndarray, mode: str, source: str) -> int:
    """The full-scale value of a wide-mode image's pixels (255, 65535 or 1), by its mode and values."""
    limits = next(limits for prefix, limits in _RANGES if mode.startswith(prefix))
    if values.size == 0:
        return limits[0]
    if not np.isfinite(values).all():
        raise CorruptFileError(f'cannot read image {source}: its {mode} pixels include NaN or Inf; save it as 8-bit RGB')
    low, high = float(values.min()), float(values.max())
    for limit in limits:
        if low >= 0 and high <= limit:
            return limit
    raise CorruptFileError(
        f'cannot read image {source}: its {mode} pixels range from {low:g} to {high:g}, outside the 0..{limits[-1]} '
        f'this mode is read as; save it as 8-bit RGB')


def to_rgb(image: Image.Image, source: str = 'image') -> Image.Image:
    """``image`` (any mode Pillow opens) as 8-bit RGB by the rules of the module notes; an image they do
    not cover raises ``CorruptFileError`` naming ``source`` (its file)."""
    mode = image.mode
    if mode in ('I', 'F') or mode.startswith('I;16'):
        values = np.asarray(image, dtype=np.float64)
        grey = np.rint(values * (255 / _range(values, mode, source))).astype(np.uint8)
        return Image.fromarray(grey, 'L').convert('RGB')
    if mode in ('La', 'RGBa'):  # premultiplied alpha: Pillow converts these only to their plain form
        image = image.convert(mode.upper())
    try:
        return image.convert('RGB')
    except ValueError as e:
        raise CorruptFileError(f'cannot read image {source}: Pillow cannot convert its mode {mode} to RGB ({e}); '
                               f'save it as 8-bit RGB') from None
