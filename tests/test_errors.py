"""The error contract: a problem the user can fix is one ``error:`` line naming the file, exit status 2;
a bug keeps its traceback (exit status 1); ``--debug`` / ``PTL_TIMM_DEBUG=1`` show the traceback of
user errors too; failures of the world (unwritable output, truncated files, huge images) are user errors."""
import errno
import json
import os
import re
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from PIL import Image

from ptl_timm import errors
from ptl_timm.cli import main
from ptl_timm.data.loader import CorruptImageError, read_image
from ptl_timm.errors import CorruptFileError, OutputError, PTLError
from ptl_timm.utils import atomic_save_json

_BUG = """
import sys
import ptl_timm.cli.info as info
def run(args):
    raise {error}
info.run = run
from ptl_timm.cli import main
sys.exit(main(['info']))
"""


def _cli(code: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != errors.DEBUG_ENV}
    return subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, env=env)


@pytest.mark.slow
def test_a_bug_keeps_its_traceback_and_exit_1_through_the_interpreter():
    """Through the interpreter, as a user runs it (a user's error there: test_cli's ``python -m`` test; the fast
    lane checks more kinds of bug and of user error in-process below)."""
    bug = _cli(_BUG.format(error="RuntimeError('mat1 and mat2 shapes cannot be multiplied')"))
    assert bug.returncode == 1 and 'Traceback' in bug.stderr and 'RuntimeError: mat1 and mat2' in bug.stderr


@pytest.mark.parametrize('bug', [KeyError('internal'), RuntimeError('mat1 and mat2 shapes cannot be multiplied'),
                                 ValueError('a bug, not a user error'), FileNotFoundError('an internal file')])
def test_exceptions_that_are_not_user_errors_escape_main(monkeypatch, bug):
    """Before the contract, main() turned every ValueError/KeyError/RuntimeError into an 'error:' line."""
    import ptl_timm.cli.info as info

    def failing(args):
        raise bug
    monkeypatch.setattr(info, 'run', failing)
    with pytest.raises(type(bug)):
        main(['info'])


def test_debug_flag_and_environment_show_the_traceback_of_user_errors(capsys, monkeypatch):
    import ptl_timm.cli.info as info

    def failing(args):
        raise errors.DatasetError('market1501: no images')
    monkeypatch.setattr(info, 'run', failing)
    monkeypatch.delenv(errors.DEBUG_ENV, raising=False)
    assert main(['info']) == 2
    assert 'Traceback' not in capsys.readouterr().err
    assert main(['--debug', 'info']) == 2
    err = capsys.readouterr().err
    assert 'Traceback' in err and err.endswith('ptl-timm info: error: market1501: no images\n')
    monkeypatch.setenv(errors.DEBUG_ENV, '1')
    assert main(['info']) == 2
    assert 'Traceback' in capsys.readouterr().err


def test_every_user_error_class_is_a_ptl_error_and_keeps_its_builtin_base():
    assert issubclass(errors.ConfigError, ValueError) and issubclass(errors.DatasetNotFoundError, FileNotFoundError)
    assert issubclass(errors.MissingExtraError, RuntimeError) and issubclass(errors.OutputError, OSError)
    for name in errors.__all__:
        value = getattr(errors, name)
        if isinstance(value, type):
            assert issubclass(value, PTLError), name
    from ptl_timm.engine.checkpoint import CheckpointError
    from ptl_timm.engine.config import ConfigError
    from ptl_timm.hub.export import MissingExtraError
    from ptl_timm.hub.publish import PublishError
    from ptl_timm.hub.pretrained import ManifestError, UnpublishedWeightsError
    for cls in (CheckpointError, ConfigError, MissingExtraError, PublishError, ManifestError, UnpublishedWeightsError,
                CorruptImageError):
        assert issubclass(cls, PTLError), cls


