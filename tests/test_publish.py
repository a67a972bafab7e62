"""``ptl-timm publish``: the Hub folder it writes, what it refuses, the card, the upload switch."""
import json
from pathlib import Path

import pytest
import safetensors.torch
import torch

import timm

from ptl_timm.cli import main
from ptl_timm.hub import CONFIG_NAME, WEIGHTS_NAME, save_pretrained
from ptl_timm.errors import CheckpointError
from ptl_timm.hub.publish import (
    INSTALL_LINE, PublishError, TRAIN_STATE_NAME, default_model_card, find_run_metrics, publish)

BACKBONE = 'test_resnet'  # timm's smallest ResNet: seconds per publish
DATASET = {'ptl_timm_dataset': 'market1501'}
RUN_METRICS = {'mAP': 81.25, 'rank1': 92.5, 'rank5': 97.0, 'mINP': 50.0}


def tiny_checkpoint(folder: Path, name: str = 'ptl_net', num_classes: int = 7) -> Path:
    torch.manual_seed(0)
    save_pretrained(timm.create_model(name, backbone=BACKBONE, num_classes=num_classes), folder, metadata=DATASET)
    return folder


def add_train_state(folder: Path, evaluated: bool = True) -> None:
    record = {'epoch': 3, 'loss': 1.0}
    if evaluated:
        record['eval'] = {'market1501': RUN_METRICS}
    torch.save(dict(epoch=3, history=[record], best=record, config={'model': 'ptl_net', 'lr': 0.01}),
               folder / TRAIN_STATE_NAME)


@pytest.fixture(scope='module')
def published(tmp_path_factory):
    root = tmp_path_factory.mktemp('publish')
    checkpoint = tiny_checkpoint(root / 'run' / 'last')
    add_train_state(checkpoint)
    return publish(checkpoint, root / 'hub', progress=False)


def test_hub_folder_holds_only_config_safetensors_and_readme(published):
    assert sorted(p.name for p in published.folder.iterdir()) == ['README.md', CONFIG_NAME, WEIGHTS_NAME]


def test_config_parses_with_timm_and_model_args_are_json(published):
    config = json.loads((published.folder / CONFIG_NAME).read_text())
    pretrained_cfg, architecture, model_args = config['pretrained_cfg'], config['architecture'], config['model_args']
    assert architecture == 'ptl_net'
    assert model_args['backbone'] == BACKBONE
    assert json.loads(json.dumps(model_args)) == model_args
    assert config['num_classes'] == 7 and pretrained_cfg['classifier'] == 'head.fc'


def test_published_folder_reloads_with_identical_features(published):
    assert published.max_embedding_diff == 0.0


def test_readme_has_the_run_metrics_and_the_usage(published):
    readme = (published.folder / 'README.md').read_text()
    assert '| market1501 | 81.25 | 92.50 | 97.00 | 50.00 |' in readme
    assert INSTALL_LINE in readme and 'pip install ptl_timm\n' not in readme and 'import ptl_timm' in readme
    assert f"timm.create_model('hf-hub:{published.repo_id}', pretrained=True" in readme


def test_readme_carries_the_model_card_without_its_repository_only_section(published):
    readme = (published.folder / 'README.md').read_text()
    card = (Path(__file__).parent.parent / 'MODEL_CARD.md').read_text()
    assert '## Out-of-scope use' in card and '## Out-of-scope use' in readme
    assert '## Status of trained weights' in card and '## Status of trained weights' not in readme


def test_the_packaged_card_template_is_the_repositorys_model_card():
    """A wheel carries no MODEL_CARD.md: publish reads the package's copy, which must not drift from it
    (after editing MODEL_CARD.md: cp MODEL_CARD.md ptl_timm/hub/model_card_template.md)."""
    assert default_model_card().read_text() == (Path(__file__).parent.parent / 'MODEL_CARD.md').read_text()


def test_repo_id_and_tag_default_to_the_recorded_dataset(published):
    assert published.repo_id == 'ptl-timm/ptl_net.market1501'


def test_generic_architecture_gets_no_manifest_entry(published):
    assert published.manifest_entry is None and 'backbone' in published.no_entry_reason


@pytest.mark.slow  # builds a ResNet-50
def test_non_default_model_args_get_no_manifest_entry(tmp_path):
    torch.manual_seed(0)
    model = timm.create_model('reid_resnet50', num_classes=5, global_pool='max')
    save_pretrained(model, tmp_path / 'ckpt', metadata=DATASET)
    result = publish(tmp_path / 'ckpt', tmp_path / 'hub', progress=False)
    assert result.manifest_entry is None and "'global_pool': 'max'" in result.no_entry_reason


