"""One list of image types for every reader; entries named like images that are not files are
counted and reported, never dropped silently."""
import os

import pytest
from PIL import Image

from ptl_timm.data.datasets import IMAGE_EXTENSIONS as DATASET_EXTENSIONS
from ptl_timm.eval.extract import IMAGE_EXTENSIONS as EXTRACT_EXTENSIONS, image_files
from ptl_timm.utils import IMAGE_EXTENSIONS, list_images


def test_every_reader_uses_the_one_list():
    assert DATASET_EXTENSIONS is IMAGE_EXTENSIONS and EXTRACT_EXTENSIONS is IMAGE_EXTENSIONS
    assert '.webp' in IMAGE_EXTENSIONS


def test_folder_dataset_and_image_folders_read_the_same_files(tmp_path):
    """``extract --folder`` used to read .webp images that the ``folder`` dataset skipped."""
    from ptl_timm.data import build_dataset
    for split in ('query', 'gallery'):
        for person, camera in (('alice', 'door'), ('alice', 'hall'), ('bob', 'door'), ('bob', 'hall')):
            folder = tmp_path / split / person / camera
            folder.mkdir(parents=True)
            Image.new('RGB', (8, 16)).save(folder / 'a.webp')
    dataset = build_dataset('folder', tmp_path)
    assert sorted(r.path for r in dataset.query + dataset.gallery) == image_files(tmp_path)


def test_entries_named_like_images_that_are_not_files_are_counted(tmp_path):
    Image.new('RGB', (8, 8)).save(tmp_path / 'ok.png')
    (tmp_path / 'folder.jpg').mkdir()
    os.symlink(tmp_path / 'missing.jpg', tmp_path / 'broken.jpg')
    (tmp_path / 'notes.txt').write_text('not an image name: not counted')
    with pytest.warns(UserWarning, match=r'skipped 2 entries named like an image .* e\.g\. .*broken\.jpg'):
        assert list_images(tmp_path) == [tmp_path / 'ok.png']
