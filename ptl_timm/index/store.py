"""The on-disk format of a gallery index, and the one place that writes it.

::

    INDEX/
      index.json                 what the index is (written once, at build): the model it was built with
                                 (architecture, source, embedding width, probe embeddings), its preprocessing,
                                 the storage dtype and rows per shard
      CURRENT                    the name of the current generation's metadata file: the one pointer a writer swaps
      meta-000042.sqlite         generation 42's metadata (stdlib sqlite3): images (id, path, identity, camera,
                                 added, shard, position, content), shards (id, file, rows), cameras (code, name),
                                 state
      shards/s000003-g000042.safetensors   one shard: embeddings (rows × dim), ids and camera codes of its rows
      faiss-000042.index         optional approximate index (faiss) of the same generation
      .lock                      held by the one writer

Copy on write. A writer never changes a file a reader may read: it writes new shard files (a shard it changes
gets a new file, named by the generation that wrote it), a new metadata file (a copy of the current one,
changed, synced, renamed into place), then replaces ``CURRENT`` atomically. A kill at any point leaves
``CURRENT`` naming the old generation, whose files are untouched, or the new one, complete: the index is as
before or after, never mixed. The files the current generation does not name (a killed writer's, or the
previous generation's) are deleted by the writer that made them, or else by the next writer; readers ignore them.

Readers never write: they read ``CURRENT``, open that generation's metadata read-only and immutable
(SQLite creates no journal or lock file) and open its shard files up front, so a writer that deletes them
afterwards changes nothing for the reader (a snapshot that vanished before it was opened is read again).

One writer at a time: the writer holds ``.lock`` with ``filelock`` (an ``flock``, which the kernel releases
when the process dies, so a killed writer leaves no stale lock); a second writer is refused at once.

A build writes ``index.json`` and generation 0, then ``CURRENT``: killed before ``CURRENT``, it leaves a folder
no reader opens and the next build takes over (under the lock). A build that fails later deletes what it made
(:func:`discard`: files of ours only, and only folders it created).

``images.content`` is what identified an image file's content when it was embedded (the index part decides
what: size and modification time), so that adding the file again after it changed replaces its entry. Indexes
written before the column existed lack it: readers take their content as unknown, and the next writer adds
the column (empty: those entries count as unchanged).

Each shard holds at most ``rows_per_shard`` rows, every one a live image: ``add`` fills the last shard (a new
file with its rows and the new ones) and opens new shards; ``remove`` rewrites the shards it touches without
the removed rows. Shards are read through a private memory map (no copy; the pages stay in the OS cache, not
in the process, so a query's resident memory is about one shard).

Embeddings are stored as float32 by default: exactly the model's output, and scored straight from the mapped
pages. ``float16`` halves the disk and the OS cache a gallery needs (a 1M × 512 gallery is 1 GB instead of
2 GB), but a CPU cannot score float16 exactly without widening it to float32 first (half-precision products
round every score to float16), which made queries about 5× slower on the 2-core machine measured
(``benchmarks/index_speed.py``); it also moves the stored vectors by ~1e-3, which can swap near-tied items.
"""
import contextlib
import json
import math
import mmap
import os
import re
import shutil
import sqlite3
import struct
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple

import safetensors.torch
import torch

from ptl_timm.errors import CorruptFileError, InputError, OutputError, PTLError, reading, writing
from ptl_timm.utils import PathLike, atomic_path, atomic_save_json, atomic_write

__all__ = [
    'MANIFEST_NAME', 'DTYPES', 'Snapshot', 'Shard', 'Writer', 'create', 'read_manifest', 'open_snapshot',
    'writer', 'is_index', 'check_new', 'discard', 'known_paths',
]

