"""Training with the BoT recipe and the training tools: centre loss with its own optimiser, warm-up,
a frozen backbone, gradient clipping, EMA, timm augmentations and TensorBoard, and their resume."""
import importlib.util

import pytest
import torch
from safetensors.torch import load_file

from ptl_timm.engine import fine_tune
from ptl_timm.engine.checkpoint import load_train_state
from ptl_timm.engine.config import TrainConfig
from ptl_timm.engine.trainer import build_model
from engine_support import IMG_SIZE, make_domain, tiny_config

# BoT in miniature: test_resnet with last stride 1, BNNeck and one linear classifier
BOT_ARGS = dict(backbone='test_resnet', embed_dim=0, neck='bnneck', last_stride=1, classifier_dims=())


@pytest.fixture(scope='module')
def domain(tmp_path_factory):
    return make_domain(tmp_path_factory.mktemp('synth'))


def bot_config(tmp_path, domain, **overrides) -> TrainConfig:
    values = tiny_config(tmp_path / 'run', domain, model='reid_net', model_args=BOT_ARGS, recipe='bot',
                         img_size=IMG_SIZE, batch_size=8, num_instances=2, epochs=2, max_steps_per_epoch=2)
    values.pop('lr')  # the recipe's
    values.pop('lr_step')
    return TrainConfig(**dict(values, **overrides))


def test_bot_recipe_resolves_for_bot_models():
    cfg = TrainConfig(model='bot_resnet50')
    assert (cfg.optimizer, cfg.lr, cfg.warmup_epochs, cfg.warmup_factor) == ('adam', 3.5e-4, 10, 0.1)
    assert (cfg.lr_milestones, cfg.epochs, cfg.sampler) == ([40, 70], 120, 'pk')
    assert (cfg.batch_size, cfg.num_instances) == (64, 4)
    assert (cfg.random_erasing, cfg.label_smoothing, cfg.triplet_weight, cfg.triplet_margin) == (0.5, 0.1, 1.0, 0.3)
    assert (cfg.center_weight, cfg.center_lr, cfg.img_size) == (5e-4, 0.5, (256, 128))
    assert TrainConfig(model='ptl_bot_resnet50').center_weight == 5e-4
    assert TrainConfig(model='ptl_resnet50').center_weight == 0.0


@pytest.mark.slow
def test_bot_run_trains_the_centres_warms_up_and_resumes(tmp_path, domain):
    cfg = bot_config(tmp_path, domain, epochs=1)
    first = fine_tune(cfg)['history'][0]
    assert first['lr'] == pytest.approx(3.5e-5)  # the warm-up's first epoch
    assert {'ce', 'triplet', 'center'} <= set(first)
    saved = load_train_state(tmp_path / 'run' / 'last')
    centers = saved['centers']['centers']
    classifier = load_file(tmp_path / 'run' / 'last' / 'model.safetensors')['head.fc.weight']
    assert centers.shape == classifier.shape  # one centre per training identity, as wide as the embedding
    # resuming restores the centres and their optimiser, and continues the warm-up
    history = fine_tune(bot_config(tmp_path, domain, epochs=2, resume=True))['history']
    assert history[1]['lr'] == pytest.approx(3.5e-5 + (3.5e-4 - 3.5e-5) / 10)
    assert not torch.equal(load_train_state(tmp_path / 'run' / 'last')['centers']['centers'], centers)


def test_frozen_backbone_keeps_its_weights_while_the_head_trains(tmp_path, domain):
    cfg = bot_config(tmp_path, domain, epochs=1, freeze_epochs=1, center_weight=0.0, clip_grad=1.0)
    initial = build_model(cfg, 8, 'x').state_dict()
    fine_tune(cfg)
    trained = load_file(tmp_path / 'run' / 'last' / 'model.safetensors')
    weights = [k for k in trained if k.endswith('weight') and 'bn' not in k]
    backbone = [k for k in weights if k.startswith('backbone.')]
    assert backbone and all(torch.equal(trained[k], initial[k]) for k in backbone)
    assert not torch.equal(trained['head.fc.weight'], initial['head.fc.weight'])


@pytest.mark.slow
def test_ema_weights_are_saved_and_the_trained_ones_resume(tmp_path, domain):
    cfg = bot_config(tmp_path, domain, epochs=1, ema_decay=0.5, augment='rand-m9-mstd0.5', color_jitter=0.2)
    fine_tune(cfg)
    saved = load_train_state(tmp_path / 'run' / 'last')
    evaluated = load_file(tmp_path / 'run' / 'last' / 'model.safetensors')
    key = 'head.fc.weight'
    assert not torch.equal(saved['model'][key], evaluated[key])  # EMA in last/, trained weights to resume
    fine_tune(bot_config(tmp_path, domain, epochs=2, ema_decay=0.5, augment='rand-m9-mstd0.5', color_jitter=0.2,
                         resume=True))


@pytest.mark.skipif(importlib.util.find_spec('tensorboard') is None, reason='tensorboard is not installed')
@pytest.mark.slow
def test_tensorboard_log_beside_metrics(tmp_path, domain):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    fine_tune(bot_config(tmp_path, domain, epochs=1, tensorboard=True))
    events = EventAccumulator(str(tmp_path / 'run' / 'tensorboard'))
    events.Reload()
    tags = set(events.Tags()['scalars'])
    assert {'train/loss', 'train/lr', 'train/center'} <= tags
    assert any(t.startswith('eval/') and t.endswith('/mAP') for t in tags)


def test_training_evaluation_takes_aqe_and_rerank_from_the_config(tmp_path, domain):
    import timm
    from ptl_timm.data.datasets import build_dataset
    from ptl_timm.engine.data import eval_loader
    from ptl_timm.engine.distributed import DistContext
    from ptl_timm.engine.evaluate import evaluate_split
    from ptl_timm.eval import evaluate_distmat, evaluate_rank, query_expansion, re_ranking
    from ptl_timm.eval.extract import extract_features
    torch.manual_seed(0)
    model = timm.create_model('reid_net', num_classes=0, **BOT_ARGS).eval()
    dataset = build_dataset('market1501', domain['root'])
    ctx = DistContext()
    cfg = bot_config(tmp_path, domain, eval_aqe=True, aqe_k=3, aqe_alpha=1.0)
    q, q_pids, q_cams = extract_features(model, eval_loader(dataset.query, cfg, ctx), progress=False)
    g, g_pids, g_cams = extract_features(model, eval_loader(dataset.gallery, cfg, ctx), progress=False)
    labels = (q_pids, g_pids, q_cams, g_cams)
    q_exp, g_exp = query_expansion(q, g, k=3, alpha=1.0)
    expected = evaluate_rank(q_exp, g_exp, *labels, device='cpu')['mAP']
    assert evaluate_split(model, dataset, cfg, ctx)['mAP'] == pytest.approx(100 * expected)
    cfg = bot_config(tmp_path, domain, eval_rerank=True, rerank_k1=5, rerank_k2=2, rerank_lambda=0.5)
    expected = evaluate_distmat(re_ranking(q, g, k1=5, k2=2, lambda_value=0.5), *labels, device='cpu')['mAP']
    assert evaluate_split(model, dataset, cfg, ctx)['mAP'] == pytest.approx(100 * expected)
