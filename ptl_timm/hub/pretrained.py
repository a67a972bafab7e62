"""Published ReID weights, layered onto the model family: manifest tags and the offline fail-fast check.

The model files hold only their literal default cfgs (ImageNet backbone weights). A published weight
becomes ``timm.create_model('<arch>.<tag>', pretrained=True)`` by adding one entry to the manifest
``ptl_timm/weights_manifest.json``: :func:`register_published_weights` (run when ``ptl_timm.hub`` is
imported) derives the tag's pretrained cfg from the architecture's own cfg plus the entry's Hub id,
classes and metadata, and registers every ptl_timm entrypoint again in timm (its documented way to
replace a registration: ``timm.models.register_model``) with its tags and with
:func:`check_pretrained_source` in front. Tags not in the manifest are not registered, so timm lists
only weights that exist; ``require_published`` turns a request for one into an error that says what
to do instead. ``PTL_TIMM_MANIFEST`` names another manifest file (tests, private mirrors); it must
be set before ``import ptl_timm``.

Before a download from the Hub, ``require_downloadable`` checks that the file is cached or the Hub
answers: offline, huggingface_hub would otherwise retry for about a minute and end in an error
that does not say how to go on without the weights.
"""
import copy
import functools
import hashlib
import inspect
import json
import os
import re
import sys
import urllib.error
import urllib.request
import warnings
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

from timm.models import generate_default_cfgs, model_entrypoint, register_model, resolve_pretrained_cfg

from ptl_timm.errors import ManifestError, PTLError
from ptl_timm.models.registry import GENERIC_MODELS, list_models
from ptl_timm.utils import PathLike

__all__ = [
    'HUB_ORG', 'MANIFEST_ENV', 'ManifestError', 'UnpublishedWeightsError', 'WeightEntry', 'default_manifest_path',
    'load_manifest', 'manifest_cfgs', 'register_published_weights', 'require_published', 'sha256_file',
    'hub_repo_id', 'TAG_RULE', 'is_tag', 'WeightsUnavailableError', 'require_downloadable', 'check_pretrained_source',
]

# The Hugging Face organisation every published ptl_timm weight lives under; Hub ids are spelled in
# full (timm only completes the literal 'timm/' prefix).
HUB_ORG = 'ptl-timm'
MANIFEST_ENV = 'PTL_TIMM_MANIFEST'
MANIFEST_FORMAT = 1
PACKAGED_MANIFEST = 'weights_manifest.json'  # package data of ptl_timm (setup.cfg [options.package_data])
REQUIRED_FIELDS = (
    'model', 'tag', 'hf_hub_id', 'sha256', 'num_classes', 'dataset', 'protocol', 'training_config', 'metrics',
    'license',
)
# pretrained cfg fields of the architecture's cfg that name *its* weights; a manifest tag replaces them
_WEIGHT_SOURCE_FIELDS = ('url', 'file', 'hf_hub_id', 'hf_hub_filename', 'state_dict', 'source')
WeightEntry = Dict[str, Any]


class UnpublishedWeightsError(ManifestError):
    """A pretrained tag was requested that has no published weights."""


class WeightsUnavailableError(PTLError, FileNotFoundError):
    """Pretrained weights that are not in the local Hub cache and cannot be downloaded now."""


def default_manifest_path() -> Path:
    """``$PTL_TIMM_MANIFEST`` if set; else the package data file ``ptl_timm/weights_manifest.json``,
    found through ``importlib.resources`` the same way in a wheel and in an editable install."""
    override = os.environ.get(MANIFEST_ENV)
    if override:
        return Path(override).expanduser()
    return Path(str(resources.files('ptl_timm').joinpath(PACKAGED_MANIFEST)))


TAG_RULE = "letters, digits, '_' and '-' (e.g. market1501)"  # what a pretrained tag is made of


def is_tag(tag: str) -> bool:
    """Whether ``tag`` can be a pretrained tag (``TAG_RULE``): it becomes part of a model name
    (``arch.tag``), a Hub repository name and a folder name, so no dots, slashes or other path characters."""
    return isinstance(tag, str) and re.fullmatch(r'[A-Za-z0-9_-]+', tag) is not None


def hub_repo_id(model: str, tag: str, org: str = HUB_ORG) -> str:
    """The Hub repository of ``model.tag``: ``<org>/<model>.<tag>``, the name timm's ``hf-hub:`` expects."""
    return f'{org}/{model}.{tag}'


