"""Synthetic generator: byte-identical per seed, caching, query/gallery structure, domains, CLI."""
import hashlib
from pathlib import Path
from typing import Dict

import numpy as np
import pytest
from PIL import Image

from ptl_timm.cli import main
from ptl_timm.data.datasets import build_dataset
from ptl_timm.data.synth import LAYOUTS, SYNTH_DOMAINS, generate_synthetic

SMALL = dict(num_ids=6, images_per_id=4, num_cams=3, img_size=(32, 16))


def _digests(folder: Path) -> Dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob('*')) if p.is_file()}


@pytest.mark.parametrize('layout', LAYOUTS)
def test_same_seed_gives_byte_identical_files(tmp_path, layout):
    first = generate_synthetic(tmp_path / 'a', 'mall', layout=layout, seed=5, **SMALL)
    second = generate_synthetic(tmp_path / 'b', 'mall', layout=layout, seed=5, **SMALL)
    assert _digests(first) == _digests(second) != {}


def test_other_seed_gives_other_images(tmp_path):
    first = _digests(generate_synthetic(tmp_path / 'a', 'mall', seed=0, **SMALL))
    second = _digests(generate_synthetic(tmp_path / 'b', 'mall', seed=1, **SMALL))
    assert not set(first.values()) & set(second.values())


def test_same_arguments_reuse_the_folder_and_new_ones_replace_it(tmp_path):
    path = generate_synthetic(tmp_path, 'street', **SMALL)
    marker = path / 'marker.txt'
    marker.write_text('kept while the arguments are unchanged')
    assert generate_synthetic(tmp_path, 'street', **SMALL) == path and marker.exists()
    generate_synthetic(tmp_path, 'street', **dict(SMALL, num_ids=8))
    assert not marker.exists()
    assert build_dataset('market1501', path).num_train_pids == 4


def test_foreign_folder_is_not_overwritten(tmp_path):
    (tmp_path / 'street').mkdir()
    (tmp_path / 'street' / 'mine.txt').write_text('user data')
    with pytest.raises(ValueError, match='not written by the synthetic generator'):
        generate_synthetic(tmp_path, 'street', **SMALL)
    assert (tmp_path / 'street' / 'mine.txt').exists()


def test_every_query_has_a_cross_camera_match(tmp_path):
    dataset = build_dataset('market1501', generate_synthetic(tmp_path, 'station', num_ids=20, images_per_id=5,
                                                             num_cams=4, img_size=(32, 16)))
    gallery = {(r.pid, r.camid) for r in dataset.gallery}
    assert all(any(pid == q.pid and cam != q.camid for pid, cam in gallery) for q in dataset.query)


def test_images_have_the_requested_size(tmp_path):
    dataset = build_dataset('dukemtmc', generate_synthetic(tmp_path, 'campus', layout='dukemtmc', **SMALL))
    assert {Image.open(r.path).size for r in dataset.train + dataset.gallery} == {(16, 32)}


def test_domains_differ_in_image_statistics(tmp_path):
    means = []
    for domain in SYNTH_DOMAINS:
        dataset = build_dataset('market1501', generate_synthetic(tmp_path, domain, **SMALL))
        pixels = np.stack([np.asarray(Image.open(r.path), np.float32) for r in dataset.train])
        means.append(pixels.reshape(-1, 3).mean(0))
    gaps = [np.abs(a - b).max() for i, a in enumerate(means) for b in means[i + 1:]]
    assert min(gaps) > 5  # every pair of domains differs by > 5/255 in some mean channel


def test_bad_arguments_are_rejected(tmp_path):
    with pytest.raises(ValueError, match='unknown synthetic domain'):
        generate_synthetic(tmp_path, 'mars', **SMALL)
    with pytest.raises(ValueError, match='unknown layout'):
        generate_synthetic(tmp_path, 'street', layout='viper', **SMALL)
    with pytest.raises(ValueError, match='num_cams >= 2'):
        generate_synthetic(tmp_path, 'street', **dict(SMALL, num_cams=1))


def test_cli_writes_a_readable_dataset_at_its_data_root(tmp_path, capsys):
    """``synth --data-root X`` writes the dataset at X, so ``--data-root X`` reads it everywhere."""
    status = main(['synth', '--data-root', str(tmp_path / 'market1501'), '--domain', 'night', '--layout', 'msmt17',
                   '--num-ids', '4', '--images-per-id', '3', '--num-cams', '2', '--img-size', '32', '16', '--quiet'])
    assert status == 0 and capsys.readouterr().out == ''
    assert build_dataset('msmt17', tmp_path / 'market1501').num_train_pids == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ['market1501']




def test_cli_needs_the_folder(capsys):
    assert main(['synth', '--quiet']) == 2
    assert 'error: give the dataset folder to write with --data-root FOLDER' in capsys.readouterr().err