MANIFEST_NAME = 'index.json'
CURRENT_NAME = 'CURRENT'
LOCK_NAME = '.lock'
SHARD_DIR = 'shards'
FORMAT = 'ptl_timm.index'
VERSION = 1
DTYPES = {'float16': torch.float16, 'float32': torch.float32}
REBUILD = 'the index is damaged: build it again (ptl-timm index build)'
# files of ours a generation may name, or a writer may leave behind (temporary names start with a dot)
_OURS = re.compile(r'^(meta-\d+\.sqlite|\.meta-.*|faiss-\d+\.index|\.faiss-.*|\.CURRENT\..*|\.index\.json\..*)$')
_SCHEMA = """
CREATE TABLE images (id INTEGER PRIMARY KEY, path TEXT NOT NULL UNIQUE, identity TEXT, camera TEXT,
                     added TEXT NOT NULL, shard INTEGER NOT NULL, position INTEGER NOT NULL, content TEXT);
CREATE INDEX images_identity ON images (identity);
CREATE INDEX images_place ON images (shard, position);
CREATE TABLE shards (id INTEGER PRIMARY KEY, file TEXT NOT NULL, rows INTEGER NOT NULL);
CREATE TABLE cameras (code INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
CREATE TABLE state (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
_SAFETENSORS_DTYPES = {'F16': torch.float16, 'F32': torch.float32, 'I64': torch.int64, 'I32': torch.int32}


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec='seconds')


def is_index(folder: PathLike) -> bool:
    return (Path(folder) / MANIFEST_NAME).is_file()


def _unfinished(folder: Path) -> bool:
    """Whether ``folder`` holds our manifest but no ``CURRENT``: a build killed before it committed."""
    if not is_index(folder) or (folder / CURRENT_NAME).exists():
        return False
    try:
        read_manifest(folder)
    except PTLError:
        return False  # someone else's index.json: not ours to take over
    return True


def _refuse_committed(folder: Path) -> None:
    if is_index(folder) and (folder / CURRENT_NAME).exists():
        raise InputError(f'{folder} already holds an index: add images to it (ptl-timm index add), or delete the '
                         f'folder to build a new one')


def check_new(folder: PathLike) -> None:
    """Refuse to build in ``folder`` unless it is missing, empty, or the remains of a build that never committed."""
    folder = Path(folder)
    _refuse_committed(folder)
    if folder.exists() and not _unfinished(folder) and (not folder.is_dir() or any(folder.iterdir())):
        raise InputError(f'{folder} exists and is not empty: an index is built in a new or empty folder')


def read_manifest(folder: PathLike) -> Dict[str, Any]:
    folder = Path(folder)
    if not is_index(folder):
        raise InputError(f'{folder} is not a gallery index (it has no {MANIFEST_NAME}); build one with '
                          f'`ptl-timm index build --index {folder} ...`')
    with reading(folder / MANIFEST_NAME, what='index manifest', fix=REBUILD):
        manifest = json.loads((folder / MANIFEST_NAME).read_text())
    if not isinstance(manifest, dict) or manifest.get('format') != FORMAT:
        raise CorruptFileError(f'{folder / MANIFEST_NAME} is not a ptl_timm index manifest; {REBUILD}')
    if manifest.get('version') != VERSION:
        raise InputError(f'{folder} is an index of format version {manifest.get("version")}; this ptl_timm reads '
                          f'version {VERSION}: build it again with this version')
    return manifest


def _meta_name(generation: int) -> str:
    return f'meta-{generation:06d}.sqlite'


def _generation(name: str) -> int:
    match = re.fullmatch(r'meta-(\d+)\.sqlite', name)
    if match is None:
        raise CorruptFileError(f'{CURRENT_NAME} names {name!r}, not a metadata file; {REBUILD}')
    return int(match.group(1))


@contextlib.contextmanager
def _database(path: Path) -> Iterator[None]:
    """SQLite's errors on an undecodable file, as a one-line user error naming it."""
    try:
        yield
    except sqlite3.DatabaseError as e:
        if isinstance(e, sqlite3.OperationalError) and 'unable to open' in str(e):
            raise
        raise CorruptFileError(f'cannot read index metadata {path}: {e}; {REBUILD}') from e


@dataclass
class Shard:
    """A shard file of a snapshot, opened when the snapshot was taken."""
    id: int
    path: Path
    rows: int
    file: Any

    def read(self, dim: int, dtype: torch.dtype) -> Dict[str, torch.Tensor]:
        """``embeddings`` (rows × dim), ``ids`` (int64) and ``cameras`` (int32 codes, -1 unknown), checked
        against what the metadata records. The tensors view the file's mapped pages (a private mapping:
        nothing is copied and nothing can reach the file); they stay valid while referenced."""
        shapes = {'embeddings': ([self.rows, dim], dtype), 'ids': ([self.rows], torch.int64),
                  'cameras': ([self.rows], torch.int32)}
        try:
            mapped = mmap.mmap(self.file.fileno(), 0, access=mmap.ACCESS_COPY)
            (length,) = struct.unpack('<Q', mapped[:8])
            header = json.loads(mapped[8:8 + length])
            tensors = {}
            for name, (shape, expected) in shapes.items():
                entry = header[name]
                found = _SAFETENSORS_DTYPES.get(entry['dtype'])
                start, end = entry['data_offsets']
                if entry['shape'] != shape or found != expected or end - start != math.prod(shape) * expected.itemsize:
                    raise ValueError(f'{name} is {entry["dtype"]} {entry["shape"]}, the metadata records {expected} '
                                     f'{shape}')
                if 8 + length + end > len(mapped):
                    raise ValueError(f'the file ends before {name} (truncated)')
                tensors[name] = torch.frombuffer(mapped, dtype=expected, count=math.prod(shape),
                                                 offset=8 + length + start).reshape(shape)
        except (ValueError, KeyError, TypeError, struct.error, UnicodeDecodeError) as e:  # JSONDecodeError included
            raise CorruptFileError(f'cannot read index shard {self.path}: {e}; {REBUILD}') from None
        return tensors


