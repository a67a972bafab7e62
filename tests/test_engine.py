"""Fine-tuning engine: learning, checkpoints, per-epoch state reset, configs and bad input."""
import hashlib
import json
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from ptl_timm.cli import main
from ptl_timm.data.synth import SYNTH_DOMAINS, generate_synthetic
from ptl_timm.engine import (
    CheckpointError, ConfigError, TrainConfig, build_config, fine_tune, load_train_state, run_distill, run_transfer)
from ptl_timm.engine.config import TASKS, config_task, load_config
from ptl_timm.data.specs import load_dataset
from ptl_timm.tools.demo import DemoScale, run_demo
from ptl_timm.engine.distributed import DistContext
from ptl_timm.engine.evaluate import evaluate_split
from ptl_timm.engine.trainer import build_model
from ptl_timm.hub import load_model

from engine_support import (
    IMG_SIZE, MINIATURE, make_domain, save_untrained, states_seen_by_training_forwards, tiny_config)

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted(REPO.glob('configs/**/*.yaml'))
RUNNERS = {'finetune': fine_tune, 'distill': run_distill, 'transfer': run_transfer}
TEACHER_OF = {'reid_densenet161': 'ptl_densenet161', 'reid_resnet50': 'ptl_resnet50'}


@pytest.fixture(scope='module')
def domain(tmp_path_factory):
    return make_domain(tmp_path_factory.mktemp('synth'))


@pytest.fixture(scope='module')
def trained_run(tmp_path_factory, domain):
    """Two epochs, evaluated after each: the run most tests below inspect."""
    output = tmp_path_factory.mktemp('run') / 'out'
    result = fine_tune(TrainConfig(**tiny_config(output, domain, epochs=2, eval_every=1)))
    return output, result


def _digest(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob('*')) if p.is_file()}


@pytest.mark.slow
def test_one_epoch_of_fine_tuning_improves_map_over_the_untrained_model(tmp_path, domain):
    cfg = TrainConfig(**tiny_config(tmp_path / 'out', domain, epochs=1, lr=0.05))
    dataset = load_dataset(domain, cfg.data_root, {})
    untrained = build_model(cfg, dataset.num_train_pids, 'synth')
    before = evaluate_split(untrained, dataset, cfg, DistContext())['mAP']
    after = fine_tune(cfg)['last']['eval'][domain['label']]['mAP']
    assert after > before + 5.0, (before, after)


@pytest.mark.slow
def test_side_lr_mult_scales_only_the_side_network_steps(tmp_path, domain):
    """With a vanishing side_lr_mult the cells and fuses barely move while the backbone trains."""
    cfg = TrainConfig(**tiny_config(tmp_path / 'out', domain, side_lr_mult=1e-6))
    start = build_model(cfg, load_dataset(domain, cfg.data_root, {}).num_train_pids, 'synth').state_dict()
    fine_tune(cfg)
    trained = load_model(str(tmp_path / 'out' / 'last')).state_dict()

    def largest_change(prefix):
        return max((trained[k] - start[k]).abs().max().item()
                   for k in start if k.startswith(prefix) and start[k].is_floating_point() and 'running' not in k)
    assert largest_change('side.') < 1e-5 < largest_change('backbone.')


@pytest.mark.slow
def test_cross_batch_memory_keys_reach_the_loss(tmp_path, domain):
    result = fine_tune(TrainConfig(**tiny_config(
        tmp_path / 'out', domain, triplet_weight=1.0, xbm_size=16, xbm_weight=0.5, max_steps_per_epoch=3)))
    assert result['history'][0]['xbm'] > 0, 'the xbm term is trained (memory filled by the earlier batches)'


def test_non_positive_side_lr_mult_is_a_config_error(tmp_path, domain):
    with pytest.raises(ConfigError, match='side_lr_mult'):
        build_config(TrainConfig, overrides=tiny_config(tmp_path / 'out', domain, side_lr_mult=0))


@pytest.mark.slow
def test_each_epoch_writes_last_best_metrics_and_curves(trained_run):
    output, result = trained_run
    for name in ('last', 'best'):
        assert {'config.json', 'model.safetensors'} <= {p.name for p in (output / name).iterdir()}
    records = [json.loads(line) for line in (output / 'metrics.jsonl').read_text().splitlines()]
    assert [r['epoch'] for r in records] == [1, 2] and all('eval' in r for r in records)
    with Image.open(output / 'curves.png') as image:
        assert image.format == 'PNG'
    assert result['history'] == records


@pytest.mark.parametrize('every_s, drawn', [(30.0, [1, 3]), (0.0, [1, 2, 3])])
def test_curves_are_drawn_after_the_first_and_last_epochs_and_at_most_every_so_often(
        tmp_path, domain, monkeypatch, every_s, drawn):
    """Epochs a second long skip the drawing between the first and the last; slow ones draw every epoch, once
    (an evaluated epoch after its evaluation)."""
    from ptl_timm.engine import trainer
    lengths = []
    monkeypatch.setattr(trainer, 'plot_curves', lambda history, path: lengths.append(len(history)))
    monkeypatch.setattr(trainer, 'CURVES_EVERY_S', every_s)
    fine_tune(TrainConfig(**tiny_config(tmp_path / 'out', domain, epochs=3, eval_every=2)))
    assert lengths == drawn


