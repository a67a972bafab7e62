"""Activation maps: the energy map itself, the overlay grid's layout, and ``ptl-timm actmap`` end to end."""
import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

import timm
from ptl_timm.cli import main
from ptl_timm.eval.actmap import activation_maps, overlay_grid
from ptl_timm.hub import save_pretrained


class FixedMap(nn.Module):
    """forward_features: a 4×2 map whose energy is 0 everywhere but one cell per image."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def forward_features(self, x):
        features = torch.zeros(len(x), 3, 4, 2)
        features[0, :, 0, 0] = 2.0   # image 0: top left
        features[1, 0, 3, 1] = -1.0  # image 1: bottom right (energy is a square)
        return features * self.scale


def test_maps_are_per_image_energy_upsampled_to_the_image_and_scaled_to_unit_range():
    model = FixedMap().train()
    maps = activation_maps(model, torch.zeros(2, 3, 32, 16))
    assert maps.shape == (2, 32, 16) and model.training
    assert maps.amin((1, 2)).tolist() == [0.0, 0.0] and maps.amax((1, 2)).tolist() == [1.0, 1.0]
    assert maps[0, :8, :8].mean() > 0.5 > maps[0, 24:, 8:].mean()
    assert maps[1, 24:, 8:].mean() > 0.5 > maps[1, :8, :8].mean()


def test_grid_puts_each_image_beside_its_overlay():
    images = torch.rand(5, 3, 8, 4)
    maps = torch.rand(5, 8, 4)
    grid = np.asarray(overlay_grid(images, maps, columns=2, spacing=1))
    assert grid.shape == (3 * 9 - 1, 2 * (2 * 4 + 1 + 1) - 1, 3)  # 3 rows of 2 pairs
    third = grid[9:17, 0:4]  # row 1, column 0: image 2 itself
    np.testing.assert_allclose(third / 255, images[2].permute(1, 2, 0).numpy(), atol=1 / 255)
    assert (grid[18:, 10:] == 255).all()  # no sixth pair: background


def test_cli_writes_one_png_grid_of_a_folder(tmp_path, capsys):
    torch.manual_seed(0)
    model = timm.create_model('reid_net', backbone='resnet18', num_classes=0, last_stride=1,
                              pretrained_cfg_overlay=dict(input_size=(3, 64, 32)))
    save_pretrained(model, tmp_path / 'model')
    folder = tmp_path / 'images'
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (40, 20, 3), dtype=np.uint8)).save(folder / f'{i}.jpg')
    out = tmp_path / 'out' / 'actmap.png'
    out.parent.mkdir()
    assert main(['actmap', '--model', str(tmp_path / 'model'), '--folder', str(folder), '--num-images', '5',
                 '--columns', '4', '--device', 'cpu', '--output', str(out)]) == 0
    with Image.open(out) as grid:
        assert grid.size == (4 * (2 * 32 + 8 + 8) - 8, 2 * (64 + 8) - 8)
    assert [p.name for p in out.parent.iterdir()] == ['actmap.png']
    assert 'wrote' in capsys.readouterr().out


@pytest.mark.parametrize('extra, message', [
    ([], 'give either --dataset with --data-root, or --folder'),
    (['--folder', 'x', '--num-images', '0'], 'argument --num-images: must be an integer >= 1, got 0'),
])
def test_cli_refuses_a_missing_or_bad_image_source(tmp_path, capsys, extra, message):
    try:
        code = main(['actmap', '--model', 'bot_resnet50', '--output', str(tmp_path / 'a.png'), *extra])
    except SystemExit as e:  # a number out of range is refused as it is parsed
        code = e.code
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / 'a.png').exists()


def test_cli_spreads_the_images_over_a_dataset_split(tmp_path, capsys):
    from engine_support import make_domain
    domain = make_domain(tmp_path / 'synth')
    model = timm.create_model('reid_net', backbone='resnet18', num_classes=0,
                              pretrained_cfg_overlay=dict(input_size=(3, 64, 32)))
    save_pretrained(model, tmp_path / 'model')
    out = tmp_path / 'grid.png'
    assert main(['actmap', '--model', str(tmp_path / 'model'), '--dataset', 'market1501', '--data-root',
                 domain['root'], '--split', 'gallery', '--num-images', '3', '--columns', '3', '--device', 'cpu',
                 '--output', str(out)]) == 0
    with Image.open(out) as grid:
        assert grid.size == (3 * (2 * 32 + 8 + 8) - 8, 64)
    assert '(3 images)' in capsys.readouterr().out
