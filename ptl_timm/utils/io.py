"""Atomic file output: a reader never sees a half-written checkpoint, table or image.

Everything the project writes goes to a temporary file in the destination folder first and is
then renamed over the target (``os.replace`` is atomic on POSIX and Windows), so a crash or a
SIGKILL leaves either the old file or the new one, never a truncated one.
"""
import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator, Union

PathLike = Union[str, os.PathLike]


def _publish(tmp: PathLike, path: Path) -> None:
    """Give the temporary file the permissions a plain ``open()`` would have (``mkstemp`` makes it
    owner-only), then rename it onto ``path``."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, path)


@contextlib.contextmanager
def atomic_write(path: PathLike, mode: str = 'wb') -> Iterator[Any]:
    """Open a temporary sibling of ``path`` for writing; rename it onto ``path`` on success.

    Yields a file object (``mode`` 'w' or 'wb'). On an exception the temporary file is removed
    and ``path`` is left untouched.
    """
    if mode not in ('w', 'wb'):
        raise ValueError(f"atomic_write mode must be 'w' or 'wb', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f'.{path.name}.', suffix='.tmp', dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        _publish(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path`` for writers that take a file name
    (``safetensors.torch.save_file``, ``torch.save``, ``PIL.Image.save``); rename on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f'.{path.name}.', suffix=path.suffix or '.tmp', dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        _publish(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_save_json(obj: Any, path: PathLike, indent: int = 2) -> None:
    """Write ``obj`` as JSON to ``path`` atomically."""
    with atomic_write(path, 'w') as f:
        json.dump(obj, f, indent=indent, sort_keys=False)
        f.write('\n')