class Snapshot:
    """One generation of an index, read-only: metadata (``db``) and opened shard files."""

    def __init__(self, folder: Path, manifest: Mapping[str, Any], generation: int, db: sqlite3.Connection,
                 shards: List[Shard]):
        self.folder, self.manifest, self.generation, self.db, self.shards = folder, manifest, generation, db, shards
        self.dim = int(manifest['model']['embedding_dim'])
        self.dtype = DTYPES[manifest['storage']['dtype']]

    def close(self) -> None:
        for shard in self.shards:
            shard.file.close()
        self.db.close()

    def __enter__(self) -> 'Snapshot':
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def state(self, key: str, default: Optional[str] = None) -> Optional[str]:
        row = self.db.execute('SELECT value FROM state WHERE key = ?', (key,)).fetchone()
        return default if row is None else row[0]

    def __len__(self) -> int:
        return sum(s.rows for s in self.shards)

    def camera_codes(self) -> Dict[str, int]:
        return dict(self.db.execute('SELECT name, code FROM cameras'))

    def images(self, ids: Iterable[int]) -> Dict[int, Dict[str, Any]]:
        """Metadata of the images ``ids``, by id."""
        ids = [int(i) for i in ids]
        found = {}
        for start in range(0, len(ids), 500):
            part = ids[start:start + 500]
            rows = self.db.execute(
                f'SELECT id, path, identity, camera, added, shard, position FROM images WHERE id IN '
                f'({",".join("?" * len(part))})', part)
            found.update({r[0]: dict(zip(('id', 'path', 'identity', 'camera', 'added', 'shard', 'position'), r))
                          for r in rows})
        return found


def _has_content(db: sqlite3.Connection) -> bool:
    return any(row[1] == 'content' for row in db.execute('PRAGMA table_info(images)'))


def known_paths(db: sqlite3.Connection, paths: Sequence[str]) -> Dict[str, Tuple[int, Optional[str]]]:
    """Id and recorded content (None: not recorded) of each of ``paths`` in the index, by path."""
    content = 'content' if _has_content(db) else 'NULL'
    found = {}
    for start in range(0, len(paths), 500):
        part = list(paths[start:start + 500])
        found.update((path, (image, recorded)) for path, image, recorded in db.execute(
            f'SELECT path, id, {content} FROM images WHERE path IN ({",".join("?" * len(part))})', part))
    return found


def _open_readonly(path: Path) -> sqlite3.Connection:
    if not path.is_file():
        raise FileNotFoundError(path)
    db = sqlite3.connect(f'file:{path}?mode=ro&immutable=1', uri=True)
    with _database(path):
        db.execute('SELECT count(*) FROM sqlite_master').fetchone()
    return db


def open_snapshot(folder: PathLike, manifest: Optional[Mapping[str, Any]] = None, attempts: int = 5) -> Snapshot:
    """The current generation of the index at ``folder``, with every shard file open."""
    folder = Path(folder)
    manifest = manifest or read_manifest(folder)
    for _ in range(attempts):
        with reading(folder / CURRENT_NAME, what='index pointer', fix=REBUILD):
            try:
                name = (folder / CURRENT_NAME).read_text().strip()
            except FileNotFoundError:
                raise InputError(f'{folder} holds an index whose build did not finish (no {CURRENT_NAME}): build it '
                                  f'again into the same folder (ptl-timm index build --index {folder}), which takes '
                                  f'it over') from None
        generation, files = _generation(name), []
        try:
            db = _open_readonly(folder / name)
            with _database(folder / name):
                rows = db.execute('SELECT id, file, rows FROM shards ORDER BY id').fetchall()
            for shard_id, file, count in rows:
                files.append(Shard(shard_id, folder / SHARD_DIR / file, count, open(folder / SHARD_DIR / file, 'rb')))
            return Snapshot(folder, manifest, generation, db, files)
        except (FileNotFoundError, sqlite3.OperationalError):
            for shard in files:
                shard.file.close()
            if (folder / CURRENT_NAME).read_text().strip() != name:
                continue  # a writer moved on meanwhile: read the new generation
            raise CorruptFileError(f'{folder}: a file of generation {generation} is missing; {REBUILD}') from None
    raise OutputError(f'{folder} changed {attempts} times while being opened: writers keep replacing it; try again')


