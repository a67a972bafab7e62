"""The one error contract: every problem a user can fix is a :class:`PTLError`.

The command line prints a ``PTLError`` as one ``error:`` line and exits with status 2; any other
exception is a bug and keeps its traceback (exit 1), so bugs stay visible. ``--debug`` or
``PTL_TIMM_DEBUG=1`` shows the traceback of user errors too.

Each subclass also derives from the built-in exception older code caught (``ValueError``,
``FileNotFoundError``, ``OSError``, ``RuntimeError``), so ``except ValueError`` keeps working.

Failures of the world (a full disk, a read-only folder, a truncated download, a file that is not
what it claims to be) become user errors naming the file at the helper that reads or writes it:
:func:`writing` and :func:`reading`. A user error raised in a data-loader worker process reaches the
user as its own one-line message (see :class:`PTLError`).
"""
import contextlib
import errno
import json
import os
import pickle
import re
import shutil
import zipfile
from typing import Iterator, Union  # a path is Union[str, os.PathLike] here: ptl_timm.utils.PathLike sits above

__all__ = [
    'PTLError', 'InputError', 'ConfigError', 'DatasetError', 'DatasetNotFoundError', 'DatasetFormatError',
    'CheckpointError', 'ManifestError', 'PublishError', 'MissingExtraError', 'OutputError', 'CorruptFileError',
    'NonFiniteError', 'DEBUG_ENV', 'reading', 'writing',
]

DEBUG_ENV = 'PTL_TIMM_DEBUG'


class PTLError(Exception):
    """A problem the user can fix: the message says what, where and how.

    torch's DataLoader re-raises an exception of a worker process as ``type(e)(text)``, ``text`` being
    "Caught ... in DataLoader worker process N" and the worker's whole traceback; a user error built
    that way keeps only the original message, so the user reads one line wherever it was raised.
    """

    def __init__(self, message: object = '', *args: object) -> None:
        super().__init__(_worker_message(message) if isinstance(message, str) else message, *args)


_WORKER_ERROR = re.compile(r'Caught \w+ in DataLoader worker process \d+\.\nOriginal Traceback')


def _worker_message(text: str) -> str:
    """The original message of a worker's formatted traceback (its last exception line, less the
    class name); any other text unchanged."""
    if not _WORKER_ERROR.match(text):
        return text
    lines = text.splitlines()
    last = max(i for i, line in enumerate(lines) if line.endswith('Traceback (most recent call last):'))
    rest = [line for line in lines[last + 1:] if line.strip()]
    while rest and rest[0].startswith(' '):  # the frames of the last traceback
        rest.pop(0)
    return re.sub(r'^[\w.]+: ', '', '\n'.join(rest), count=1) if rest else text


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
    """A file is there but cannot be read: truncated, not the expected format, too large to decode, or a
    pickle that is not weights-only (refused for safety)."""


class NonFiniteError(PTLError, ValueError):
    """A model gives NaN or Inf (weights of a diverged run): a result made of it would be meaningless."""


# OSError numbers that are the world's fault rather than the program's
_OUTPUT_ERRNOS = {
    errno.ENOSPC: 'no space left on the device', errno.EROFS: 'the file system is read-only',
    errno.EACCES: 'permission denied', errno.EPERM: 'operation not permitted', errno.EDQUOT: 'disk quota exceeded',
    errno.EFBIG: 'the file is larger than the file system or the file-size limit allows',
    errno.EISDIR: 'it is a folder; name a file', errno.ENOTDIR: 'it, or a folder above it, is a file; name a folder',
}
_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
# what torch.save / PytorchStreamWriter says when a write fails half-way (typically a full disk)
_TORCH_WRITE_FAILURES = ('unexpected pos', 'PytorchStreamWriter failed', 'file write failed')
# what torch.load / PytorchStreamReader says of a truncated or foreign file
_TORCH_READ_FAILURES = ('PytorchStreamReader failed', 'failed finding central directory', 'invalid header',
                        'unexpected EOF')
_OS_ERROR_CODE = re.compile(r'\(os error (\d+)\)')  # how safetensors (Rust) reports an I/O error


def _free_space(path: Union[str, os.PathLike]) -> str:
    folder = os.path.dirname(os.path.abspath(path))
    while folder and not os.path.isdir(folder):
        folder = os.path.dirname(folder)
    with contextlib.suppress(OSError):
        return f'{shutil.disk_usage(folder).free / 2 ** 20:.0f} MiB free there'
    return 'free space unknown'


def _output_error(path: Union[str, os.PathLike], code: int) -> OutputError:
    if code in _FULL:
        reason = f'{_OUTPUT_ERRNOS[code]} ({_free_space(path)}); free some space or choose another output folder'
    elif code in (errno.EISDIR, errno.ENOTDIR):
        reason = _OUTPUT_ERRNOS[code]
    else:
        reason = f'{_OUTPUT_ERRNOS[code]}; choose an output folder you can write to'
    return OutputError(f'cannot write {path}: {reason}', code)


def _safetensor_error() -> tuple:
    with contextlib.suppress(ImportError):
        from safetensors import SafetensorError
        return (SafetensorError,)
    return ()


@contextlib.contextmanager
def writing(path: Union[str, os.PathLike]) -> Iterator[None]:
    """Turn a failed write of ``path`` caused by the machine (full disk, read-only or foreign folder, a
    folder where a file goes, a ``torch.save`` or ``safetensors`` write that stopped half-way) into an
    :class:`OutputError` naming the file."""
    try:
        yield
    except OutputError:
        raise
    except OSError as e:
        if e.errno not in _OUTPUT_ERRNOS:
            raise
        raise _output_error(path, e.errno) from e
    except RuntimeError as e:
        if not any(text in str(e) for text in _TORCH_WRITE_FAILURES):
            raise
        raise OutputError(f'cannot write {path}: the write stopped half-way, most likely a full disk '
                          f'({_free_space(path)}); free some space or choose another output folder') from e
    except _safetensor_error() as e:
        code = _OS_ERROR_CODE.search(str(e))
        if code is None or int(code.group(1)) not in _OUTPUT_ERRNOS:
            raise
        raise _output_error(path, int(code.group(1))) from e


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
    """Turn an undecodable ``path`` (truncated ``.safetensors`` / ``.npz`` / ``torch.save`` file, bad
    JSON, an image too large to decode safely) into a :class:`CorruptFileError` naming the file, what it
    is and ``fix``. A pickle that ``torch.load(weights_only=True)`` refuses (it would run code) is said
    to be one, without torch's advice to load it unsafely."""
    try:
        yield
    except PTLError:
        raise
    except pickle.UnpicklingError:
        raise CorruptFileError(
            f'cannot read {what} {path}: it is not a weights-only checkpoint (refused for safety: it holds Python '
            f'objects that loading would run); {fix}') from None
    except _corrupt_types() as e:
        raise CorruptFileError(f'cannot read {what} {path}: {type(e).__name__}: {e}; {fix}') from e
    except RuntimeError as e:
        if not any(text in str(e) for text in _TORCH_READ_FAILURES):
            raise
        raise CorruptFileError(f'cannot read {what} {path}: {" ".join(str(e).split())}; {fix}') from e