def _validate_entry(entry: Mapping[str, Any], org: str, where: str) -> None:
    missing = [k for k in REQUIRED_FIELDS if k not in entry]
    if missing:
        raise ManifestError(f'{where}: entry {dict(entry).get("model")}.{dict(entry).get("tag")} lacks {missing}')
    if not str(entry['hf_hub_id']).startswith(f'{org}/'):
        raise ManifestError(
            f'{where}: {entry["model"]}.{entry["tag"]} has hf_hub_id {entry["hf_hub_id"]!r}, which is not under the '
            f'organisation {org!r}; spell it in full as {hub_repo_id(entry["model"], entry["tag"], org)!r}')
    if entry['model'] in GENERIC_MODELS:
        raise ManifestError(
            f'{where}: {entry["model"]} takes its backbone as an argument, which a pretrained tag cannot carry; '
            f'publish it under hf-hub: only, or register a named architecture for it')
    if not is_tag(entry['tag']):
        raise ManifestError(f'{where}: tag {entry["tag"]!r} of {entry["model"]} must be made of {TAG_RULE}')


def load_manifest(path: Optional[PathLike] = None) -> List[WeightEntry]:
    """The validated entries of the manifest at ``path`` (default: ``default_manifest_path()``).

    A missing default manifest means nothing is published (an installed wheel without the file);
    a missing explicit path is an error.
    """
    explicit = path is not None or bool(os.environ.get(MANIFEST_ENV))
    path = Path(path) if path is not None else default_manifest_path()
    if not path.is_file():
        if explicit:
            raise FileNotFoundError(f'weights manifest {path} does not exist (set by argument or ${MANIFEST_ENV})')
        return []
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ManifestError(f'weights manifest {path} is not valid JSON: {e}') from e
    if manifest.get('format') != MANIFEST_FORMAT:
        raise ManifestError(f'weights manifest {path} has format {manifest.get("format")!r}; expected {MANIFEST_FORMAT}')
    org = manifest.get('hub_org', HUB_ORG)
    entries = manifest.get('weights', [])
    seen = set()
    for entry in entries:
        _validate_entry(entry, org, str(path))
        name = f'{entry["model"]}.{entry["tag"]}'
        if name in seen:
            raise ManifestError(f'{path}: {name} is listed twice')
        seen.add(name)
    return entries


def _describe(entry: WeightEntry) -> str:
    metrics = ', '.join(f'{k} {v:.1f}%' for k, v in entry['metrics'].items())
    return f'Trained on {entry["dataset"]} ({entry["protocol"]}): {metrics}.'


def manifest_cfgs(
        arch: str,
        base_cfg: Mapping[str, Any],
        entries: Optional[List[WeightEntry]] = None,
) -> Dict[str, Dict[str, Any]]:
    """Pretrained cfgs ``{'<arch>.<tag>': cfg}`` for every manifest entry of ``arch``.

    Each is ``base_cfg`` (the architecture's cfg: input size, normalisation, first conv, classifier)
    with its weight source replaced by the entry's Hub id and ``num_classes`` set to the classes
    those weights were trained with, so a different ``num_classes`` drops the classifier.
    """
    entries = load_manifest() if entries is None else entries
    cfgs = {}
    for entry in entries:
        if entry['model'] != arch:
            continue
        cfg = {k: copy.deepcopy(v) for k, v in base_cfg.items() if k not in _WEIGHT_SOURCE_FIELDS}
        cfg.update(
            hf_hub_id=entry['hf_hub_id'],
            num_classes=int(entry['num_classes']),
            license=entry['license'],
            description=_describe(entry),
        )
        if 'input_size' in entry:
            cfg['input_size'] = tuple(entry['input_size'])
        cfgs[f'{arch}.{entry["tag"]}'] = cfg
    return cfgs


def _tagged(arch: str, default_cfg: Any, entries: List[WeightEntry]) -> Any:
    """The architecture's ``DefaultCfg`` (from ``generate_default_cfgs``) with its manifest tags after
    its own, each derived from its first (default) cfg."""
    cfgs = {f'{arch}.{tag}' if tag else arch: default_cfg.cfgs[tag] for tag in default_cfg.tags}
    base = default_cfg.cfgs[default_cfg.tags[0]].to_dict()
    for name, cfg in manifest_cfgs(arch, base, entries).items():
        if name in cfgs:
            raise ManifestError(f'manifest tag {name} collides with a tag the model file defines')
        cfgs[name] = cfg
    return generate_default_cfgs(cfgs)[arch]


def _checked(entrypoint: Callable) -> Callable:
    """``entrypoint`` with :func:`check_pretrained_source` before it builds anything."""
    @functools.wraps(entrypoint)
    def create(pretrained: bool = False, **kwargs):
        check_pretrained_source(entrypoint.__name__, pretrained, kwargs)
        return entrypoint(pretrained=pretrained, **kwargs)
    create.checks_pretrained_source = True
    return create