def test_unwritable_output_is_one_line_naming_the_folder(tmp_path, monkeypatch, capsys):
    """A read-only file system (EROFS when the finished dataset is renamed into place) through a real
    command: exit 2, one line naming the folder asked for, no staging folder left."""
    real_replace = os.replace

    def read_only(src, dst, *args, **kwargs):
        if str(dst).endswith('street'):
            raise OSError(errno.EROFS, 'Read-only file system')
        return real_replace(src, dst, *args, **kwargs)
    monkeypatch.setattr(os, 'replace', read_only)
    assert main(['synth', '--data-root', str(tmp_path / 'street'), '--num-ids', '2', '--images-per-id', '2',
                 '--num-cams', '2', '--img-size', '16', '8', '--quiet']) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [f'ptl-timm synth: error: cannot write {tmp_path / "street"}: the file system is read-only; '
                   f'choose an output folder you can write to']
    assert list(tmp_path.iterdir()) == []


def test_full_disk_names_the_file_and_the_free_space(tmp_path, monkeypatch):
    def full(fd):
        raise OSError(errno.ENOSPC, 'No space left on device')
    monkeypatch.setattr(os, 'fsync', full)
    expected = r'cannot write .*x\.json: no space left on the device \(\d+ MiB free there\)'
    with pytest.raises(OutputError, match=expected):
        atomic_save_json({}, tmp_path / 'x.json')
    assert list(tmp_path.iterdir()) == []


def test_huge_image_is_a_corrupt_image_error_naming_the_file(tmp_path, monkeypatch):
    path = tmp_path / 'big.png'
    Image.new('RGB', (64, 64)).save(path)
    monkeypatch.setattr(Image, 'MAX_IMAGE_PIXELS', 100)  # 64×64 is then a "decompression bomb"
    with pytest.raises(CorruptImageError, match=r'big\.png.*resize the image'):
        read_image(str(path))


@pytest.mark.parametrize('source', [zipfile.BadZipFile('File is not a zip file'),
                                    json.JSONDecodeError('Expecting value', '{', 1), EOFError('truncated')])
def test_reading_turns_decoding_errors_into_corrupt_file_errors(tmp_path, source):
    with pytest.raises(CorruptFileError, match=r'cannot read features file .*f\.npz: .*; re-run extract'):
        with errors.reading(tmp_path / 'f.npz', 'features file', 're-run extract'):
            raise source


def test_reading_keeps_program_errors(tmp_path):
    with pytest.raises(KeyError):
        with errors.reading(tmp_path / 'f.npz'):
            raise KeyError('bug')


def _model_folder(tmp_path):
    import timm
    from ptl_timm.hub import save_pretrained
    folder = tmp_path / 'model'
    save_pretrained(timm.create_model('reid_net', backbone='test_resnet', num_classes=4), folder)
    return folder


def _truncate(path, keep: int = 100) -> None:
    path.write_bytes(path.read_bytes()[:keep])


@pytest.mark.parametrize('broken, expected', [
    ('model.safetensors', r'cannot read model weights .*model\.safetensors'),
    ('config.json', r'cannot read model config .*config\.json'),
])
def test_truncated_checkpoint_files_are_user_errors(tmp_path, capsys, broken, expected):
    folder = _model_folder(tmp_path)
    _truncate(folder / broken, 40)
    images = tmp_path / 'images'
    images.mkdir()
    Image.new('RGB', (16, 32)).save(images / 'a.png')
    code = main(['extract', '--model', str(folder), '--folder', str(images), '--output', str(tmp_path / 'f.npz'),
                 '--quiet', '--device', 'cpu'])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert re.search(expected, err), err


def test_truncated_features_file_is_a_user_error(tmp_path, capsys):
    path = tmp_path / 'f.npz'
    np.savez(path, **{'query.feats': np.zeros((2, 4), np.float32)})
    _truncate(path, 60)
    code = main(['eval', '--features', str(path)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and str(path) in err, err
