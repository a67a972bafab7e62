"""Tiny settings shared by the engine tests: synthetic domains on disk and a seconds-long config."""
from pathlib import Path
from typing import Any, Dict

import timm

from ptl_timm.data.synth import SYNTH_DOMAINS, generate_synthetic
from ptl_timm.engine.checkpoint import save_checkpoint
from ptl_timm.engine.distributed import DistContext
from ptl_timm.engine.trainer import build_model, prepare_session, run_training
from ptl_timm.layers import BConvCell
from ptl_timm.losses import ReIDLoss

IMG_SIZE = (64, 32)
# a ptl_net on timm's smallest ResNet with narrow neck and classifier: ~0.6M parameters
TINY_MODEL_ARGS = dict(backbone='test_resnet', embed_dim=64, classifier_dims=(32, 16))
# the named entrypoints with one block per stage and a narrow neck: the paper's architectures in miniature
_SMALL_DENSENET = dict(backbone_args=dict(growth_rate=8, block_config=(1, 1, 1, 1)), embed_dim=64)
_SMALL_RESNET = dict(backbone_args=dict(layers=(1, 1, 1, 1)), embed_dim=64)
_SHALLOW_MGN = dict(layers=(1, 1, 2, 1))
MINIATURE = {'ptl_densenet161': _SMALL_DENSENET, 'reid_densenet161': _SMALL_DENSENET,
             'ptl_resnet50': _SMALL_RESNET, 'reid_resnet50': _SMALL_RESNET,
             'bot_resnet50': dict(backbone_args=dict(layers=(1, 1, 1, 1))), 'ptl_bot_resnet50': _SMALL_RESNET,
             'ptl_mgn': _SHALLOW_MGN, 'mgn_resnet50': _SHALLOW_MGN}


def make_domain(root: Path, index: int = 0, num_ids: int = 8, images_per_id: int = 4) -> Dict[str, str]:
    """A synthetic Market-1501-layout dataset on disk, as a dataset spec."""
    domain = SYNTH_DOMAINS[index]
    path = generate_synthetic(root, domain, layout='market1501', num_ids=num_ids, images_per_id=images_per_id,
                              num_cams=2, img_size=IMG_SIZE, seed=index)
    return dict(name='market1501', root=str(path), label=f'synth-{domain}')


def tiny_config(output: Path, dataset: Any, **overrides) -> Dict[str, Any]:
    """Config values for a seconds-long run of a tiny PTL model (pass to build_config or a dataclass)."""
    return dict(dict(
        model='ptl_net', model_args=dict(TINY_MODEL_ARGS), pretrained=False, dataset=dataset,
        img_size=IMG_SIZE, batch_size=8, epochs=1, lr=0.05, lr_step=10, eval_every=0, eval_batch_size=32,
        num_workers=0, output=str(output), progress=False, device='cpu'), **overrides)


def states_seen_by_training_forwards(cfg) -> list:
    """Train ``cfg`` and return the latent state each training forward of the first BConv-Cell reads
    (an empty tensor: a zero state)."""
    session = prepare_session(cfg, DistContext(), lambda n, label: build_model(cfg, n, label))
    cell = next(m for m in session.model.modules() if isinstance(m, BConvCell))
    seen = []
    cell.register_forward_pre_hook(lambda module, args: seen.append(module.latent_state.clone()) if module.training else None)
    criterion = ReIDLoss()
    run_training(session, lambda module, images, pids: criterion(module(images), pids))
    return seen


def save_untrained(path: Path, model_name: str, num_classes: int = 8, **model_args) -> Path:
    """A checkpoint folder of a freshly initialised model (a stand-in teacher or starting point)."""
    model = timm.create_model(model_name, pretrained=False, num_classes=num_classes, **model_args)
    return save_checkpoint(path, model)
