"""Person re-identification datasets as lists of ``(path, pid, camid)`` records.

One small parser per on-disk layout, in the spirit of torchreid's dataset files, each returning a
:class:`ReIDDataset` with ``train``, ``query`` and ``gallery`` record lists:

* ``market1501``: ``<root>/{bounding_box_train,query,bounding_box_test}/0002_c1s1_000451_01.jpg``
  (``root`` may also be the folder holding ``Market-1501-v15.09.15/``). 751 train ids / 12,936 images,
  3,368 queries, 15,913 gallery images, 6 cameras.
* ``dukemtmc``: the same folders, names like ``0001_c2_f0046182.jpg`` (or under ``DukeMTMC-reID/``).
  702 train ids / 16,522 images, 2,228 queries, 17,661 gallery images, 8 cameras.
* ``msmt17``: ``<root>/{train,test}`` (v1) or ``<root>/{mask_train_v2,mask_test_v2}`` (v2) plus the list
  files ``list_{train,val,query,gallery}.txt`` whose lines are ``<relative path> <pid>``; the camera is
  the third ``_`` field of the file name. ``include_val=True`` (default) trains on train+val, the
  official 1,041 ids / 32,621 images; torchreid and fast-reid train on ``list_train`` only (30,248
  images) unless ``combineall``: pass ``include_val=False`` to compare with them.
  11,659 queries, 82,161 gallery images, 15 cameras.
* ``cuhk03_np``: the Market-format CUHK03-NP release, ``<root>/{detected,labeled}/`` each with the three
  Market folders (``variant='detected'`` by default, as in torchreid). 767 train ids, 700 test ids,
  1,400 queries, 2 cameras per identity.
* ``folder``: a user's own data, ``<root>/{train,query,gallery}/<identity>/<camera>/<images>``. Identity
  and camera folder names are free text (``alice/door_cam/0001.jpg``); identities are numbered by sorted
  name (query and gallery share one numbering so equal names match), cameras by sorted name over all
  splits. The camera level can be any grouping whose matches should not count (a sequence, a video), or
  absent (``alice/0001.jpg``: camera unknown, -1; evaluation then excludes only the query image itself,
  see :mod:`ptl_timm.eval.protocol`). ``train`` may be absent (evaluation only).

Conventions shared by every parser: training pids are relabelled to ``0..N-1`` in sorted order of the
original ids (reproducible classifier heads); query/gallery keep the original pids; camids are 0-based
and never -1 in the public layouts (a file naming camera 0 or none is a format error: their protocol needs
every camera), -1 only for ``folder`` images without a camera folder;
pid ``-1`` (junk boxes) is dropped at parse time and pid ``0`` (Market distractors) is kept in the
gallery as an ordinary negative (``ReIDDataset.distractor_pid``). Problems a user can fix raise
:class:`DatasetNotFoundError` (a ``FileNotFoundError``) or :class:`DatasetFormatError` (a ``ValueError``)
naming the path and the fix.
"""
import inspect
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterable, List, NamedTuple, Optional, Sequence, Tuple

from ptl_timm.errors import DatasetFormatError, DatasetNotFoundError
from ptl_timm.utils import PathLike
from ptl_timm.utils.images import IMAGE_EXTENSIONS, list_images

__all__ = [
    'ReIDRecord', 'ReIDDataset', 'DatasetNotFoundError', 'DatasetFormatError', 'IMAGE_EXTENSIONS', 'DATASETS',
    'build_dataset', 'build_union', 'market1501', 'dukemtmc', 'msmt17', 'cuhk03_np', 'image_folder', 'FILE_NAMINGS',
    'labels_from_names', 'camera_name',
]

MARKET_SPLITS = (('train', 'bounding_box_train'), ('query', 'query'), ('gallery', 'bounding_box_test'))
# ``0002_c1s1_000451_01.jpg`` (Market, CUHK03-NP) and ``0001_c2_f0046182.jpg`` (Duke): pid, camera
MARKET_NAME = re.compile(r'^(-?\d+)_c(\d+)')
# ``0000_000_01_0303morning_0015_0.jpg`` (MSMT17): pid, index, camera
MSMT_NAME = re.compile(r'^(\d+)_\d+_(\d+)_')
# the file-name conventions that carry identity and camera (from 1), for images outside a dataset layout
FILE_NAMINGS = {'market1501': MARKET_NAME, 'msmt17': MSMT_NAME}
JUNK_PID = -1
DISTRACTOR_PID = 0  # Market-style layouts: boxes of no labelled person, kept in the gallery


