"""Dataset specs: how a config names its data, resolved in one place.

A spec is a registered name (``'market1501'``), or a mapping ``{name, root, label, <build_dataset kwargs>}``
for a dataset somewhere else than the config's ``data_root`` (e.g. several synthetic domains in one
layout). A list of specs is the union of their training sets (``build_union``: the Market-Duke
setting), tested on the first one's split. ``data_root`` is a dataset's own folder, a folder holding
``<name>/``, or a mapping of names to folders.

:func:`resolve_spec` turns one spec and a data root into a :class:`ResolvedSpec` (name, folder, label,
options); the dataset (:func:`load_dataset`), its display label (:func:`spec_label`) and its
self-contained form (:func:`located_spec`) are all read from it.
"""
from pathlib import Path
from typing import Any, Dict, List, NamedTuple, Optional, Union

from ptl_timm.errors import ConfigError, DatasetNotFoundError
from .datasets import ReIDDataset, build_dataset, build_union
from .synth import synth_params

__all__ = [
    'DatasetSpec', 'DataRoot', 'DatasetName', 'ResolvedSpec', 'resolve_spec', 'spec_label', 'located_spec',
    'load_dataset',
]

DatasetSpec = Union[str, Dict[str, Any]]  # a registered name, or {name, root, label, <dataset kwargs>}
DataRoot = Union[str, Dict[str, str]]  # a dataset's folder, a folder holding <name>/, or {name: folder}
DatasetName = Union[DatasetSpec, List[DatasetSpec]]  # a list: the union of the training sets


class ResolvedSpec(NamedTuple):
    """One dataset spec resolved: its registered ``name``, its folder (``root``; None when the data root
    does not say where it is), its display ``label`` and the ``build_dataset`` options it carries."""
    name: str
    root: Optional[Path]
    label: str
    options: Dict[str, Any]

    def require_root(self, data_root: Optional[DataRoot]) -> Path:
        if self.root is None:
            raise ConfigError(f'data_root has no folder for dataset {self.name!r} (it is {data_root!r})')
        return self.root


def _root(name: str, data_root: Optional[DataRoot]) -> Optional[Path]:
    if not data_root or isinstance(data_root, dict) and name not in data_root:
        return None
    if isinstance(data_root, dict):
        return Path(data_root[name]).expanduser()
    root = Path(data_root).expanduser()
    return root / name if (root / name).is_dir() else root


def resolve_spec(spec: DatasetSpec, data_root: Optional[DataRoot] = None) -> ResolvedSpec:
    """Where ``spec`` is and what it is called: its own ``root``, else its folder in ``data_root``; its
    ``label``, else ``synth-<domain>`` when the folder holds synthetic data (so two synthetic domains in
    one layout do not both read "market1501"), else its name."""
    if isinstance(spec, str):
        name, options = spec, {}
    elif isinstance(spec, dict) and 'name' in spec:
        name, options = spec['name'], {k: v for k, v in spec.items() if k not in ('name', 'label', 'root')}
    else:
        raise ConfigError(f'a dataset spec is a name or a mapping with a name (and root, label, options), got {spec!r}')
    if isinstance(spec, dict) and 'root' in spec:
        root: Optional[Path] = Path(spec['root']).expanduser()
    else:
        root = _root(name, data_root)
    if isinstance(spec, dict) and 'label' in spec:
        label = str(spec['label'])
    else:
        synth = synth_params(root) if root is not None else None
        label = f'synth-{synth["domain"]}' if synth else name
    return ResolvedSpec(name, root, label, options)


def spec_label(spec: DatasetName, data_root: Optional[DataRoot] = None) -> str:
    """Display name of a spec (see :func:`resolve_spec`); a union joins its labels with '+'."""
    if isinstance(spec, list):
        return '+'.join(spec_label(s, data_root) for s in spec)
    return resolve_spec(spec, data_root).label


def located_spec(spec: DatasetName, data_root: DataRoot) -> DatasetName:
    """``spec`` with its folder and label written out, so that it names the same data under any other
    ``data_root`` (a transfer step's dataset, which every later step evaluates under its own)."""
    if isinstance(spec, list):
        return [located_spec(s, data_root) for s in spec]
    resolved = resolve_spec(spec, data_root)
    return {**(spec if isinstance(spec, dict) else {'name': resolved.name}),
            'root': str(resolved.require_root(data_root)), 'label': resolved.label}


def load_dataset(spec: DatasetName, data_root: DataRoot, dataset_args: Dict[str, Any]) -> ReIDDataset:
    """Build one dataset, or the union of a list of them; a missing folder is a ``DatasetNotFoundError``."""
    if isinstance(spec, list):
        if not spec:
            raise ConfigError('dataset is an empty list')
        return build_union([load_dataset(s, data_root, dataset_args) for s in spec])
    resolved = resolve_spec(spec, data_root)
    root = resolved.require_root(data_root)
    if not root.exists():
        raise DatasetNotFoundError(
            f'dataset {resolved.name!r}: root folder {root} does not exist; set data_root (or the spec\'s root) to '
            f'the folder holding the dataset')
    return build_dataset(resolved.name, root, **{**dataset_args, **resolved.options})
