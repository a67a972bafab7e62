"""Crash-safe replace (ptl_timm.utils.io): a writer SIGKILLed at any file-system step leaves the old or
the new output complete (after the recover step), failures leave no staging files, and write errors
of the machine become one-line user errors naming the file. The same kill at every step for the gallery
index's writes (ptl_timm.index.store)."""
import errno
import hashlib
import json
import os
import signal
import sys
from pathlib import Path
from typing import Callable, Dict

import pytest
import torch

from ptl_timm.data.synth import generate_synthetic
from ptl_timm.errors import OutputError, PTLError
from ptl_timm.eval.retrieval import faiss_available
from ptl_timm.index import ImageIndex
from ptl_timm.index.store import LOCK_NAME, SHARD_DIR, open_snapshot, writer as index_writer
from ptl_timm.utils import (
    atomic_folder, atomic_path, atomic_save_json, check_output_path, current_umask, recover_folder)

# every file-system call a replace makes; the child process is killed at the n-th one
_STEPS = (
    (os, 'replace'), (os, 'rename'), (os, 'unlink'), (os, 'rmdir'), (os, 'mkdir'), (os, 'fsync'), (os, 'open'),
    (os, 'link'), (os, 'close'),
)


def _tree(folder: Path) -> Dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob('*')) if p.is_file()}


def _run_killed_at(step: int, work: Callable[[], None]) -> bool:
    """Run ``work`` in a forked child that SIGKILLs itself at its ``step``-th file-system call;
    True if it was killed (False: it finished before reaching that step)."""
    pid = os.fork()
    if pid == 0:  # child: never returns to pytest
        calls = [0]

        def killing(function):
            def wrapper(*args, **kwargs):
                calls[0] += 1
                if calls[0] == step:
                    os.kill(os.getpid(), signal.SIGKILL)
                return function(*args, **kwargs)
            return wrapper
        try:
            for module, name in _STEPS:
                setattr(module, name, killing(getattr(module, name)))
            work()
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    return os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL


def _write_tree(folder: Path, files: Dict[str, str]) -> None:
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)


def _kill_at_every_step(tmp_path: Path, write_old: Callable[[Path], None], write_new: Callable[[Path], None],
                        target_name: str) -> int:
    """Kill ``write_new`` at each of its steps over a target holding ``write_old``'s output; after the
    recover step the target is exactly the old or the new output. Returns the number of steps."""
    reference_old, reference_new = tmp_path / 'ref_old', tmp_path / 'ref_new'
    write_old(reference_old)
    write_new(reference_new)
    old_tree = _tree(reference_old / target_name)
    new_tree = _tree(reference_new / target_name)
    assert old_tree != new_tree
    step, seen = 0, set()
    while True:
        step += 1
        root = tmp_path / f'run{step}'
        write_old(root)
        if not _run_killed_at(step, lambda: write_new(root)):
            break
        found = _tree(recover_folder(root / target_name))
        assert found in (old_tree, new_tree), f'killed at step {step}: neither the old nor the new output'
        seen.add('new' if found == new_tree else 'old')
        leftovers = sorted(p.name for p in root.iterdir() if p.name != target_name and not p.name.endswith('.new'))
        assert not leftovers, f'killed at step {step}: {leftovers} besides the output after recovery'
    assert _tree(root / target_name) == new_tree
    assert seen == {'old', 'new'}, 'the kills fell on both sides of the swap'
    return step


def test_folder_replace_killed_at_each_step_leaves_old_or_new_complete(tmp_path):
    def writer(files: Dict[str, str]) -> Callable[[Path], None]:
        def write(root: Path) -> None:
            with atomic_folder(root / 'out') as staging:
                _write_tree(staging, files)
        return write
    steps = _kill_at_every_step(tmp_path, writer({'a.txt': 'old a', 'sub/b.txt': 'old b'}),
                                writer({'a.txt': 'new a', 'sub/c.txt': 'new c', 'd.txt': 'new d'}), 'out')
    assert steps > 10


