"""The run folder's config: what a run saves (``config.yaml``) and what ``resume`` reads back.

Building a config reads no file; a run's entry point (``fine_tune``, ``run_distill``,
``run_transfer``) passes it through :func:`run_config` first, which for ``resume=True`` reads the
run's saved config and lays the given values (``cfg.given_keys``) over it. A given value that
contradicts the saved one is an error unless it only changes how the run proceeds
(``RESUME_OVERRIDABLE``, epochs only upwards).
"""
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, Optional, Tuple

from ptl_timm.errors import CheckpointError, ConfigError
from ptl_timm.hub import TRAIN_STATE_NAME
from ptl_timm.utils import PathLike, atomic_write
from .checkpoint import load_train_state
from .config import (
    COMMANDS, CONFIG_FILE_NAME, RESUME_OVERRIDABLE, RUN_CONTROL, T, TrainConfig, check_config, check_values,
    config_to_dict, config_to_yaml, load_config, plain, task_of)

__all__ = ['saved_config', 'run_config', 'save_run_config', 'check_started_here', 'relative_paths', 'remove_outputs']

_logger = logging.getLogger(__name__)
_PATH_SETTINGS = ('data_root', 'init_checkpoint', 'teacher', 'root')  # settings that name files or folders


def saved_config(output: PathLike) -> Optional[Dict[str, Any]]:
    """The config a run in ``output`` saved (``config.yaml``; older runs: ``last/train_state.pt``), or None."""
    output = Path(output)
    if (output / CONFIG_FILE_NAME).is_file():
        return load_config(output / CONFIG_FILE_NAME)
    if (output / 'last' / TRAIN_STATE_NAME).is_file():
        return load_train_state(output / 'last').get('config')
    return None


def run_config(cfg: T) -> T:
    """The config a run trains with: ``cfg`` checked again, or for ``resume=True`` the run's saved
    config with the values given to ``cfg`` on top (each checked against the saved one). A folder
    holding a run of another task is taken over only with ``overwrite``: this run's ``config.yaml``
    would replace that run's, which could then no longer be resumed."""
    check_config(cfg)
    cls, where = type(cfg), 'config'
    if cfg.resume and cfg.overwrite:
        raise ConfigError(f'{where}: resume continues the run in {cfg.output} and overwrite replaces it; pass one')
    if not cfg.resume:
        config_file = Path(cfg.output) / CONFIG_FILE_NAME
        other = load_config(config_file).get('task') if config_file.is_file() and not cfg.overwrite else None
        if other not in (None, task_of(cls)):
            raise CheckpointError(
                f'{cfg.output} holds a {other!r} run ({CONFIG_FILE_NAME}), which a {task_of(cls)!r} run would make '
                f'unresumable; choose another output, or pass --overwrite to replace it')
        return cfg
    saved = saved_config(cfg.output)
    if saved is None:
        raise ConfigError(f'{where}: nothing to resume in {cfg.output}: it holds no {CONFIG_FILE_NAME} of a run '
                          f'(was the run started with output={cfg.output}?)')
    task = saved.pop('task', task_of(cls))
    if task != task_of(cls):
        raise ConfigError(f'{where}: {cfg.output} holds a {task!r} run; resume it with '
                          f'`ptl-timm {COMMANDS[task]} --resume`')
    saved = check_values(cls, saved, str(Path(cfg.output) / CONFIG_FILE_NAME))
    given = {key: getattr(cfg, key) for key in getattr(cfg, 'given_keys', ())}
    contradictions = []
    for key, value in given.items():
        if key in RUN_CONTROL or key == 'output' or plain(value) == plain(saved.get(key)):
            continue
        if key in RESUME_OVERRIDABLE and not (key == 'epochs' and value < saved['epochs']):
            _logger.warning('resuming %s with %s=%r instead of the saved %r', cfg.output, key, value, saved.get(key))
        else:
            contradictions.append(f'{key}={value!r} (saved: {saved.get(key)!r})')
    if contradictions:
        raise ConfigError(
            f'{where}: resuming {cfg.output}, which was started with other values: {"; ".join(contradictions)}. '
            f'Resume needs only the output folder: drop these values, or start a new run (another output, or '
            f'overwrite). Only {", ".join(RESUME_OVERRIDABLE)} may change (epochs only upwards)')
    return cls(**{**saved, **given, 'output': cfg.output, 'resume': True})


def check_started_here(cfg: TrainConfig, started_in: Optional[str]) -> None:
    """A resumed run whose config names relative paths reads them against the current folder: from another
    folder than the one it started in (``started_in``, from its training state), other data or weights. Refused
    then; a run saved before the folder was recorded is resumed with the paths named."""
    relative = [f'{name}: {path}' for name, path in relative_paths(config_to_dict(cfg))]
    here = os.getcwd()
    if not relative or (started_in is not None and os.path.realpath(started_in) == os.path.realpath(here)):
        return
    if started_in is None:
        _logger.warning('resuming %s, whose config names relative paths, read against the current folder %s (the '
                        'run did not record where it started; from another folder it trains on other data): %s',
                        cfg.output, here, '; '.join(relative))
        return
    raise CheckpointError(f'{cfg.output} was started in {started_in} and its config names relative paths '
                          f'({"; ".join(relative)}), which from {here} name other files: resume it from {started_in}')


def relative_paths(value: Any, name: str = '', is_path: bool = False) -> Iterator[Tuple[str, str]]:
    """``(setting, path)`` for every relative path a config names (data roots, dataset spec roots,
    checkpoints, in transfer steps too): what a resume from another folder would read elsewhere."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from relative_paths(item, f'{name}.{key}' if name else key, is_path or key in _PATH_SETTINGS)
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            yield from relative_paths(item, f'{name}[{i}]', is_path)
    elif is_path and isinstance(value, str) and value and ':' not in value:
        if not Path(value).expanduser().is_absolute():
            yield name, value


def remove_outputs(paths: Iterable[Path]) -> None:
    """Delete an earlier run's outputs (files or folders), in the order given: what ``--overwrite`` replaces
    goes before the new run writes, so nothing of it can sit beside the new run's."""
    for path in paths:
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def save_run_config(cfg: TrainConfig) -> None:
    """Write ``config.yaml`` into ``cfg.output``: what the run trains with, and what ``--resume``
    reads. A resumed run's allowed changes (``RESUME_OVERRIDABLE``, each logged) update it."""
    path = Path(cfg.output) / CONFIG_FILE_NAME
    text = config_to_yaml(cfg)
    if cfg.resume and path.is_file() and path.read_text() != text:
        _logger.warning('%s: recording the values this resumed run changed', path)
    with atomic_write(path, 'w') as f:
        f.write(text)
