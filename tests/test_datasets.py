"""Dataset parsers on synthetic data written in each real layout: counts, relabelling, cameras, junk, errors."""
import re
import shutil
from pathlib import Path

import pytest
import torch

from ptl_timm.data.datasets import (
    DatasetFormatError, DatasetNotFoundError, ReIDRecord, build_dataset, build_union, labels_from_names,
)
from ptl_timm.data.loader import CorruptImageError, ImageDataset, build_transforms
from ptl_timm.data.synth import LAYOUTS, generate_synthetic

NUM_IDS, IMAGES_PER_ID, NUM_CAMS = 6, 4, 3
IMG_SIZE = (32, 16)
NUM_TRAIN_IDS = NUM_IDS - NUM_IDS // 2


@pytest.fixture(scope='module')
def layouts(tmp_path_factory):
    """One small synthetic dataset per layout, made on first use (read-only: copy before changing)."""
    root, made = tmp_path_factory.mktemp('layouts'), {}

    def get(layout: str) -> Path:
        if layout not in made:
            made[layout] = generate_synthetic(root / layout, 'street', layout=layout, num_ids=NUM_IDS,
                                              images_per_id=IMAGES_PER_ID, num_cams=NUM_CAMS, img_size=IMG_SIZE)
        return made[layout]
    return get


