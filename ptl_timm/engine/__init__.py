"""Training: fine-tuning, Student-Teacher Distillation, multi-step transfer, checkpoints and DDP.

``fine_tune``, ``distill`` and ``transfer`` each take a config dataclass (``TrainConfig``,
``DistillConfig``, ``TransferConfig``; see ``build_config`` for files and overrides) and work in
one process or under ``torchrun``.
"""
__all__ = [
    'fine_tune', 'distill', 'transfer', 'TrainConfig', 'DistillConfig', 'TransferConfig', 'build_config', 'load_config',
    'parse_overrides', 'ConfigError', 'CheckpointError', 'save_checkpoint', 'load_train_state',
]

from .checkpoint import CheckpointError, load_train_state, save_checkpoint
from .config import (
    ConfigError, DistillConfig, TrainConfig, TransferConfig, build_config, load_config, parse_overrides)
from .distill import distill
from .trainer import fine_tune
from .transfer import transfer
