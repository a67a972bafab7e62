"""Training: fine-tuning, Student-Teacher Distillation, multi-step transfer, checkpoints and DDP.

``fine_tune``, ``run_distill`` and ``run_transfer`` each take a config dataclass (``TrainConfig``,
``DistillConfig``, ``TransferConfig``: built directly or by ``build_config`` from a file and
overrides, resolved and checked the same way) and work in one process or under ``torchrun``.
The functions are not named after their modules, so ``ptl_timm.engine.distill`` and
``ptl_timm.engine.transfer`` stay the modules.
"""
__all__ = [
    'fine_tune', 'run_distill', 'run_transfer', 'TrainConfig', 'DistillConfig', 'TransferConfig', 'build_config',
    'load_config', 'parse_overrides', 'ConfigError', 'CheckpointError', 'save_checkpoint', 'load_train_state',
]

from ptl_timm.errors import CheckpointError, ConfigError
from .checkpoint import load_train_state, save_checkpoint
from .config import DistillConfig, TrainConfig, TransferConfig, build_config, load_config, parse_overrides
from .distill import run_distill
from .trainer import fine_tune
from .transfer import run_transfer
