"""Activation maps: the energy map itself, the overlay grid's layout, and ``ptl-timm actmap`` end to end."""
import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

import timm
from ptl_timm.cli import main
from ptl_timm.eval.actmap import (
    BAR_HEIGHT, BAR_WIDTH, CAPTION_HEIGHT, MIN_WIDTH, activation_maps, overlay_grid, with_header,
)
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
    with Image.open(out) as picture:
        grid_height = 2 * (64 + CAPTION_HEIGHT + 8) - 8  # two rows of four pairs, a file name under each
        assert picture.size[0] == max(4 * (2 * 32 + 8 + 8) - 8, MIN_WIDTH) and picture.size[1] > grid_height
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
    with Image.open(out) as picture:
        assert picture.size[0] == max(3 * (2 * 32 + 8 + 8) - 8, MIN_WIDTH) and picture.size[1] > 64 + CAPTION_HEIGHT
    assert '(3 images)' in capsys.readouterr().out


def test_picture_has_a_title_a_colour_bar_and_each_file_name():
    from matplotlib import colormaps
    images, maps = torch.rand(2, 3, 16, 8), torch.rand(2, 16, 8)
    plain = np.asarray(overlay_grid(images, maps, columns=2, spacing=1))
    captioned = np.asarray(overlay_grid(images, maps, columns=2, spacing=1, captions=['0001_c1s1_01.jpg', 'b.jpg']))
    assert captioned.shape[0] == plain.shape[0] + CAPTION_HEIGHT
    np.testing.assert_array_equal(captioned[:16], plain[:16])
    under = captioned[16:16 + CAPTION_HEIGHT]
    assert (under[:, :17] < 128).any() and (under[:, 18:] < 128).any(), 'a file name under each pair'
    picture = np.asarray(with_header(Image.fromarray(captioned), 'my title'))
    assert picture.shape[1] == MIN_WIDTH and (picture[2:14] < 128).any(), 'the title'
    bar = picture[2 + CAPTION_HEIGHT + 2 + BAR_HEIGHT // 2, 2:2 + BAR_WIDTH].astype(int)  # under the title's line
    expected = np.round(colormaps['jet'](np.linspace(0, 1, BAR_WIDTH))[:, :3] * 255)
    np.testing.assert_allclose(bar, expected, atol=1)
    np.testing.assert_array_equal(picture[-captioned.shape[0]:, :captioned.shape[1]], captioned)
    long_title = np.asarray(with_header(Image.fromarray(captioned), 'x' * 200 + ' a/very/long/path/' * 10))
    assert long_title.shape[1] == MIN_WIDTH and long_title.shape[0] > picture.shape[0], 'wrapped, not widened'