def _copy(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def _raw_pid(record: ReIDRecord) -> int:
    return int(re.match(r'(?:person)?(-?\d+)', Path(record.path).name).group(1))


@pytest.mark.parametrize('layout', LAYOUTS)
def test_counts_follow_the_generated_split(layouts, layout):
    dataset = build_dataset(layout, layouts(layout))
    assert dataset.num_train_pids == NUM_TRAIN_IDS
    assert len(dataset.train) == NUM_TRAIN_IDS * IMAGES_PER_ID
    assert len(dataset.query) + len(dataset.gallery) == (NUM_IDS - NUM_TRAIN_IDS) * IMAGES_PER_ID
    assert {r.pid for r in dataset.query} <= {r.pid for r in dataset.gallery}


@pytest.mark.parametrize('layout', ['market1501', 'dukemtmc', 'cuhk03_np'])
def test_train_pids_relabelled_in_sorted_order_of_original_ids(layouts, layout):
    dataset = build_dataset(layout, layouts(layout))
    mapping = {_raw_pid(r): r.pid for r in dataset.train}
    assert sorted(mapping.values()) == list(range(NUM_TRAIN_IDS))
    assert [mapping[raw] for raw in sorted(mapping)] == list(range(NUM_TRAIN_IDS))


def test_query_and_gallery_keep_original_pids(layouts):
    dataset = build_dataset('market1501', layouts('market1501'))
    assert all(r.pid == _raw_pid(r) for r in dataset.query + dataset.gallery)


@pytest.mark.parametrize('layout', ['market1501', 'dukemtmc', 'cuhk03_np'])
def test_camids_are_file_camera_minus_one(layouts, layout):
    dataset = build_dataset(layout, layouts(layout))
    for record in dataset.train + dataset.query + dataset.gallery:
        assert record.camid == int(re.search(r'_c(\d+)', Path(record.path).name).group(1)) - 1
    assert dataset.num_train_cams <= NUM_CAMS


def test_msmt17_camids_come_from_third_name_field(layouts):
    dataset = build_dataset('msmt17', layouts('msmt17'))
    assert all(r.camid == int(Path(r.path).name.split('_')[2]) - 1 for r in dataset.train + dataset.query)


def test_market_junk_dropped_and_distractors_kept_in_gallery(layouts, tmp_path):
    root = _copy(layouts('market1501'), tmp_path / 'market')
    gallery = root / 'bounding_box_test'
    sample = sorted(gallery.iterdir())[0]
    shutil.copy(sample, gallery / '-1_c1s1_000001_01.jpg')
    shutil.copy(sample, gallery / '0000_c2s1_000002_01.jpg')
    dataset = build_dataset('market1501', root)
    assert -1 not in {r.pid for r in dataset.gallery}
    assert [r.camid for r in dataset.gallery if r.pid == 0] == [1]


def test_release_subfolder_is_found_from_its_parent(layouts, tmp_path):
    _copy(layouts('market1501'), tmp_path / 'Market-1501-v15.09.15')
    dataset = build_dataset('market1501', tmp_path)
    assert dataset.root == str(tmp_path / 'Market-1501-v15.09.15') and dataset.num_train_pids == NUM_TRAIN_IDS


def test_msmt17_trains_on_train_and_val_lists_by_default(layouts):
    root = layouts('msmt17')
    with_val, without_val = build_dataset('msmt17', root), build_dataset('msmt17', root, include_val=False)
    val_lines = (root / 'list_val.txt').read_text().splitlines()
    assert len(with_val.train) == len(without_val.train) + len(val_lines) == NUM_TRAIN_IDS * IMAGES_PER_ID
    assert val_lines


def test_msmt17_v2_folder_names_are_read(layouts, tmp_path):
    root = _copy(layouts('msmt17'), tmp_path / 'MSMT17_V2')
    (root / 'train').rename(root / 'mask_train_v2')
    (root / 'test').rename(root / 'mask_test_v2')
    dataset = build_dataset('msmt17', tmp_path)
    assert all(Path(r.path).is_file() for r in dataset.train + dataset.gallery)


@pytest.mark.parametrize('variant', ['detected', 'labeled'])
def test_cuhk03_variants_read_their_own_folder(layouts, variant):
    dataset = build_dataset('cuhk03_np', layouts('cuhk03_np'), variant=variant)
    assert all(f'/{variant}/' in Path(r.path).as_posix() for r in dataset.train + dataset.query)
    assert dataset.name == f'cuhk03_np_{variant}'


def test_folder_query_and_gallery_share_identity_numbers(layouts):
    dataset = build_dataset('folder', layouts('folder'))
    names = {Path(r.path).parent.parent.name: r.pid for r in dataset.query + dataset.gallery}
    assert len(names) == len(set(names.values())) == NUM_IDS - NUM_TRAIN_IDS


def test_union_offsets_pids_and_cameras_and_tests_on_the_first(layouts):
    market, duke = build_dataset('market1501', layouts('market1501')), build_dataset('dukemtmc', layouts('dukemtmc'))
    union = build_union([market, duke])
    assert union.num_train_pids == market.num_train_pids + duke.num_train_pids
    assert union.train[len(market.train):] == [
        ReIDRecord(r.path, r.pid + market.num_train_pids, r.camid + market.num_train_cams) for r in duke.train]
    assert union.query == market.query and union.gallery == market.gallery


def test_missing_root_names_the_folder(tmp_path):
    with pytest.raises(DatasetNotFoundError, match='does-not-exist'):
        build_dataset('market1501', tmp_path / 'does-not-exist')


def test_missing_split_folder_is_named(layouts, tmp_path):
    root = _copy(layouts('market1501'), tmp_path / 'market')
    shutil.rmtree(root / 'query')
    with pytest.raises(DatasetNotFoundError, match='missing query'):
        build_dataset('market1501', root)


def test_unparsable_file_name_is_named(layouts, tmp_path):
    root = _copy(layouts('dukemtmc'), tmp_path / 'duke')
    shutil.copy(sorted((root / 'query').iterdir())[0], root / 'query' / 'IMG_1234.jpg')
    with pytest.raises(DatasetFormatError, match='IMG_1234.jpg'):
        build_dataset('dukemtmc', root)


def test_empty_split_is_an_error(layouts, tmp_path):
    root = _copy(layouts('market1501'), tmp_path / 'market')
    for image in (root / 'bounding_box_train').iterdir():
        image.unlink()
    with pytest.raises(DatasetFormatError, match='bounding_box_train'):
        build_dataset('market1501', root)


def test_bad_msmt17_list_line_names_file_and_line(layouts, tmp_path):
    root = _copy(layouts('msmt17'), tmp_path / 'msmt')
    with open(root / 'list_query.txt', 'a') as f:
        f.write('broken-line\n')
    with pytest.raises(DatasetFormatError, match=r'line \d+ of .*list_query.txt'):
        build_dataset('msmt17', root)


def test_folder_identity_with_images_both_in_and_outside_camera_folders_is_an_error(layouts, tmp_path):
    root = _copy(layouts('folder'), tmp_path / 'own')
    identity = sorted((root / 'gallery').iterdir())[0]
    shutil.copy(next(identity.rglob('*.jpg')), identity / 'stray.jpg')
    with pytest.raises(DatasetFormatError, match='stray.jpg'):
        build_dataset('folder', root)


def test_unknown_dataset_and_option_are_errors(layouts):
    with pytest.raises(DatasetFormatError, match='unknown dataset'):
        build_dataset('imagenet', layouts('market1501'))
    with pytest.raises(DatasetFormatError, match='variant'):
        build_dataset('market1501', layouts('market1501'), variant='labeled')


def test_corrupt_image_names_the_file_when_loaded(tmp_path):
    broken = tmp_path / '0001_c1s1_000001_01.jpg'
    broken.write_bytes(b'\xff\xd8 not a jpeg')
    with pytest.raises(CorruptImageError, match='0001_c1s1_000001_01.jpg.*re-extract'):
        ImageDataset([ReIDRecord(str(broken), 0, 0)])[0]


def test_image_dataset_returns_tensor_pid_camid_index(layouts):
    dataset = build_dataset('market1501', layouts('market1501'))
    image, pid, camid, index = ImageDataset(dataset.query, build_transforms(IMG_SIZE, is_training=False))[1]
    assert image.shape == (3, *IMG_SIZE) and image.dtype == torch.float32
    assert (pid, camid, index) == (dataset.query[1].pid, dataset.query[1].camid, 1)


def test_training_transforms_keep_size_and_vary_images(layouts):
    record = build_dataset('market1501', layouts('market1501')).train[0]
    transform = build_transforms((48, 24), is_training=True, random_erasing=1.0)
    images = ImageDataset([record] * 4, transform)
    torch.manual_seed(0)
    batch = torch.stack([images[i][0] for i in range(4)])
    assert batch.shape == (4, 3, 48, 24)
    assert not any(torch.equal(batch[0], other) for other in batch[1:])


def test_msmt17_camera_0_is_a_format_error_not_the_unknown_camera(layouts, tmp_path):
    root = _copy(layouts('msmt17'), tmp_path / 'msmt')
    lines = (root / 'list_query.txt').read_text().splitlines()
    path, pid = lines[0].split()
    fields = path.split('_')
    fields[2] = '00'
    lines[0] = f'{"_".join(fields)} {pid}'
    (root / 'list_query.txt').write_text('\n'.join(lines) + '\n')
    with pytest.raises(DatasetFormatError, match=r'line 1 of .*list_query.txt.*camera from 1'):
        build_dataset('msmt17', root)


@pytest.mark.parametrize('layout', LAYOUTS)
def test_no_parser_gives_a_query_or_gallery_image_the_unknown_camera(layouts, layout):
    dataset = build_dataset(layout, layouts(layout))
    assert min(r.camid for r in dataset.query + dataset.gallery) >= 0


@pytest.mark.parametrize('layout', ['market1501', 'msmt17'])
def test_labels_from_names_read_a_dataset_naming(layouts, layout):
    dataset = build_dataset(layout, layouts(layout))
    pids, camids = labels_from_names([r.path for r in dataset.gallery])
    assert pids == [r.pid for r in dataset.gallery] and camids == [r.camid for r in dataset.gallery]


def test_labels_from_names_need_every_name_to_follow_one_naming():
    assert labels_from_names(['0002_c1s1_000451_01.jpg', '0007_c2s3_000101_02.jpg']) == ([2, 7], [0, 1])
    assert labels_from_names(['0002_c1s1_000451_01.jpg', 'holiday.jpg']) is None
    assert labels_from_names(['0002_c0s1_000451_01.jpg']) is None  # cameras count from 1
    assert labels_from_names([]) is None


def test_folder_identities_without_camera_folders_have_unknown_cameras(layouts, tmp_path):
    root = _copy(layouts('folder'), tmp_path / 'own')
    for split in ('train', 'query', 'gallery'):
        for image in list((root / split).rglob('*.jpg')):
            image.rename(image.parent.parent / f'{image.parent.name}_{image.name}')
        for camera in [p for p in (root / split).glob('*/*') if p.is_dir()]:
            camera.rmdir()
    dataset = build_dataset('folder', root)
    assert {r.camid for r in dataset.train + dataset.query + dataset.gallery} == {-1}
    assert len(dataset.query) + len(dataset.gallery) == (NUM_IDS - NUM_TRAIN_IDS) * IMAGES_PER_ID