def register_published_weights(entries: Optional[List[WeightEntry]] = None) -> None:
    """Register every ptl_timm architecture in timm again, with the tags of ``entries`` (default: the
    manifest's) and the pretrained-source check. The model modules keep their literal ``default_cfgs``:
    timm reads the tagged ones during the call only. Calling it again replaces the tags."""
    entries = load_manifest() if entries is None else entries
    for arch in list_models(include_generic=True):
        # the model file's own entrypoint (with its decorators), without the check an earlier call added
        entrypoint = inspect.unwrap(
            model_entrypoint(arch), stop=lambda f: not getattr(f, 'checks_pretrained_source', False))
        module = sys.modules[entrypoint.__module__]
        literal = module.default_cfgs
        module.default_cfgs = {**literal, arch: _tagged(arch, literal[arch], entries)}
        try:
            with warnings.catch_warnings():
                warnings.simplefilter('ignore')  # timm warns on every re-registration, which is the point here
                register_model(_checked(entrypoint))
        finally:
            module.default_cfgs = literal


def require_published(name: str) -> None:
    """Raise ``UnpublishedWeightsError`` unless ``name`` (``arch`` or ``arch.tag``) has pretrained weights
    registered in timm; the message lists the tags that exist and how to load a local folder instead."""
    import timm

    arch, _, tag = name.partition('.')
    if not tag or not timm.is_model(arch):
        return
    published = timm.list_pretrained(f'{arch}.*')
    if name in published:
        return
    raise UnpublishedWeightsError(
        f'no weights are published for {name}: the tag {tag!r} is not in the weights manifest '
        f'(published tags of {arch}: {", ".join(published) or "none"}). To use weights you trained, load the '
        f"checkpoint folder: ptl_timm.hub.load_model('path/to/folder') or "
        f"timm.create_model('local-dir:path/to/folder', pretrained=True)")


def sha256_file(path: PathLike, chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a file (the manifest records it for ``model.safetensors``)."""
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(chunk_size), b''):
            digest.update(chunk)
    return digest.hexdigest()


HUB_PROBE_TIMEOUT = 5.0  # seconds the Hub has to answer one request before it counts as unreachable


def _hub_unreachable(endpoint: str) -> str:
    """Why ``endpoint`` cannot be reached ('' if it answers at all, even with an HTTP error)."""
    try:
        urllib.request.urlopen(urllib.request.Request(endpoint, method='HEAD'), timeout=HUB_PROBE_TIMEOUT).close()
    except urllib.error.HTTPError:
        return ''  # the server answered
    except (urllib.error.URLError, OSError) as e:
        return str(getattr(e, 'reason', e))
    return ''


def require_downloadable(repo_id: str, filenames: Sequence[str], what: str) -> None:
    """Raise ``WeightsUnavailableError`` at once unless one of ``filenames`` of the Hub repo ``repo_id``
    is in the local Hub cache or the Hub answers now; the message says how to go on without it."""
    from huggingface_hub import constants, try_to_load_from_cache

    if any(isinstance(try_to_load_from_cache(repo_id, name), str) for name in filenames):
        return
    if constants.HF_HUB_OFFLINE:
        reason = 'HF_HUB_OFFLINE is set'
    else:
        reason = _hub_unreachable(constants.ENDPOINT)
        if not reason:
            return
        reason = f'the Hub ({constants.ENDPOINT}) cannot be reached: {reason}'
    raise WeightsUnavailableError(
        f'cannot load {what} from {repo_id}: it is not in the local Hub cache ({constants.HF_HUB_CACHE}) and '
        f'{reason}. Go on without it: train from random weights (`--no-pretrained`, pretrained=False), load a local copy '
        f"(pretrained_cfg_overlay=dict(file='path/to/model.safetensors')), or download it once while online "
        f'and then set HF_HUB_OFFLINE=1')


def _hub_source(cfg: Mapping[str, Any]) -> Optional[Sequence[str]]:
    """(repo id, file names) when timm would download ``cfg``'s weights from the Hub, else None (timm's
    order of sources: a Hub source first, then a state dict or a file given directly, then a Hub id)."""
    given = cfg.get('state_dict') is not None or cfg.get('file')
    if not cfg.get('hf_hub_id') or given and cfg.get('source') != 'hf-hub':
        return None
    filename = cfg.get('hf_hub_filename')
    return cfg['hf_hub_id'].split('@')[0], (filename,) if filename else ('model.safetensors', 'pytorch_model.bin')


def check_pretrained_source(variant: str, pretrained: bool, kwargs: Mapping[str, Any]) -> None:
    """What every ptl_timm entrypoint checks before building (see :func:`register_published_weights`):
    a pretrained tag must be published, and weights that come from the Hub must be cached or
    downloadable now."""
    if isinstance(kwargs.get('pretrained_cfg'), str):  # a tag: say clearly when it is not published
        require_published(f"{variant}.{kwargs['pretrained_cfg']}")
    if not pretrained:
        return
    cfg = resolve_pretrained_cfg(variant, pretrained_cfg=kwargs.get('pretrained_cfg'),
                                 pretrained_cfg_overlay=kwargs.get('pretrained_cfg_overlay'))
    source = _hub_source(cfg.to_dict())
    if source is not None:
        require_downloadable(source[0], source[1], what=f'the pretrained weights of {variant}')