@pytest.mark.slow
def test_synth_regeneration_killed_at_each_step_is_never_accepted_half_written(tmp_path):
    """The reported case: a regeneration killed while the old folder is deleted must not leave a folder
    whose marker makes a rerun accept it; after a kill, a rerun returns the old or new dataset whole."""
    small = dict(num_ids=4, images_per_id=2, num_cams=2, img_size=(16, 8))

    def generate(seed: int) -> Callable[[Path], None]:
        return lambda root: generate_synthetic(root, 'street', seed=seed, **small)
    steps = _kill_at_every_step(tmp_path, generate(0), generate(1), 'street')
    assert steps > 20
    # a rerun after a kill in the middle accepts only a complete folder (old or new) and completes the job
    killed = tmp_path / 'rerun'
    generate(0)(killed)
    assert _run_killed_at(steps // 2, lambda: generate(1)(killed))
    assert _tree(generate_synthetic(killed, 'street', seed=1, **small)) == _tree(tmp_path / 'ref_new' / 'street')


def _index_content(folder: Path) -> Dict[str, tuple]:
    """What a reader of a gallery index sees: each image's identity, camera and stored embedding."""
    with open_snapshot(folder) as snapshot:
        embedding = {}
        for shard in snapshot.shards:
            tensors = shard.read(snapshot.dim, snapshot.dtype)
            embedding.update(zip(tensors['ids'].tolist(), tensors['embeddings'].tolist()))
        rows = snapshot.db.execute('SELECT id, path, identity, camera FROM images').fetchall()
    assert len(rows) == len(embedding), 'metadata and shards disagree'
    return {path: (identity, camera, tuple(embedding[i])) for i, path, identity, camera in rows}


_INDEX = dict(model=dict(source='synthetic', architecture='none', embedding_dim=4, probe=[]),
              preprocessing=dict(input_size=[3, 8, 4], interpolation='bilinear', mean=[0.5] * 3, std=[0.5] * 3,
                                 crop_pct=1.0, crop_mode='squash', flip=False))


@pytest.mark.slow  # about 30 steps, each a new index and a forked writer
@pytest.mark.parametrize('operation, faiss', [('add', False), ('remove', False), ('add', True)])
def test_index_write_killed_at_each_step_leaves_the_index_as_before_or_after(tmp_path, operation, faiss):
    """A gallery index add/remove SIGKILLed at any file-system step: a reader sees the index exactly as
    before or after, never mixed; the next writer removes what the killed one left and works."""
    if faiss and not faiss_available():
        pytest.skip('faiss is an optional extra')
    feats = torch.nn.functional.normalize(torch.randn(16, 4, generator=torch.Generator().manual_seed(0)), dim=1)

    def base(folder: Path) -> None:
        ImageIndex.create(folder, _INDEX, rows_per_shard=4, faiss=faiss).add_embeddings(
            feats[:10], [f'/g/{i}.jpg' for i in range(10)], [str(i % 3) for i in range(10)], ['c1'] * 10)

    def write(folder: Path) -> None:
        if operation == 'add':
            ImageIndex(folder).add_embeddings(feats[10:], [f'/g/{i}.jpg' for i in range(10, 16)], cameras=['c2'] * 6)
        else:
            ImageIndex(folder).remove(identities=['1'])
    base(tmp_path / 'ref')
    before = _index_content(tmp_path / 'ref')
    write(tmp_path / 'ref')
    after = _index_content(tmp_path / 'ref')
    assert before != after
    step, seen = 0, set()
    while True:
        step += 1
        root = tmp_path / f'run{step}'
        base(root)
        killed = _run_killed_at(step, lambda: write(root))
        found = _index_content(root)
        if not killed:
            assert found == after
            break
        assert found in (before, after), f'killed at step {step}: neither the old nor the new index'
        seen.add('after' if found == after else 'before')
        if found == before:
            write(root)
        else:
            with index_writer(root):  # a writer with nothing to change still cleans up
                pass
        assert _index_content(root) == after
        named = {p.name for p in (root / SHARD_DIR).iterdir()}
        with open_snapshot(root) as snapshot:
            assert named == {s.path.name for s in snapshot.shards}, f'killed at step {step}: stray shards {named}'
            expected = {'index.json', 'CURRENT', f'meta-{snapshot.generation:06d}.sqlite', SHARD_DIR, LOCK_NAME,
                        snapshot.state('faiss_file')}
        assert set(os.listdir(root)) <= expected, f'killed at step {step}: stray files {set(os.listdir(root)) - expected}'
    assert seen == {'before', 'after'} and step > 15, step


def test_failed_folder_write_leaves_the_old_folder_and_no_staging(tmp_path):
    target = tmp_path / 'out'
    with atomic_folder(target) as staging:
        (staging / 'old.txt').write_text('old')
    with pytest.raises(KeyError):
        with atomic_folder(target) as staging:
            (staging / 'new.txt').write_text('new')
            raise KeyError('the writer failed')
    assert sorted(p.name for p in tmp_path.iterdir()) == ['out']
    assert _tree(target) == {'old.txt': hashlib.sha256(b'old').hexdigest()}


def test_recover_folder_puts_back_the_old_folder_or_drops_it_once_the_new_one_is_in(tmp_path):
    (tmp_path / '.out.old').mkdir()
    (tmp_path / '.out.old' / 'x').write_text('old')
    assert (recover_folder(tmp_path / 'out') / 'x').read_text() == 'old'
    (tmp_path / '.out.old').mkdir()
    recover_folder(tmp_path / 'out')
    assert sorted(p.name for p in tmp_path.iterdir()) == ['out']


@pytest.mark.skipif(os.geteuid() == 0, reason='root writes into read-only folders')
def test_read_only_output_is_a_user_error_naming_the_file(tmp_path):
    tmp_path.chmod(0o555)
    try:
        with pytest.raises(OutputError, match=r'cannot write .*out\.json: permission denied'):
            atomic_save_json({}, tmp_path / 'out.json')
        with pytest.raises(OutputError, match=r'cannot write .*/d: permission denied'):
            with atomic_folder(tmp_path / 'd'):
                pass
    finally:
        tmp_path.chmod(0o755)


@pytest.mark.parametrize('output', ['afile/x.json', 'afile/deeper/x.json'])
def test_an_output_below_a_file_is_refused_before_any_work_naming_it(tmp_path, output):
    (tmp_path / 'afile').write_text('not a folder')
    with pytest.raises(OutputError, match=r'cannot write .*x\.json: it, or a folder above it, is a file'):
        check_output_path(tmp_path / output)
    with pytest.raises(OutputError, match='a folder above it, is a file'):
        atomic_save_json({}, tmp_path / output)
    assert (tmp_path / 'afile').read_text() == 'not a folder'


@pytest.mark.parametrize('error', [
    OSError(errno.ENOSPC, 'No space left on device'),
    OSError(errno.EROFS, 'Read-only file system'),
    RuntimeError('[enforce fail at inline_container.cc:778] . PytorchStreamWriter failed writing file data/0: '
                 'file write failed'),
    RuntimeError('unexpected pos 1125760 vs 1125648'),
])
def test_machine_write_failures_become_output_errors_and_leave_nothing(tmp_path, error):
    with pytest.raises(OutputError) as caught:
        with atomic_path(tmp_path / 'model.pt') as tmp:
            tmp.write_bytes(b'half')
            raise error
    assert str(tmp_path / 'model.pt') in str(caught.value) and '\n' not in str(caught.value)
    assert isinstance(caught.value, PTLError) and isinstance(caught.value, OSError)
    assert list(tmp_path.iterdir()) == []


def test_program_errors_inside_a_write_stay_what_they_are(tmp_path):
    with pytest.raises(RuntimeError, match='shape mismatch'):
        with atomic_path(tmp_path / 'x.pt'):
            raise RuntimeError('shape mismatch')
    with pytest.raises(FileNotFoundError):
        with atomic_path(tmp_path / 'x.pt'):
            raise FileNotFoundError(errno.ENOENT, 'gone')
    assert list(tmp_path.iterdir()) == []


def test_umask_is_read_without_changing_it(tmp_path, monkeypatch):
    """``os.umask`` is only readable by setting it (a race with other threads): the writers never call it."""
    calls = []
    monkeypatch.setattr(os, 'umask', lambda mask: calls.append(mask) or 0o22)
    atomic_save_json({'a': 1}, tmp_path / 'x.json')
    with atomic_folder(tmp_path / 'd') as staging:
        (staging / 'f').write_text('f')
    assert calls == [] and json.loads((tmp_path / 'x.json').read_text()) == {'a': 1}
    assert (tmp_path / 'x.json').stat().st_mode & 0o777 == 0o666 & ~current_umask()


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='/proc')
def test_umask_from_proc_matches_the_process(tmp_path):
    previous = os.umask(0o27)
    try:
        assert current_umask() == 0o27
    finally:
        os.umask(previous)
