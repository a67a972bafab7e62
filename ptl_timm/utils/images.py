"""The one list of image file types every reader accepts (datasets, image folders, search)."""
import warnings
from pathlib import Path
from typing import List

from .io import PathLike

__all__ = ['IMAGE_EXTENSIONS', 'list_images']

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