@pytest.mark.slow  # builds a ResNet-50
def test_named_architecture_gets_a_manifest_entry_with_hash_and_metrics(tmp_path):
    checkpoint = tmp_path / 'run' / 'last'
    torch.manual_seed(0)
    save_pretrained(timm.create_model('reid_resnet50', num_classes=5), checkpoint, metadata=DATASET)
    add_train_state(checkpoint)
    entry = publish(checkpoint, tmp_path / 'hub', tag='mkt', progress=False).manifest_entry
    assert entry['hf_hub_id'] == 'ptl-timm/reid_resnet50.mkt' and entry['num_classes'] == 5
    assert entry['metrics'] == {'mAP': 81.25, 'rank1': 92.5}
    assert entry['training_config'] == {'model': 'ptl_net', 'lr': 0.01}
    assert len(entry['sha256']) == 64


def test_wrong_architecture_is_refused(tmp_path):
    checkpoint = tiny_checkpoint(tmp_path / 'ckpt')
    other = timm.create_model('reid_net', backbone=BACKBONE, num_classes=7).state_dict()
    safetensors.torch.save_file(other, str(checkpoint / WEIGHTS_NAME))
    with pytest.raises(CheckpointError, match='do not fit the ptl_net model'):
        publish(checkpoint, tmp_path / 'hub', progress=False)
    assert not (tmp_path / 'hub').exists()


def test_nan_weights_are_refused(tmp_path):
    checkpoint = tiny_checkpoint(tmp_path / 'ckpt')
    state = safetensors.torch.load_file(str(checkpoint / WEIGHTS_NAME))
    state['neck.conv.weight'][0, 0] = float('nan')
    safetensors.torch.save_file(state, str(checkpoint / WEIGHTS_NAME))
    with pytest.raises(PublishError, match='NaN/Inf'):
        publish(checkpoint, tmp_path / 'hub', progress=False)


def test_non_empty_out_is_refused_without_overwrite(tmp_path):
    checkpoint = tiny_checkpoint(tmp_path / 'ckpt')
    (tmp_path / 'hub').mkdir()
    (tmp_path / 'hub' / 'pytorch_model.bin').write_bytes(b'pickle')
    with pytest.raises(PublishError, match='--overwrite'):
        publish(checkpoint, tmp_path / 'hub', progress=False)
    publish(checkpoint, tmp_path / 'hub', overwrite=True, progress=False)
    assert not (tmp_path / 'hub' / 'pytorch_model.bin').exists()


def test_missing_tag_is_an_error_when_no_dataset_is_recorded(tmp_path):
    torch.manual_seed(0)
    save_pretrained(timm.create_model('ptl_net', backbone=BACKBONE, num_classes=7), tmp_path / 'ckpt')
    with pytest.raises(ValueError, match='--tag'):
        publish(tmp_path / 'ckpt', tmp_path / 'hub', progress=False)


def test_best_folder_takes_the_best_record_of_the_sibling_last(tmp_path):
    add_train_state(tiny_checkpoint(tmp_path / 'last'))
    tiny_checkpoint(tmp_path / 'best')
    assert find_run_metrics(tmp_path / 'best')['eval'] == {'market1501': RUN_METRICS}


def test_unevaluated_final_epoch_claims_no_metrics(tmp_path):
    checkpoint = tiny_checkpoint(tmp_path / 'last')
    add_train_state(checkpoint, evaluated=False)
    assert 'eval' not in find_run_metrics(checkpoint)


class FakeHfApi:
    calls = []

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(('create_repo', repo_id))

    def upload_folder(self, folder_path, repo_id, **kwargs):
        self.calls.append(('upload_folder', repo_id, sorted(p.name for p in Path(folder_path).iterdir())))


def test_dry_run_uploads_nothing_and_push_uploads_the_verified_folder(tmp_path, monkeypatch):
    monkeypatch.setattr('huggingface_hub.HfApi', FakeHfApi)
    FakeHfApi.calls = []
    checkpoint = tiny_checkpoint(tmp_path / 'ckpt')
    publish(checkpoint, tmp_path / 'dry', progress=False)
    assert FakeHfApi.calls == []
    publish(checkpoint, tmp_path / 'hub', repo_id='me/x', push=True, progress=False)
    assert FakeHfApi.calls == [('create_repo', 'me/x'), ('upload_folder', 'me/x', ['README.md', CONFIG_NAME,
                                                                                 WEIGHTS_NAME])]