class ReIDRecord(NamedTuple):
    path: str
    pid: int
    camid: int


@dataclass
class ReIDDataset:
    """The three splits of a ReID dataset. ``root`` is the folder the records were read from;
    ``distractor_pid`` is the pid of gallery images that show no labelled person (Market-1501's
    ``0000`` boxes), None where the layout has none: a negative for every query, but never one identity."""
    name: str
    root: str
    train: List[ReIDRecord] = field(default_factory=list)
    query: List[ReIDRecord] = field(default_factory=list)
    gallery: List[ReIDRecord] = field(default_factory=list)
    distractor_pid: Optional[int] = None

    @property
    def num_train_pids(self) -> int:
        return len({r.pid for r in self.train})

    @property
    def num_train_cams(self) -> int:
        return max((r.camid for r in self.train), default=-1) + 1

    def summary(self) -> str:
        """torchreid-style one-line-per-split statistics."""
        lines = [f'{self.name} ({self.root})']
        for split in ('train', 'query', 'gallery'):
            records = getattr(self, split)
            lines.append(f'  {split:<8} {len({r.pid for r in records}):>6} ids {len(records):>7} images '
                         f'{len({r.camid for r in records}):>3} cameras')
        return '\n'.join(lines)


def _find_root(root: PathLike, name: str, required: Sequence[str], subfolders: Sequence[str] = ()) -> Path:
    """``root`` itself, or one of its known release sub-folders, that holds every ``required`` entry."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetNotFoundError(
            f'{name}: dataset folder {root} does not exist; pass the folder that holds {", ".join(required)}')
    for candidate in [root] + [root / s for s in subfolders]:
        if all((candidate / r).exists() for r in required):
            return candidate
    missing = [r for r in required if not (root / r).exists()]
    inside = f' (or inside {" / ".join(subfolders)})' if subfolders else ''
    raise DatasetNotFoundError(
        f'{name}: {root} is missing {", ".join(missing)}{inside}; expected {", ".join(required)} in the dataset '
        f'folder: check the path or re-extract the archive')


def _list_images(folder: Path) -> List[Path]:
    return list_images(folder)


def _require(records: List[ReIDRecord], name: str, where: Path) -> List[ReIDRecord]:
    if not records:
        raise DatasetFormatError(
            f'{name}: no images found in {where}; the split is empty: check that the archive was fully extracted')
    return records


def _relabel(records: Iterable[ReIDRecord]) -> List[ReIDRecord]:
    """Training pids to ``0..N-1`` in sorted order of the original ids."""
    records = list(records)
    labels = {pid: label for label, pid in enumerate(sorted({r.pid for r in records}))}
    return [r._replace(pid=labels[r.pid]) for r in records]


def _parse_market_dir(folder: Path, name: str) -> List[ReIDRecord]:
    """Records of one Market-style folder; junk (pid -1) dropped, cameras made 0-based."""
    records = []
    for path in _list_images(folder):
        match = MARKET_NAME.match(path.name)
        if match is None or int(match.group(2)) < 1:
            raise DatasetFormatError(
                f'{name}: cannot read identity and camera from file name {path} (expected names like '
                f'0002_c1s1_000451_01.jpg: <pid>_c<camera from 1>...); move or rename the file')
        pid, cam = int(match.group(1)), int(match.group(2))
        if pid != JUNK_PID:
            records.append(ReIDRecord(str(path), pid, cam - 1))
    return _require(records, name, folder)


def _market_layout(root: PathLike, name: str, subfolders: Sequence[str]) -> ReIDDataset:
    base = _find_root(root, name, [folder for _, folder in MARKET_SPLITS], subfolders)
    splits = {split: _parse_market_dir(base / folder, name) for split, folder in MARKET_SPLITS}
    return ReIDDataset(name, str(base), _relabel(splits['train']), splits['query'], splits['gallery'],
                       distractor_pid=DISTRACTOR_PID)


def market1501(root: PathLike) -> ReIDDataset:
    """Market-1501 (Zheng et al., ICCV 2015)."""
    return _market_layout(root, 'market1501', ['Market-1501-v15.09.15', 'Market-1501'])


def dukemtmc(root: PathLike) -> ReIDDataset:
    """DukeMTMC-reID (Zheng et al., ICCV 2017)."""
    return _market_layout(root, 'dukemtmc', ['DukeMTMC-reID'])


def cuhk03_np(root: PathLike, variant: str = 'detected') -> ReIDDataset:
    """CUHK03-NP, the 767/700 split of Zhong et al. (CVPR 2017), Market-format release."""
    if variant not in ('detected', 'labeled'):
        raise DatasetFormatError(f"cuhk03_np: variant must be 'detected' or 'labeled', got {variant!r}")
    base = _find_root(root, 'cuhk03_np', [variant], ['cuhk03-np', 'cuhk03_np'])
    dataset = _market_layout(base / variant, 'cuhk03_np', [])
    dataset.name = f'cuhk03_np_{variant}'
    return dataset


MSMT17_VERSIONS = (('train', 'test'), ('mask_train_v2', 'mask_test_v2'))
MSMT17_LISTS = ('list_train.txt', 'list_val.txt', 'list_query.txt', 'list_gallery.txt')


def _parse_msmt_list(list_file: Path, image_dir: Path) -> List[ReIDRecord]:
    """Lines ``<relative path> <pid>``; the camera is the third ``_`` field of the file name (from 1)."""
    records = []
    for line_no, line in enumerate(list_file.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        fields = Path(parts[0]).name.split('_')
        if (len(parts) != 2 or len(fields) < 3 or not parts[1].lstrip('-').isdigit() or not fields[2].isdigit()
                or int(fields[2]) < 1):  # cameras count from 1: camera 0 would become the unknown camera -1
            raise DatasetFormatError(
                f'msmt17: line {line_no} of {list_file} is {line!r}; '
                f'expected "<pid>/<pid>_<n>_<camera from 1>_<...>.jpg <pid>"; '
                f'restore the original list file')
        records.append(ReIDRecord(str(image_dir / parts[0]), int(parts[1]), int(fields[2]) - 1))
    return _require(records, 'msmt17', list_file)


def msmt17(root: PathLike, include_val: bool = True) -> ReIDDataset:
    """MSMT17 (Wei et al., CVPR 2018), v1 or v2 (blurred faces) folders with the four list files."""
    errors = []
    for train_dir, test_dir in MSMT17_VERSIONS:
        try:
            base = _find_root(root, 'msmt17', [train_dir, test_dir, *MSMT17_LISTS], ['MSMT17_V1', 'MSMT17_V2'])
            break
        except DatasetNotFoundError as e:
            errors.append(e)
    else:
        raise errors[0]  # names what the v1 layout lacks
    train_part, val_part, query, gallery = (
        _parse_msmt_list(base / list_name, base / (train_dir if i < 2 else test_dir))
        for i, list_name in enumerate(MSMT17_LISTS))
    train = train_part + val_part if include_val else train_part
    return ReIDDataset('msmt17', str(base), _relabel(train), query, gallery)


def _subfolders(folder: Path) -> List[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir())


def _walk_identity_folders(split_dir: Path) -> List[Tuple[str, Optional[str], Path]]:
    """``(identity, camera, image)`` for every image under ``<split>/<identity>/<camera>/``, or directly
    under ``<split>/<identity>/`` (camera None: unknown)."""
    items = []
    for identity in _subfolders(split_dir):
        direct, cameras = _list_images(identity), _subfolders(identity)
        if direct and cameras:
            raise DatasetFormatError(
                f'folder: image {direct[0]} lies directly in an identity folder that also has camera folders; put '
                f'all images of {identity} in <camera>/ folders, or none (then its camera is unknown)')
        items += [(identity.name, None, image) for image in direct]
        items += [(identity.name, camera.name, image) for camera in cameras for image in _list_images(camera)]
    return _require(items, 'folder', split_dir)


def image_folder(root: PathLike) -> ReIDDataset:
    """A user's own data: ``<root>/{train,query,gallery}/<identity>/<camera>/<images>`` (train optional)."""
    base = _find_root(root, 'folder', ['query', 'gallery'])
    splits = {s: _walk_identity_folders(base / s) for s in ('train', 'query', 'gallery') if (base / s).is_dir()}
    cameras = {c: i for i, c in enumerate(sorted({cam for items in splits.values() for _, cam, _ in items} - {None}))}
    cameras[None] = -1
    test_ids = {p: i for i, p in enumerate(sorted({pid for s in ('query', 'gallery') for pid, _, _ in splits[s]}))}
    train_ids = {p: i for i, p in enumerate(sorted({pid for pid, _, _ in splits.get('train', [])}))}

    def records(split: str, ids: Dict[str, int]) -> List[ReIDRecord]:
        return [ReIDRecord(str(path), ids[pid], cameras[cam]) for pid, cam, path in splits.get(split, [])]
    return ReIDDataset('folder', str(base), records('train', train_ids), records('query', test_ids),
                       records('gallery', test_ids))