def test_train_state_loads_with_weights_only_and_holds_everything_to_resume(trained_run):
    output, _ = trained_run
    state = load_train_state(output / 'last')
    assert state['epoch'] == 2
    assert {'optimizer', 'scheduler', 'scaler', 'rng', 'history', 'best', 'config'} <= set(state)
    assert state['optimizer']['state'], 'optimizer momentum buffers are saved'


def test_last_checkpoint_rebuilds_the_trained_model(trained_run, domain):
    output, result = trained_run
    model = load_model(output / 'last')
    cfg = TrainConfig(**tiny_config(output, domain))
    metrics = evaluate_split(model, load_dataset(domain, cfg.data_root, {}), cfg, DistContext())
    assert metrics['mAP'] == pytest.approx(result['last']['eval'][domain['label']]['mAP'], abs=1e-4)


def _state_sizes_seen_by_training_forwards(cfg: TrainConfig) -> list:
    """The latent-state size each training forward of the first BConv-Cell reads (0: zero state)."""
    return [state.numel() for state in states_seen_by_training_forwards(cfg)]


@pytest.mark.slow
def test_every_training_epoch_starts_from_zero_latent_state(tmp_path, domain):
    seen = _state_sizes_seen_by_training_forwards(
        TrainConfig(**tiny_config(tmp_path / 'out', domain, epochs=2, max_steps_per_epoch=2, eval_every=1)))
    assert len(seen) == 4
    assert seen[0] == 0 and seen[2] == 0, 'state reset at the start of each epoch'
    assert seen[1] > 0 and seen[3] > 0, 'state carried to the next batch within an epoch'


@pytest.mark.slow
def test_state_reset_never_carries_the_state_across_epochs_and_evaluation(tmp_path, domain):
    seen = _state_sizes_seen_by_training_forwards(TrainConfig(**tiny_config(
        tmp_path / 'out', domain, epochs=2, max_steps_per_epoch=2, eval_every=1, state_reset='never')))
    assert seen[0] == 0 and all(size > 0 for size in seen[1:]), seen


def test_reid_checkpoint_start_reinitialises_the_classifier_only(tmp_path, domain):
    source = save_untrained(tmp_path / 'source', 'ptl_net', num_classes=5, **tiny_config(tmp_path, domain)['model_args'])
    cfg = TrainConfig(**tiny_config(tmp_path / 'out', domain, init_checkpoint=str(source)))
    model = build_model(cfg, 8, 'synth')
    reference = load_model(source)
    assert model.head.fc.out_features == 8
    torch.testing.assert_close(model.backbone.state_dict(), reference.backbone.state_dict())
    torch.testing.assert_close(model.head.hidden.state_dict(), reference.head.hidden.state_dict())


@pytest.mark.slow
def test_cli_trains_with_amp_and_channels_last(tmp_path, domain):
    config_file = tmp_path / 'run.yaml'
    config_file.write_text(yaml.safe_dump(tiny_config(tmp_path / 'out', domain, max_steps_per_epoch=2)))
    assert main(['train', '--config', str(config_file), '--amp', '--channels-last', '--quiet']) == 0
    state = load_train_state(tmp_path / 'out' / 'last')
    assert state['config']['amp'] and state['config']['channels_last'] and state['history'][0]['loss'] > 0


def test_unknown_config_key_is_a_clear_cli_error(capsys):
    assert main(['train', '--set', 'learning_rate=0.1']) == 2
    err = capsys.readouterr().err
    assert "unknown key 'learning_rate'" in err and 'lr' in err


def test_missing_dataset_root_leaves_existing_checkpoints_untouched(trained_run, domain):
    output, _ = trained_run
    before = _digest(output)
    missing = dict(domain, root=str(Path(domain['root']) / 'nowhere'))
    with pytest.raises(FileNotFoundError, match='does not exist'):
        fine_tune(TrainConfig(**tiny_config(output, missing, overwrite=True)))
    assert _digest(output) == before


def test_checkpoint_of_another_architecture_is_rejected_and_checkpoints_untouched(trained_run, domain, tmp_path):
    output, _ = trained_run
    other = save_untrained(tmp_path / 'other', 'reid_net', backbone='test_resnet')
    before = _digest(output)
    with pytest.raises(CheckpointError, match='reid_net'):
        fine_tune(TrainConfig(**tiny_config(output, domain, init_checkpoint=str(other), overwrite=True)))
    assert _digest(output) == before