def test_cli_turns_a_refusal_into_one_error_line_and_status_2(tmp_path, capsys):
    checkpoint = tiny_checkpoint(tmp_path / 'ckpt')
    config = json.loads((checkpoint / CONFIG_NAME).read_text())
    (checkpoint / CONFIG_NAME).write_text(json.dumps(dict(config, architecture='no_such_model')))
    assert main(['publish', '--model', str(checkpoint), '--output', str(tmp_path / 'hub'), '--quiet']) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith('ptl-timm publish: error:') and 'no_such_model' in err[0]


def test_cli_dry_run_writes_the_folder_and_the_manifest_entry(tmp_path, capsys):
    checkpoint = tiny_checkpoint(tmp_path / 'ckpt')
    assert main(['publish', '--model', str(checkpoint), '--output', str(tmp_path / 'hub'), '--quiet', '--dry-run']) == 0
    assert (tmp_path / 'hub' / WEIGHTS_NAME).is_file()
    assert 'dry run: nothing uploaded' in capsys.readouterr().out


def _run_folder(root: Path) -> Path:
    """A training run as the trainer leaves it: last/ (with train_state.pt), best/, metrics.jsonl."""
    add_train_state(tiny_checkpoint(root / 'last'))
    tiny_checkpoint(root / 'best')
    (root / 'metrics.jsonl').write_text('{"epoch": 3}\n')
    return root


@pytest.mark.parametrize('out', ['.', 'last', 'last/hub', 'hub', '..'])
def test_out_that_is_contains_or_lies_inside_the_run_is_refused_before_writing(tmp_path, capsys, out):
    run = _run_folder(tmp_path / 'runs' / 'p')
    before = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob('*'))
    target = (run / out).resolve()
    assert main(['publish', '--model', str(run / 'last'), '--output', str(target), '--overwrite', '--quiet']) == 2
    assert 'run folder' in capsys.readouterr().err
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob('*')) == before
    assert (run / 'last' / TRAIN_STATE_NAME).is_file() and (run / 'best' / WEIGHTS_NAME).is_file()


def _synthetic_run(tmp_path: Path, pretrained: bool) -> Path:
    from ptl_timm.data.synth import generate_synthetic

    data = generate_synthetic(tmp_path / 'data', 'street', num_ids=4, images_per_id=2, num_cams=2, img_size=(32, 16))
    checkpoint = tiny_checkpoint(tmp_path / 'run' / 'last')
    torch.save(dict(epoch=1, history=[{'epoch': 1}], config=dict(
        model='ptl_net', dataset={'name': 'market1501', 'root': str(data)}, pretrained=pretrained,
        init_checkpoint=None)), checkpoint / TRAIN_STATE_NAME)
    return checkpoint


def test_card_states_synthetic_data_random_initialisation_and_the_tag(tmp_path):
    result = publish(_synthetic_run(tmp_path, pretrained=False), tmp_path / 'hub', tag='synthstreet', progress=False)
    readme = (result.folder / 'README.md').read_text()
    assert "- Training data: synthetic persons from ptl_timm's generator (domain 'street', market1501 layout" in readme
    assert '- Training data: market1501\n' not in readme
    assert '- Initialisation: random weights (trained with `--no-pretrained`' in readme
    config = json.loads((result.folder / CONFIG_NAME).read_text())
    assert config['pretrained_cfg']['tag'] == 'synthstreet'
    assert result.repo_id == 'ptl-timm/ptl_net.synthstreet'


def test_card_names_the_imagenet_weights_training_started_from(tmp_path):
    result = publish(_synthetic_run(tmp_path, pretrained=True), tmp_path / 'hub', tag='synthstreet', progress=False)
    readme = (result.folder / 'README.md').read_text()
    assert f'- Initialisation: backbone from ImageNet weights (`{timm.models.get_pretrained_cfg(BACKBONE).hf_hub_id}`)' \
        in readme


def test_card_without_a_training_config_claims_nothing_about_data_or_initialisation(tmp_path):
    result = publish(tiny_checkpoint(tmp_path / 'ckpt'), tmp_path / 'hub', progress=False)
    readme = (result.folder / 'README.md').read_text()
    assert '- Training data: market1501 (the training configuration is not available to check it)' in readme
    assert '- Initialisation: not recorded' in readme
