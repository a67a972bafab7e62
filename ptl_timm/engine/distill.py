"""Student-Teacher Distillation (PTL paper §4, Figure 2, Eq. 4).

The teacher (a trained PTL model) is in eval mode for the whole run, so its BConv-Cell states stay
zero and its embedding of an image depends on that image only; it runs without gradients and is
never given to the optimizer, so its parameters cannot change. The student (a ``reid_*`` network:
the plain backbone with the same head) starts from its own fine-tuned weights and learns
(1-λ)·CE + λ·L1(student embedding, teacher embedding). When the embedding widths differ, a
bias-free linear adapter (student width → teacher width) is trained with the student and applied to
its embedding in the L1 term only; it is kept in ``train_state.pt`` for resuming and is not part of
the saved student, which after training stands alone at the backbone's inference cost.
"""
import logging
from typing import Any, Dict

import torch
import torch.nn as nn

from ptl_timm.hub import load_model
from ptl_timm.losses import DistillationLoss
from ptl_timm.errors import ConfigError
from .config import DistillConfig
from .distributed import setup_distributed
from .run_folder import run_config
from .trainer import LossStep, build_model, prepare_session, run_training

__all__ = ['run_distill', 'load_teacher', 'distillation_step']

_logger = logging.getLogger(__name__)
# training terms of TrainConfig that Eq. 4's loss has no place for
_UNUSED_TERMS = ('triplet_weight', 'center_weight', 'xbm_size')


def load_teacher(source: str, device: torch.device) -> nn.Module:
    """The frozen teacher: eval mode, no gradients."""
    if not source:
        raise ConfigError('distillation needs a teacher: set teacher to the checkpoint folder of a trained PTL model')
    teacher = load_model(source).to(device).eval()
    teacher.requires_grad_(False)
    if not hasattr(teacher, 'forward_reid'):
        raise ConfigError(
            f'teacher {source} ({type(teacher).__name__}) has no forward_reid: it is not a ptl_timm ReID model')
    return teacher


def _warn_if_preprocessed_otherwise(teacher: nn.Module, student: nn.Module, source: str) -> None:
    """The teacher sees the student's batches: at another input size or normalisation than it was trained
    with, its embeddings (the L1 targets) are worse, and nothing else would say so."""
    saved, used = (getattr(m, 'pretrained_cfg', None) or {} for m in (teacher, student))
    differences = [f'{key} {tuple(used.get(key, ()))} instead of its {tuple(saved[key])}'
                   for key in ('input_size', 'mean', 'std')
                   if key in saved and tuple(saved[key]) != tuple(used.get(key, ()))]
    if differences:
        _logger.warning('the teacher %s sees the training images with %s: its embeddings, the distillation targets, '
                        'are then worse; train the student at the teacher\'s preprocessing (img_size)', source,
                        ', '.join(differences))


def distillation_step(teacher: nn.Module, criterion: DistillationLoss) -> LossStep:
    """The loss of one batch: the teacher's embedding (eval mode, no gradients) is the L1 target."""
    def loss_step(module: nn.Module, images: torch.Tensor, pids: torch.Tensor):
        with torch.no_grad():
            teacher_embedding = teacher.forward_reid(images).embedding
        return criterion(module(images), teacher_embedding, pids)
    return loss_step


def run_distill(cfg: DistillConfig) -> Dict[str, Any]:
    """Distil ``cfg.teacher`` into the student ``cfg.model`` on ``cfg.dataset``; returns the run summary.
    Metric-learning terms set by the config or the student's recipe (BoT's triplet and centre loss) are
    not part of Eq. 4: they are reported as unused, not silently dropped."""
    cfg = run_config(cfg)
    unused = {key: getattr(cfg, key) for key in _UNUSED_TERMS if getattr(cfg, key)}
    if unused:
        _logger.warning('distillation trains with (1-λ)·CE + λ·L1 (Eq. 4) only; %s (from the config or the '
                        "model's recipe) are not used", ', '.join(f'{k}={v}' for k, v in unused.items()))
    ctx = setup_distributed(cfg.device)
    try:
        teacher = load_teacher(cfg.teacher, ctx.device)
        session = prepare_session(cfg, ctx, lambda num_classes, label: build_model(cfg, num_classes, label))
        _warn_if_preprocessed_otherwise(teacher, session.model, cfg.teacher)
        student_width, teacher_width = session.model.head_hidden_size, teacher.head_hidden_size
        if student_width != teacher_width:
            session.adapter = nn.Linear(student_width, teacher_width, bias=False)
        return run_training(session, distillation_step(teacher, DistillationLoss(cfg.lam, cfg.label_smoothing)))
    finally:
        ctx.close()
