"""One training at a time per run folder.

While a run writes into ``output`` it holds ``output/.lock`` (its pid, host and start time), so a
second training into the same folder fails at once instead of mixing its checkpoints with the
first's. The lock is released when the run ends, by an exception too. A lock left by a killed run
on this machine (its process no longer exists) is detected, reported and taken over; one from
another machine cannot be checked, so the error says how to clear it.
"""
import contextlib
import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any, Dict, Iterator, Union

from ptl_timm.errors import OutputError, writing

__all__ = ['LOCK_NAME', 'run_lock']

LOCK_NAME = '.lock'
_logger = logging.getLogger(__name__)


def _holder(path: Path) -> Dict[str, Any]:
    with contextlib.suppress(OSError, ValueError):
        return json.loads(path.read_text())
    return {}  # being written right now, or not a lock of ours


def _process_gone(holder: Dict[str, Any]) -> bool:
    """True only when the holder ran on this machine and its process no longer exists."""
    if holder.get('host') != socket.gethostname() or not isinstance(holder.get('pid'), int):
        return False
    try:
        os.kill(holder['pid'], 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def _acquire(path: Path) -> None:
    me = dict(pid=os.getpid(), host=socket.gethostname(), started=time.strftime('%Y-%m-%d %H:%M:%S'))
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _holder(path)
            if not _process_gone(holder):
                raise OutputError(
                    f'{path.parent} is in use by another training (pid {holder.get("pid", "?")} on '
                    f'{holder.get("host", "?")}, started {holder.get("started", "?")}): wait for it to end or choose '
                    f'another output. If that training no longer runs, delete {path}') from None
            _logger.warning('%s: removing the stale lock of pid %s on %s (started %s), a run that ended without '
                            'releasing it', path.parent, holder['pid'], holder['host'], holder.get('started'))
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            continue
        with os.fdopen(fd, 'w') as f:
            json.dump(me, f)
        return
    raise OutputError(f'could not lock {path.parent}: another process keeps creating {path}')


@contextlib.contextmanager
def run_lock(output: Union[str, os.PathLike]) -> Iterator[None]:
    """Hold ``output``'s lock for the block (creating ``output``: an unwritable folder is an
    ``OutputError`` here, before any training)."""
    path = Path(output) / LOCK_NAME
    try:
        with writing(path.parent):  # a full disk, or a file where the folder should be, names the run folder
            path.parent.mkdir(parents=True, exist_ok=True)
            _acquire(path)
    except OutputError:
        raise
    except OSError as e:  # e.g. a file where the folder should be
        raise OutputError(f'cannot write the run folder {path.parent}: {e.strerror or e}; choose another output') from e
    try:
        yield
    finally:
        if _holder(path).get('pid') == os.getpid():
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