def create(folder: PathLike, manifest: Mapping[str, Any]) -> None:
    """A new empty index at ``folder`` (:func:`check_new`, checked again under the writer lock): manifest,
    generation 0, then ``CURRENT``."""
    folder = Path(folder)
    check_new(folder)
    with writing(folder):
        (folder / SHARD_DIR).mkdir(parents=True, exist_ok=True)
    with _locked(folder):
        _refuse_committed(folder)  # another build may have committed meanwhile
        atomic_save_json(dict(manifest, format=FORMAT, version=VERSION), folder / MANIFEST_NAME)
        with atomic_path(folder / _meta_name(0)) as tmp:
            db = sqlite3.connect(tmp)
            db.executescript(_SCHEMA)
            db.executemany('INSERT INTO state VALUES (?, ?)', [('next_id', '0'), ('next_shard', '0')])
            db.commit()
            db.close()
        with atomic_write(folder / CURRENT_NAME, 'w') as f:
            f.write(_meta_name(0) + '\n')
        clean(folder)  # what a build taken over left


def discard(folder: PathLike, created: Sequence[Path] = ()) -> None:
    """Delete the index a failed build made in ``folder``: its files (ours only, never a user's), then
    ``shards/`` and the folders ``created`` (the build made them; deepest first) when they are empty."""
    folder = Path(folder)
    for path in [*(folder / SHARD_DIR).glob('*'), *folder.glob('*')]:  # dot files included
        if path.is_file() and (_ours(folder, path) or path.name in (MANIFEST_NAME, CURRENT_NAME, LOCK_NAME)):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
    for empty in (folder / SHARD_DIR, *created):
        with contextlib.suppress(OSError):
            empty.rmdir()


