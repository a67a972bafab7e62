"""``count_macs`` on hand-counted layers, and ``ptl-timm info``'s GMACs column."""
import json

import torch.nn as nn

import timm
from ptl_timm.cli import main
from ptl_timm.cli.info import model_summary
from ptl_timm.models.complexity import count_macs


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 5)

    def forward(self, x):
        return self.fc(self.conv(x).relu().mean((2, 3)))


def test_count_macs_counts_convolutions_and_linear_layers():
    model = Tiny().train()
    assert count_macs(model, (3, 8, 6)) == 4 * 3 * 9 * 8 * 6 + 4 * 5
    assert model.training  # the caller's mode is restored


def test_last_stride_one_quadruples_the_last_stage_cost():
    """Every output of ResNet-18's layer4 is 4× larger at stride 16, and nothing else changes."""
    kwargs = dict(backbone='resnet18', embed_dim=0, num_classes=0, device='meta')
    plain = timm.create_model('reid_net', **kwargs)
    bot = timm.create_model('reid_net', last_stride=1, **kwargs)
    layer4 = count_macs(plain.backbone.layer4, (256, 16, 8))  # layer3's output at 256×128
    assert count_macs(bot) - count_macs(plain) == 3 * layer4


def test_info_reports_gmacs_at_the_default_input_size(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr('ptl_timm.cli.info.list_models', lambda: ['bot_resnet50'])
    assert main(['info', '--json', str(tmp_path / 'models.json')]) == 0
    row, = json.loads((tmp_path / 'models.json').read_text())
    assert row['gmacs'] == model_summary('bot_resnet50', 751)['gmacs'] == round(count_macs(
        timm.create_model('bot_resnet50', device='meta')) / 1e9, 3)
    assert 3.5 < row['gmacs'] < 4.5  # ResNet-50 at 256×128 with its last stage at stride 16
    assert 'GMACs' in capsys.readouterr().out
