"""One training at a time per run folder.

While a run writes into ``output`` it holds a kernel lock on ``output/.lock`` (``filelock``), so a
second training into the same folder fails at once instead of mixing its checkpoints with the
first's. The kernel releases the lock when its process ends, however it ends (a SIGKILL too), so
no stale lock is ever left to clear. Who holds it (pid, host, start time) is written beside, in
``output/.lock.holder``, only to name the holder when a second run is refused.
"""
import contextlib
import json
import os
import socket
import time
from pathlib import Path
from typing import Any, Dict, Iterator

from filelock import FileLock, Timeout

from ptl_timm.errors import OutputError, writing
from ptl_timm.utils import PathLike, atomic_save_json

__all__ = ['LOCK_NAME', 'HOLDER_NAME', 'run_lock']

LOCK_NAME = '.lock'
HOLDER_NAME = '.lock.holder'


def _holder(path: Path) -> Dict[str, Any]:
    with contextlib.suppress(OSError, ValueError):
        return json.loads(path.read_text())
    return {}  # not written yet by the process that just took the lock


@contextlib.contextmanager
def run_lock(output: PathLike) -> Iterator[None]:
    """Hold ``output``'s lock for the block (creating ``output``: an unwritable folder is an
    ``OutputError`` here, before any training)."""
    folder = Path(output)
    try:
        with writing(folder):  # a full disk, or a file where the folder should be, names the run folder
            folder.mkdir(parents=True, exist_ok=True)
    except OutputError:
        raise
    except OSError as e:  # e.g. a file where the folder should be
        raise OutputError(f'cannot write the run folder {folder}: {e.strerror or e}; choose another output') from e
    lock = FileLock(folder / LOCK_NAME, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        holder = _holder(folder / HOLDER_NAME)
        raise OutputError(
            f'{folder} is in use by another training (pid {holder.get("pid", "?")} on {holder.get("host", "?")}, '
            f'started {holder.get("started", "?")}): wait for it to end or choose another output') from None
    try:
        atomic_save_json(dict(pid=os.getpid(), host=socket.gethostname(), started=time.strftime('%Y-%m-%d %H:%M:%S')),
                         folder / HOLDER_NAME)
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(folder / HOLDER_NAME)
        lock.release()