class Writer:
    """The next generation being written: ``db`` (a copy of the current metadata) and new shard files;
    nothing is visible to readers until :meth:`commit` swaps ``CURRENT``."""

    def __init__(self, snapshot: Snapshot):
        self.snapshot, self.folder = snapshot, snapshot.folder
        self.generation = snapshot.generation + 1
        self._meta_tmp = self.folder / f'.{_meta_name(self.generation)}.tmp'
        with writing(self._meta_tmp):
            shutil.copyfile(self.folder / _meta_name(snapshot.generation), self._meta_tmp)
        self.db = sqlite3.connect(self._meta_tmp, isolation_level=None)
        self.db.execute('PRAGMA journal_mode = OFF')  # not live until renamed: synced once, at commit
        self.db.execute('PRAGMA synchronous = OFF')
        self.db.execute('BEGIN')
        if not _has_content(self.db):  # written before contents were recorded (module notes)
            self.db.execute('ALTER TABLE images ADD COLUMN content TEXT')
        self.extra_files: List[str] = []

    def state(self, key: str, default: Optional[str] = None) -> Optional[str]:
        row = self.db.execute('SELECT value FROM state WHERE key = ?', (key,)).fetchone()
        return default if row is None else row[0]

    def set_state(self, key: str, value: Any) -> None:
        self.db.execute('INSERT OR REPLACE INTO state VALUES (?, ?)', (key, str(value)))

    def take_ids(self, count: int) -> torch.Tensor:
        """``count`` new image ids (never reused)."""
        start = int(self.state('next_id'))
        self.set_state('next_id', start + count)
        return torch.arange(start, start + count, dtype=torch.int64)

    def new_shard_id(self) -> int:
        shard = int(self.state('next_shard'))
        self.set_state('next_shard', shard + 1)
        return shard

    def camera_code(self, name: Optional[str]) -> int:
        if name is None:
            return -1
        row = self.db.execute('SELECT code FROM cameras WHERE name = ?', (name,)).fetchone()
        if row is not None:
            return row[0]
        code = self.db.execute('SELECT coalesce(max(code), -1) + 1 FROM cameras').fetchone()[0]
        self.db.execute('INSERT INTO cameras VALUES (?, ?)', (code, name))
        return code

    def write_shard(self, shard_id: int, embeddings: torch.Tensor, ids: torch.Tensor, cameras: torch.Tensor) -> None:
        """Write shard ``shard_id`` of this generation (a new file) and record it; its rows are
        ``embeddings`` in order, so ``images.position`` must follow (:meth:`place`)."""
        file = f's{shard_id:06d}-g{self.generation:06d}.safetensors'
        tensors = dict(embeddings=embeddings.contiguous(), ids=ids.to(torch.int64).contiguous(),
                       cameras=cameras.to(torch.int32).contiguous())
        with atomic_path(self.folder / SHARD_DIR / file) as tmp:
            safetensors.torch.save_file(tensors, str(tmp))
        self.db.execute('INSERT OR REPLACE INTO shards VALUES (?, ?, ?)', (shard_id, file, len(ids)))

    @contextlib.contextmanager
    def shards(self, ids: Optional[Iterable[int]] = None) -> Iterator[List[Shard]]:
        """The shards of the generation being written so far (``ids``: only those), open for reading in the block
        (one this generation rewrote is read in its new version)."""
        wanted = None if ids is None else set(ids)
        rows = [(i, self.folder / SHARD_DIR / file, n) for i, file, n in
                self.db.execute('SELECT id, file, rows FROM shards ORDER BY id') if wanted is None or i in wanted]
        with contextlib.ExitStack() as stack:
            yield [Shard(i, path, n, stack.enter_context(open(path, 'rb'))) for i, path, n in rows]

    def drop_shard(self, shard_id: int) -> None:
        self.db.execute('DELETE FROM shards WHERE id = ?', (shard_id,))

    def place(self, ids: torch.Tensor, shard_id: int) -> None:
        """Record that images ``ids`` are rows 0.. of shard ``shard_id`` (existing images)."""
        self.db.executemany('UPDATE images SET shard = ?, position = ? WHERE id = ?',
                            [(shard_id, row, int(i)) for row, i in enumerate(ids.tolist())])

    def commit(self) -> None:
        """Make this generation the current one: sync its metadata, rename it into place, swap ``CURRENT``;
        then delete what no generation names any more."""
        self.db.execute('COMMIT')
        self.db.close()
        meta = self.folder / _meta_name(self.generation)
        with writing(meta):
            fd = os.open(self._meta_tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(self._meta_tmp, meta)
        with atomic_write(self.folder / CURRENT_NAME, 'w') as f:
            f.write(meta.name + '\n')
        clean(self.folder)

    def abort(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self.db.close()
        clean(self.folder)


def _referenced(folder: Path) -> Tuple[str, set]:
    """The current metadata file and the files its generation names (shards, faiss)."""
    name = (folder / CURRENT_NAME).read_text().strip()
    db = _open_readonly(folder / name)
    try:
        shards = {row[0] for row in db.execute('SELECT file FROM shards')}
        faiss_file = db.execute("SELECT value FROM state WHERE key = 'faiss_file'").fetchone()
    finally:
        db.close()
    return name, shards | ({faiss_file[0]} if faiss_file else set())


def _ours(folder: Path, path: Path) -> bool:
    """Whether ``path`` (in ``folder`` or its shards) is a file a generation may name or a writer leave behind."""
    return bool(_OURS.match(path.name)) if path.parent == folder else path.suffix in ('.safetensors', '.tmp')


def clean(folder: PathLike) -> List[str]:
    """Delete the files of ours that the current generation does not name (writers only); returns them."""
    folder = Path(folder)
    current, named = _referenced(folder)
    named.add(current)
    removed = []
    for path in list(folder.iterdir()) + list((folder / SHARD_DIR).iterdir()):
        if path.is_file() and _ours(folder, path) and path.name not in named:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            removed.append(path.name)
    return removed


@contextlib.contextmanager
def writer(folder: PathLike) -> Iterator[Writer]:
    """Hold the index's writer lock and yield the next generation; it becomes current when the block
    succeeds, and is discarded (the index unchanged) when it raises."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    with _locked(folder), open_snapshot(folder, manifest) as snapshot:
        clean(folder)  # what a killed writer left
        pending = Writer(snapshot)
        try:
            yield pending
        except BaseException:
            pending.abort()
            raise
        pending.commit()


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """Hold the index's writer lock in the block; refused at once while another process holds it."""
    from filelock import FileLock, Timeout

    lock = FileLock(str(folder / LOCK_NAME), timeout=0)
    try:
        with writing(folder / LOCK_NAME):
            lock.acquire()
    except Timeout:
        raise OutputError(f'{folder} is being written by another process (it holds {folder / LOCK_NAME}); wait for it '
                          f'to finish: an index takes one writer at a time') from None
    try:
        yield
    finally:
        lock.release()