def labels_from_names(paths: Sequence[PathLike]) -> Optional[Tuple[List[int], List[int]]]:
    """Identities and 0-based cameras of images whose file names all follow one dataset's convention
    (:data:`FILE_NAMINGS`, cameras from 1), e.g. a copy of Market-1501's ``query``; else None."""
    names = [Path(p).name for p in paths]
    for pattern in FILE_NAMINGS.values():
        matches = [pattern.match(name) for name in names]
        if names and all(m is not None and int(m.group(2)) >= 1 for m in matches):
            return [int(m.group(1)) for m in matches], [int(m.group(2)) - 1 for m in matches]
    return None


def camera_name(camid: int) -> str:
    """A 0-based camid as the file names count cameras, from 1: ``c1`` for camid 0 (what a user sees in
    ``0002_c1s1_000451_01.jpg``; a ``folder`` dataset's first camera folder in sorted order)."""
    return f'c{int(camid) + 1}'


DATASETS: Dict[str, Callable[..., ReIDDataset]] = {
    'market1501': market1501,
    'dukemtmc': dukemtmc,
    'msmt17': msmt17,
    'cuhk03_np': cuhk03_np,
    'folder': image_folder,
}


def build_dataset(name: str, root: PathLike, **kwargs) -> ReIDDataset:
    """The dataset ``name`` (a key of :data:`DATASETS`) read from ``root``; ``kwargs`` go to its parser
    (``variant`` for ``cuhk03_np``, ``include_val`` for ``msmt17``)."""
    if name not in DATASETS:
        raise DatasetFormatError(f'unknown dataset {name!r}; choose one of {", ".join(DATASETS)}')
    parser = DATASETS[name]
    try:
        inspect.signature(parser).bind(root, **kwargs)
    except TypeError as e:
        raise DatasetFormatError(f'dataset {name!r} does not take the options {sorted(kwargs)} ({e})') from e
    return parser(root, **kwargs)


def build_union(datasets: Sequence[ReIDDataset], name: Optional[str] = None) -> ReIDDataset:
    """Training sets merged, each one's pids and camids shifted past the previous ones (so identities
    of different datasets never collide); query and gallery of the first dataset (the paper's
    Market-Duke setting: train on both, test on Market-1501)."""
    if not datasets:
        raise DatasetFormatError('build_union needs at least one dataset')
    train: List[ReIDRecord] = []
    pid_offset = cam_offset = 0
    for dataset in datasets:
        train += [ReIDRecord(r.path, r.pid + pid_offset, r.camid + cam_offset) for r in dataset.train]
        pid_offset += dataset.num_train_pids
        cam_offset += dataset.num_train_cams
    first = datasets[0]
    return ReIDDataset(name or '+'.join(d.name for d in datasets), first.root, train, list(first.query),
                       list(first.gallery), distractor_pid=first.distractor_pid)