def test_empty_training_split_is_a_clear_error(tmp_path, domain):
    empty = tmp_path / 'empty'
    for split in ('bounding_box_train', 'query', 'bounding_box_test'):
        (empty / split).mkdir(parents=True)
    with pytest.raises(ValueError, match='empty training split|no training|empty'):
        fine_tune(TrainConfig(**tiny_config(tmp_path / 'out', dict(domain, root=str(empty)))))
    assert not (tmp_path / 'out').exists()


def test_existing_run_is_not_overwritten_without_resume_or_overwrite(trained_run, domain):
    output, _ = trained_run
    before = _digest(output)
    with pytest.raises(CheckpointError, match='--resume'):
        fine_tune(TrainConfig(**tiny_config(output, domain)))
    assert _digest(output) == before


def test_config_file_then_overrides_then_flags(tmp_path):
    path = tmp_path / 'cfg.yaml'
    path.write_text('model: ptl_mgn\nlr: 0.1\nepochs: 3\n')
    cfg = build_config(TrainConfig, load_config(path), {'epochs': 5})
    assert (cfg.lr, cfg.epochs) == (0.1, 5)
    assert cfg.img_size == (384, 128) and cfg.sampler == 'pk', 'MGN models get the MGN recipe'
    with pytest.raises(ConfigError, match='img_size'):
        build_config(TrainConfig, {'img_size': [1, 2, 3]})


@pytest.mark.parametrize('path', CONFIGS, ids=lambda p: p.relative_to(p.parents[1]).as_posix())
def test_reproduction_config_parses(path):
    data = load_config(path)
    cfg = build_config(TASKS[config_task(data)], data)
    assert cfg.output.startswith('output/')


def _dataset_names(data: dict) -> set:
    specs = [data.get('dataset')] + list(data.get('test_datasets', [])) + [s['dataset'] for s in data.get('steps', [])]
    flat = [name for spec in specs if spec for name in (spec if isinstance(spec, list) else [spec])]
    return set(flat)


@pytest.fixture(scope='module')
def layout_root(tmp_path_factory):
    """One tiny synthetic dataset per on-disk layout the configs name (made on first use)."""
    root, made = tmp_path_factory.mktemp('layouts'), {}

    def get(name: str) -> str:
        if name not in made:
            made[name] = str(generate_synthetic(
                root / name, SYNTH_DOMAINS[0], layout=name, num_ids=4, images_per_id=3, num_cams=2, img_size=IMG_SIZE))
        return made[name]
    return get


@pytest.mark.slow
@pytest.mark.parametrize('path', CONFIGS, ids=lambda p: p.relative_to(p.parents[1]).as_posix())
def test_reproduction_config_runs_one_tiny_step(path, layout_root, tmp_path):
    """The config's task, recipe, datasets and model entrypoints (DenseNet/ResNet backbones in
    miniature), one step at 64×32 on synthetic data in its datasets' on-disk layouts."""
    data = load_config(path)
    task = config_task(data)
    model = data['model']
    tiny = dict(
        data_root={name: layout_root(name) for name in _dataset_names(data)}, pretrained=False, img_size=IMG_SIZE,
        batch_size=4, num_instances=2, epochs=1, max_steps_per_epoch=1, eval_batch_size=64, num_workers=0,
        output=str(tmp_path / 'out'), progress=False, device='cpu', model_args=MINIATURE.get(model, {}))
    if task == 'distill':
        tiny['teacher'] = str(save_untrained(tmp_path / 'teacher', TEACHER_OF[model], **MINIATURE[model]))
        tiny['init_checkpoint'] = str(save_untrained(tmp_path / 'student', model, **MINIATURE[model]))
    if task == 'transfer' and data.get('distill'):
        student_model = data['distill']['model']
        student = save_untrained(tmp_path / 'student', student_model, **MINIATURE[student_model])
        tiny['distill'] = dict(data['distill'], init_checkpoint=str(student), model_args=MINIATURE[student_model])
    result = RUNNERS[task](build_config(TASKS[task], data, tiny))
    if task == 'transfer':
        assert len(result['rows']) == len(data['steps']) + bool(data.get('distill'))
        assert all(row['eval'] for row in result['rows'])
    else:
        assert result['last']['eval'] and (tmp_path / 'out' / 'last' / 'model.safetensors').is_file()


@pytest.mark.slow
def test_demo_trains_baseline_ptl_and_student_and_draws_ranked_lists(tmp_path):
    result = run_demo(tmp_path, DemoScale(num_ids=12, images_per_id=3, epochs=1, distill_epochs=1),
                      backbone='test_resnet', progress=False)
    assert [row['step'] for row in result['rows']] == ['baseline', 'PTL', 'PTL+STD']
    assert all(len(row['eval']) == 2 for row in result['rows']), 'in-domain and cross-domain'
    for run in ('baseline', 'ptl', 'ptl_std'):
        assert (tmp_path / run / 'curves.png').is_file()
    with Image.open(result['ranked']) as picture:
        assert picture.format == 'PNG'
