"""The one error contract: every problem a user can fix is a :class:`PTLError`.

The command line prints a ``PTLError`` as one ``error:`` line and exits with status 2; any other
exception is a bug and keeps its traceback (exit 1), so bugs stay visible. ``--debug`` or
``PTL_TIMM_DEBUG=1`` shows the traceback of user errors too.

Each subclass also derives from the built-in exception older code caught (``ValueError``,
``FileNotFoundError``, ``OSError``, ``RuntimeError``), so ``except ValueError`` keeps working.

Failures of the world (a full disk, a read-only folder, a truncated download) become user errors
naming the file at the helper that reads or writes it: :func:`writing` and :func:`reading`.
"""
import contextlib
import errno
import json
import os
import shutil
import zipfile
from typing import Iterator, Union  # a path is Union[str, os.PathLike] here: ptl_timm.utils.PathLike sits above

__all__ = [
    'PTLError', 'InputError', 'ConfigError', 'DatasetError', 'DatasetNotFoundError', 'DatasetFormatError',
    'CheckpointError', 'ManifestError', 'PublishError', 'MissingExtraError', 'OutputError', 'CorruptFileError',
    'DEBUG_ENV', 'reading', 'writing',
]

DEBUG_ENV = 'PTL_TIMM_DEBUG'


class PTLError(Exception):
    """A problem the user can fix: the message says what, where and how."""


class InputError(PTLError, ValueError):
    """A bad argument or flag value not covered by a more specific class."""


class ConfigError(PTLError, ValueError):
    """A configuration that cannot be trained with (unknown key, bad value, missing field)."""


class DatasetError(PTLError, ValueError):
    """A dataset that cannot be used as given."""


class DatasetNotFoundError(DatasetError, FileNotFoundError):
    """A dataset root, split folder, list file or image is missing."""


class DatasetFormatError(DatasetError):
    """A dataset's files are there but cannot be read as the layout: bad names, lines or empty splits."""


class CheckpointError(PTLError, ValueError):
    """A checkpoint that cannot be used here (wrong architecture, incomplete folder)."""


class ManifestError(PTLError, ValueError):
    """The weights manifest is malformed, or names weights that are not published."""


class PublishError(PTLError, ValueError):
    """A checkpoint that must not be published as it is, or an output that must not be replaced."""


class MissingExtraError(PTLError, RuntimeError):
    """An optional dependency of the requested feature is not installed."""


class OutputError(PTLError, OSError):
    """An output cannot be written: read-only folder, no permission, full disk."""

    def __init__(self, message: str, code: int = errno.EIO) -> None:
        super().__init__(message)
        self.errno = code  # one-argument OSError: the message prints alone, the code is still there


class CorruptFileError(PTLError, ValueError):
    """A file is there but cannot be read: truncated, not the expected format, too large to decode."""


# OSError numbers that are the world's fault rather than the program's
_OUTPUT_ERRNOS = {
    errno.ENOSPC: 'no space left on the device', errno.EROFS: 'the file system is read-only',
    errno.EACCES: 'permission denied', errno.EPERM: 'operation not permitted', errno.EDQUOT: 'disk quota exceeded',
}
# what torch.save / PytorchStreamWriter says when a write fails half-way (typically a full disk)
_TORCH_WRITE_FAILURES = ('unexpected pos', 'PytorchStreamWriter failed', 'file write failed')


def _free_space(path: Union[str, os.PathLike]) -> str:
    folder = os.path.dirname(os.path.abspath(path))
    while folder and not os.path.isdir(folder):
        folder = os.path.dirname(folder)
    with contextlib.suppress(OSError):
        return f'{shutil.disk_usage(folder).free / 2 ** 20:.0f} MiB free there'
    return 'free space unknown'


@contextlib.contextmanager
def writing(path: Union[str, os.PathLike]) -> Iterator[None]:
    """Turn a failed write of ``path`` caused by the machine (full disk, read-only or foreign folder,
    a ``torch.save`` that stopped half-way) into an :class:`OutputError` naming the file."""
    try:
        yield
    except OutputError:
        raise
    except OSError as e:
        if e.errno not in _OUTPUT_ERRNOS:
            raise
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            reason = f'{_OUTPUT_ERRNOS[e.errno]} ({_free_space(path)}); free some space or choose another output folder'
        else:
            reason = f'{_OUTPUT_ERRNOS[e.errno]}; choose an output folder you can write to'
        raise OutputError(f'cannot write {path}: {reason}', e.errno) from e
    except RuntimeError as e:
        if not any(text in str(e) for text in _TORCH_WRITE_FAILURES):
            raise
        raise OutputError(f'cannot write {path}: the write stopped half-way, most likely a full disk '
                          f'({_free_space(path)}); free some space or choose another output folder') from e


def _corrupt_types() -> tuple:
    """Decoding errors of the formats the project reads; the optional libraries' only when installed."""
    types = [zipfile.BadZipFile, json.JSONDecodeError, EOFError, UnicodeDecodeError]
    with contextlib.suppress(ImportError):
        from safetensors import SafetensorError
        types.append(SafetensorError)
    with contextlib.suppress(ImportError):
        from PIL import Image, UnidentifiedImageError
        types += [Image.DecompressionBombError, UnidentifiedImageError]
    return tuple(types)


@contextlib.contextmanager
def reading(path: Union[str, os.PathLike], what: str = 'file',
            fix: str = 'replace or re-download it') -> Iterator[None]:
    """Turn an undecodable ``path`` (truncated ``.safetensors`` / ``.npz``, bad JSON, an image too large
    to decode safely) into a :class:`CorruptFileError` naming the file, what it is and ``fix``."""
    try:
        yield
    except PTLError:
        raise
    except _corrupt_types() as e:
        raise CorruptFileError(f'cannot read {what} {path}: {type(e).__name__}: {e}; {fix}') from e
