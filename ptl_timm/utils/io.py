"""Crash-safe output: a reader never sees a half-written checkpoint, table, image or dataset folder.

Files: everything is written to a temporary sibling first, flushed to disk (``fsync``) and renamed
over the target (``os.replace`` is atomic on POSIX and Windows), so a crash or a SIGKILL leaves the
old file or the new one, never a truncated one.

Folders (:func:`atomic_folder`): the new folder is written under a hidden staging name
(``.NAME.new``) and synced; then the old folder is renamed aside (``.NAME.old``), the new one renamed
into place and the old one deleted. The old output stays complete until the new one is in place: a
crash between the two renames leaves the old folder aside. Only writers repair: :func:`recover_folder`
(called by :func:`atomic_folder` and by a run before it writes) puts the old folder back. Readers
never write: :func:`readable_folder` names the folder to read (the old one while it is aside), so a
reader running between a writer's two renames cannot move a folder under the writer. Writes that
fail on a full disk or a read-only folder raise :class:`ptl_timm.errors.OutputError` naming the file,
and leave no staging files behind.
"""
import contextlib
import errno
import functools
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator, Union

from ptl_timm.errors import OutputError, writing

__all__ = [
    'PathLike', 'atomic_write', 'atomic_path', 'atomic_save_json', 'atomic_folder', 'recover_folder', 'readable_folder',
    'current_umask', 'check_output_path', 'require_free_space',
]

PathLike = Union[str, os.PathLike]  # the path type of every function of the package that takes a file or folder


def current_umask() -> int:
    """The process's umask, read without changing it: ``os.umask`` can only be read by setting it,
    which races with other threads creating files. From ``/proc/self/status`` (Linux); elsewhere it
    is read by setting it once per process and cached."""
    with contextlib.suppress(OSError):
        match = re.search(r'^Umask:\s*([0-7]+)', Path('/proc/self/status').read_text(), re.MULTILINE)
        if match:
            return int(match.group(1), 8)
    return _umask_by_setting()


@functools.lru_cache(maxsize=1)
def _umask_by_setting() -> int:
    umask = os.umask(0o22)
    os.umask(umask)
    return umask


def check_output_path(path: PathLike, folder: bool = False) -> Path:
    """``path`` as an output that can be written: a file output must not name an existing folder, a
    folder output not an existing file, and no folder above it may be a file. Checked before any work,
    so the work is not lost at the end."""
    path = Path(path)
    with writing(path):
        if not folder and path.is_dir():
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
        if folder and path.exists() and not path.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(path))
        existing = next((p for p in path.expanduser().absolute().parents if p.exists()), None)
        if existing is not None and not existing.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(path))
    return path


def require_free_space(path: PathLike, needed: int, what: str) -> None:
    """Raise :class:`OutputError` (ENOSPC) when the file system of ``path`` (or of its nearest existing
    parent) has less than ``needed`` bytes free for ``what``: a long job then stops before it starts,
    not when it first writes."""
    folder = Path(path).expanduser().absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise OutputError(f'cannot write {path}: {what} needs about {needed / 2 ** 20:.0f} MiB and only '
                          f'{free / 2 ** 20:.0f} MiB are free there; free some space or choose another output folder',
                          errno.ENOSPC)


def _fsync(path: PathLike, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (getattr(os, 'O_DIRECTORY', 0) if directory else 0))
    try:
        os.fsync(fd)
    except OSError:
        if not directory:  # some file systems cannot sync a directory; the data files are synced
            raise
    finally:
        os.close(fd)


def _publish(tmp: PathLike, path: Path) -> None:
    """Give the temporary file the permissions a plain ``open()`` would have (``mkstemp`` makes it
    owner-only), then rename it onto ``path``."""
    os.chmod(tmp, 0o666 & ~current_umask())
    os.replace(tmp, path)


@contextlib.contextmanager
def atomic_write(path: PathLike, mode: str = 'wb') -> Iterator[Any]:
    """Open a temporary sibling of ``path`` for writing; rename it onto ``path`` on success.

    Yields a file object (``mode`` 'w' or 'wb'). On an exception the temporary file is removed
    and ``path`` is left untouched.
    """
    if mode not in ('w', 'wb'):
        raise ValueError(f"atomic_write mode must be 'w' or 'wb', got {mode!r}")
    with atomic_path(path) as tmp, open(tmp, mode) as f:
        yield f


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path`` for writers that take a file name
    (``safetensors.torch.save_file``, ``torch.save``, ``PIL.Image.save``); on success it is synced
    and renamed onto ``path``, on failure removed."""
    path = check_output_path(path)
    tmp = None
    with writing(path):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f'.{path.name}.', suffix=path.suffix or '.tmp', dir=path.parent)
            os.close(fd)
            yield Path(tmp)
            _fsync(tmp)
            _publish(tmp, path)
        except BaseException:
            if tmp is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
            raise


def atomic_save_json(obj: Any, path: PathLike, indent: int = 2) -> None:
    """Write ``obj`` as JSON to ``path`` atomically."""
    with atomic_write(path, 'w') as f:
        json.dump(obj, f, indent=indent, sort_keys=False)
        f.write('\n')


def _aside(path: Path) -> Path:
    return path.with_name(f'.{path.name}.old')


def _staging(path: Path) -> Path:
    return path.with_name(f'.{path.name}.new')


def readable_folder(path: PathLike) -> Path:
    """The folder a reader reads for ``path``: ``path`` itself, or the old folder an :func:`atomic_folder`
    swap has put aside while ``path`` is missing (the swap is under way, or was interrupted). Moves nothing."""
    path = Path(path)
    aside = _aside(path)
    return aside if not path.exists() and aside.is_dir() else path


def recover_folder(path: PathLike) -> Path:
    """Finish an interrupted :func:`atomic_folder` swap of ``path``: the old folder put aside comes
    back if the new one never arrived; once the new one is in place, the old one is deleted. For
    writers only (before they write ``path``); readers use :func:`readable_folder`."""
    path = Path(path)
    aside = _aside(path)
    if aside.exists():
        if path.exists():
            shutil.rmtree(aside)
        else:
            os.replace(aside, path)
    return path


def _sync_tree(folder: Path) -> None:
    for parent, _, files in os.walk(folder):
        for name in files:
            if not os.path.islink(os.path.join(parent, name)):
                _fsync(os.path.join(parent, name))
        _fsync(parent, directory=True)


@contextlib.contextmanager
def atomic_folder(path: PathLike) -> Iterator[Path]:
    """Yield an empty staging folder beside ``path``; when the block succeeds, its files are synced and
    it replaces ``path`` (old folder aside, new one in, old one deleted). On an exception the staging
    folder is removed and ``path`` is untouched. A crash at any point leaves the old or the new
    folder complete (after :func:`recover_folder`)."""
    path = check_output_path(path, folder=True)
    staging = _staging(path)
    with writing(path):
        recover_folder(path)
        shutil.rmtree(staging, ignore_errors=True)  # a staging folder left by a killed writer
        staging.mkdir(parents=True)
        try:
            yield staging
            _sync_tree(staging)
            if path.exists():
                os.replace(path, _aside(path))
            os.replace(staging, path)
            _fsync(path.parent, directory=True)
        except OutputError as e:  # named as the user knows it, not by its hidden staging name
            shutil.rmtree(staging, ignore_errors=True)
            raise OutputError(str(e).replace(str(staging), str(path)), e.errno) from e
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        recover_folder(path)  # deletes the old folder, now that the new one is in place
