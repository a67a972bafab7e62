"""Turn a training checkpoint into a Hugging Face Hub folder, verify it, and optionally upload it.

``publish(checkpoint, out)`` refuses weights that would mislead a user (a config that names another
architecture than the tensors hold, NaN/Inf values), writes ``config.json`` (timm's format) +
``model.safetensors`` + a ``README.md`` model card rendered from ``MODEL_CARD.md`` with the run's
metrics and the checkpoint's operating points (``ptl-timm calibrate``, kept in ``config.json``), loads
the folder back through timm's ``local-dir:`` route and checks its eval embeddings equal the checkpoint's, and returns the ``ptl_timm/weights_manifest.json`` entry that makes the weights a
registry tag. Nothing leaves the machine without ``push=True``.
"""
import dataclasses
import json
import math
import re
from importlib import resources
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

import safetensors
import timm
import torch
import torch.nn as nn
from tqdm import tqdm

from ptl_timm.data.specs import resolve_spec
from ptl_timm.data.synth import synth_params
from ptl_timm.errors import PublishError, reading
from ptl_timm.models.registry import GENERIC_MODELS
from ptl_timm.utils import PathLike, atomic_folder, atomic_write
from .calibration import calibration_card, read_calibration, write_calibration
from .folder import (
    CONFIG_NAME, DATASET_METADATA_KEY, TRAIN_STATE_NAME, WEIGHTS_NAME, check_hub_id, load_model, save_pretrained)
from .pretrained import TAG_RULE, hub_repo_id, is_tag, sha256_file

__all__ = [
    'PublishError', 'PublishResult', 'publish', 'check_checkpoint', 'find_run_metrics', 'render_model_card',
    'default_model_card', 'describe_training_data', 'describe_initialisation', 'embedding_difference', 'README_NAME', 'TRAIN_STATE_NAME',
    'INSTALL_LINE',
]

README_NAME = 'README.md'
MODEL_CARD_TEMPLATE = 'model_card_template.md'  # package data: the repository's MODEL_CARD.md, shipped in the wheel
RUN_CHECKPOINTS = ('last', 'best')  # the checkpoint folders of a training run, inside the run folder
# ptl_timm is not on PyPI: the card says how it really installs
INSTALL_LINE = 'pip install .  # in a checkout of the ptl_timm source (see its README); ptl_timm is not on PyPI'
# MODEL_CARD.md sections about the repository's state (e.g. "nothing published yet"), not a checkpoint's
_REPOSITORY_ONLY = re.compile(r'<!-- repository-only:begin.*?<!-- repository-only:end -->\n?', re.DOTALL)


@dataclasses.dataclass
class PublishResult:
    """What ``publish`` wrote and checked."""
    folder: Path
    repo_id: str
    manifest_entry: Optional[Dict[str, Any]]  # None when a registry tag could not rebuild the model
    no_entry_reason: str
    max_embedding_diff: float
    pushed: bool


def check_checkpoint(checkpoint: PathLike) -> nn.Module:
    """The checkpoint's model, built from its ``config.json`` (preprocessing included) and loaded
    strictly from its weights (:func:`ptl_timm.hub.load_model`).

    Raises ``CheckpointError`` when the tensors do not belong to the configured architecture and
    ``PublishError`` when any of them holds NaN or Inf.
    """
    checkpoint = Path(checkpoint)
    model = load_model(checkpoint)
    non_finite = [k for k, v in model.state_dict().items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if non_finite:
        raise PublishError(
            f'{checkpoint / WEIGHTS_NAME} has NaN/Inf values in {len(non_finite)} tensors (e.g. {non_finite[:3]}); '
            f'the run diverged: publish an earlier checkpoint')
    return model.eval()


def find_run_metrics(checkpoint: PathLike) -> Dict[str, Any]:
    """The evaluation of exactly these weights and the run's training config, from ``train_state.pt``.

    A ``last/`` folder carries its own state: its metrics are those of its final epoch (none if that
    epoch was not evaluated). A ``best/`` folder has none, and takes the ``best`` record from the
    sibling ``last/train_state.pt``. Returns ``{'eval': {dataset: metrics}, 'epoch', 'training_config'}``,
    empty if the checkpoint was never evaluated.
    """
    checkpoint = Path(checkpoint)
    own_state = checkpoint / TRAIN_STATE_NAME
    if own_state.is_file():
        state = _load_train_state(own_state)
        record = next((r for r in state.get('history', []) if r.get('epoch') == state.get('epoch')), None)
    elif checkpoint.name == 'best' and (checkpoint.parent / 'last' / TRAIN_STATE_NAME).is_file():
        state = _load_train_state(checkpoint.parent / 'last' / TRAIN_STATE_NAME)
        record = state.get('best')
    else:
        return {}
    if not record or 'eval' not in record:
        return dict(training_config=state.get('config', {}))
    return dict(eval=record['eval'], epoch=record['epoch'], training_config=state.get('config', {}))


def _load_train_state(path: Path) -> Dict[str, Any]:
    with reading(path, what='training state', fix='publish without it: copy config.json and model.safetensors to a '
                                                  'folder of their own'):
        return torch.load(path, map_location='cpu', weights_only=True)


def embedding_difference(reference: nn.Module, candidate: nn.Module, batch_size: int = 2, seed: int = 0) -> float:
    """Max absolute difference of the two models' eval embeddings on a fixed random batch."""
    input_size = reference.pretrained_cfg['input_size']
    images = torch.randn((batch_size, *input_size), generator=torch.Generator().manual_seed(seed))
    with torch.inference_mode():
        expected = reference.eval().forward_reid(images).embedding
        actual = candidate.eval().forward_reid(images).embedding
    return float((expected - actual).abs().max())


def _metrics_table(evaluations: Mapping[str, Mapping[str, float]]) -> List[str]:
    lines = ['| test set | mAP (%) | Rank-1 (%) | Rank-5 (%) | mINP (%) |', '| --- | --- | --- | --- | --- |']
    for name, m in evaluations.items():
        cells = [m.get(k) for k in ('mAP', 'rank1', 'rank5', 'mINP')]
        lines.append(f'| {name} | ' + ' | '.join('–' if v is None else f'{v:.2f}' for v in cells) + ' |')
    return lines


def _describe_dataset(spec: Any, data_root: Any) -> str:
    name, root, _, _ = resolve_spec(spec, data_root)
    if root is None or not root.is_dir():
        return (f'data in the {name} layout (its folder is no longer where training read it, so whether it was the '
                f'real {name} or synthetic data is not known)')
    synth = synth_params(root)
    if synth is None:
        return str(name)
    height, width = synth['img_size']
    return (f"synthetic persons from ptl_timm's generator (domain '{synth['domain']}', {name} layout, "
            f"{synth['num_ids']} identities, {synth['num_cams']} cameras, {height}×{width} images): no real people, "
            f'so the weights are meaningless for real images')


def describe_training_data(training_config: Mapping[str, Any], recorded: str = '') -> str:
    """What the weights were trained on, in words: a dataset the synthetic generator wrote (see
    :func:`ptl_timm.data.synth.synth_params`) is named as synthetic, whatever layout it imitates. ``recorded`` (the dataset
    name in the weights' metadata) is the fallback when the run's config is not available."""
    if not training_config or 'dataset' not in training_config:
        return f'{recorded} (the training configuration is not available to check it)' if recorded else 'not recorded'
    specs = training_config['dataset']
    specs = specs if isinstance(specs, list) else [specs]
    return ' + '.join(_describe_dataset(spec, training_config.get('data_root')) for spec in specs)


def describe_initialisation(training_config: Mapping[str, Any], architecture: str, model_args: Mapping[str, Any]) -> str:
    """Where training started from: a ReID checkpoint, timm's ImageNet weights of the backbone (named
    by their Hub id), or random weights."""
    if not training_config or 'pretrained' not in training_config:
        return 'not recorded'
    if training_config.get('init_checkpoint'):
        return f"fine-tuned from the ReID checkpoint `{training_config['init_checkpoint']}`"
    if not training_config['pretrained']:
        return 'random weights (trained with `--no-pretrained`: no ImageNet weights)'
    source = timm.models.get_pretrained_cfg(model_args['backbone'] if architecture in GENERIC_MODELS else architecture)
    weights = f'`{source.hf_hub_id}`' if source is not None and source.hf_hub_id else "the backbone's timm weights"
    return f'backbone from ImageNet weights ({weights}); every other layer randomly initialised'


def _describe_preprocessing(pretrained_cfg: Mapping[str, Any]) -> str:
    _, height, width = pretrained_cfg['input_size']
    return (f"{height}×{width} (height × width), {pretrained_cfg.get('interpolation', 'bilinear')} resize of the whole "
            f"crop, mean {list(pretrained_cfg['mean'])}, std {list(pretrained_cfg['std'])}; recorded in config.json, "
            f'so `timm.data.resolve_data_config(model=model)` gives it')


def render_model_card(
        model_card: str,
        repo_id: str,
        facts: Mapping[str, str],
        run: Mapping[str, Any],
        license: str,
        calibration: Optional[Mapping[str, Any]] = None,
) -> str:
    """The Hub README: front matter, this checkpoint's ``facts`` (label → text) and metrics, its
    operating points (``calibration``, when calibrated), usage, then ``MODEL_CARD.md`` less its
    repository-only sections."""
    lines = [
        '---',
        'library_name: timm',
        f'license: {license}',
        'pipeline_tag: image-feature-extraction',
        'tags:', '- timm', '- ptl_timm', '- person-reid', '- image-feature-extraction',
        '---',
        f'# {repo_id}',
        '',
        'Person re-identification weights for the `ptl_timm` package (Progressive Transfer Learning, IJCAI-19, '
        'on timm; paper code: https://github.com/ZJULearning/PTL).',
        '',
        '## This checkpoint',
        '',
        *(f'- {label}: {text}' for label, text in facts.items()),
    ]
    if run.get('eval'):
        lines += ['', f'Evaluation of these weights by ptl_timm (epoch {run["epoch"]}, single query, '
                      'no re-ranking):', '', *_metrics_table(run['eval'])]
    else:
        lines += ['', 'These weights were not evaluated by the training run; no metrics are claimed for them.']
    if calibration:
        lines += ['', *calibration_card(calibration)]
    lines += [
        '',
        '## Usage',
        '',
        'timm needs the `ptl_timm` package to build this architecture:',
        '',
        '```bash',
        INSTALL_LINE,
        '```',
        '',
        '```python',
        'import timm',
        'import ptl_timm  # registers the ptl_timm architectures in timm',
        '',
        f"model = timm.create_model('hf-hub:{repo_id}', pretrained=True, num_classes=0).eval()",
        'data_config = timm.data.resolve_data_config({}, model=model)  # the preprocessing it was trained with',
        'transform = timm.data.create_transform(**data_config)',
        'embedding = model(transform(image).unsqueeze(0))  # image: a PIL person crop',
        '```',
        '',
        '---',
        '',
        _REPOSITORY_ONLY.sub('', model_card).strip(),
        '',
    ]
    return '\n'.join(lines)


def default_model_card() -> Path:
    """The card template every install has: package data found through ``importlib.resources`` (a
    wheel carries no ``MODEL_CARD.md``; the template is that file, kept identical by a test)."""
    return Path(str(resources.files('ptl_timm.hub').joinpath(MODEL_CARD_TEMPLATE)))


def _refuse_out_in_source(checkpoint: Path, out: Path) -> None:
    """An ``out`` that is, contains or lies inside the checkpoint's run folder (the folder holding
    ``last/``/``best/``, else the checkpoint itself) would be replaced with the run inside it."""
    checkpoint, target = checkpoint.resolve(), out.resolve()
    source = checkpoint.parent if checkpoint.name in RUN_CHECKPOINTS else checkpoint
    if target == source or source in target.parents or target in source.parents:
        relation = ('is' if target == source else 'lies inside' if source in target.parents else 'contains')
        raise PublishError(
            f'--output {out} {relation} the run folder {source} of the checkpoint; publishing replaces --output, which '
            f'would delete the run (train_state.pt, best/, metrics.jsonl): choose a folder outside it')


def _check_tag(tag: str, what: str) -> str:
    if not is_tag(tag):
        raise PublishError(f'{what} {tag!r} has characters a pretrained tag cannot have (it becomes part of a model '
                           f'name, a Hub repository and a folder name): use {TAG_RULE}; pass tag=/--tag')
    return tag


def _published_cfg(pretrained_cfg: Mapping[str, Any], tag: str, repo_id: str, license: str) -> Dict[str, Any]:
    """The checkpoint's pretrained cfg (its preprocessing) under the published name: the tag and Hub
    id replace those of the weights training started from."""
    return dict(pretrained_cfg, tag=tag, hf_hub_id=repo_id, license=license)


def publish(
        checkpoint: PathLike,
        out: PathLike,
        tag: Optional[str] = None,
        repo_id: Optional[str] = None,
        push: bool = False,
        model_card: Optional[PathLike] = None,
        license: str = 'apache-2.0',
        protocol: str = 'single query, cosine distance, no re-ranking',
        overwrite: bool = False,
        progress: bool = True,
) -> PublishResult:
    """Write, verify and (with ``push=True``) upload the Hub folder of ``checkpoint``.

    Args:
        checkpoint: A checkpoint folder (``config.json`` + ``model.safetensors`` [+ ``train_state.pt``]).
        out: The Hub folder to write; it must be new or empty unless ``overwrite``, and outside the
            checkpoint's run folder. It is replaced whole, only once verified.
        tag: The pretrained tag (default: the dataset recorded in the weights' metadata).
        repo_id: The Hub repository (default ``<HUB_ORG>/<architecture>.<tag>``).
        push: Upload to the Hub after verification (needs a Hub login); otherwise a dry run.
        model_card: The card template (default: :func:`default_model_card`, the packaged ``MODEL_CARD.md``).
        license: Licence of the published weights (Hub front matter and pretrained cfg).
        protocol: Evaluation protocol recorded in the manifest entry.
        overwrite: Replace a non-empty ``out``.
        progress: Show a progress bar over the steps.
    """
    checkpoint, out = Path(checkpoint), Path(out)
    if tag is not None:
        _check_tag(tag, 'the tag given')
    if repo_id is not None:
        check_hub_id(repo_id, 'repo_id')
    _refuse_out_in_source(checkpoint, out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise PublishError(f'{out} exists and is not empty; choose another --output or pass --overwrite')
    model_card = Path(model_card) if model_card is not None else default_model_card()
    if not model_card.is_file():
        raise PublishError(f'model card template {model_card} does not exist; pass model_card=/--model-card')
    steps = tqdm(total=4, desc='publish', disable=not progress)

    steps.set_postfix_str('checking weights')
    model = check_checkpoint(checkpoint)
    architecture = model.pretrained_cfg['architecture']
    model_args = json.loads((checkpoint / CONFIG_NAME).read_text()).get('model_args', {})
    with safetensors.safe_open(str(checkpoint / WEIGHTS_NAME), framework='pt') as f:
        metadata = f.metadata() or {}
    dataset = metadata.get(DATASET_METADATA_KEY, '')
    if not tag:
        if not dataset:
            raise PublishError('the weights record no dataset to name the tag after; pass tag=/--tag')
        tag = _check_tag(dataset, 'the dataset the weights record, the default tag,')
    repo_id = repo_id or hub_repo_id(architecture, tag)
    run = find_run_metrics(checkpoint)
    training_config = run.get('training_config', {})
    steps.update()

    steps.set_postfix_str('writing folder')
    model.pretrained_cfg = _published_cfg(model.pretrained_cfg, tag, repo_id, license)
    with atomic_folder(out) as staging:
        save_pretrained(model, staging, metadata={k: str(v) for k, v in metadata.items() if k != 'format'})
        calibration = read_calibration(checkpoint)
        if calibration:  # the operating points belong to these weights: they travel with them
            write_calibration(staging, calibration)
        sha256 = sha256_file(staging / WEIGHTS_NAME)
        facts = {
            'Architecture': f'`{architecture}`, model_args `{json.dumps(dict(model_args))}`',
            'Training data': describe_training_data(training_config, dataset),
            'Initialisation': describe_initialisation(training_config, architecture, model_args),
            'Input': _describe_preprocessing(model.pretrained_cfg),
            'Pretrained tag': f'`{tag}` (`config.json`)',
            '`model.safetensors` SHA-256': f'`{sha256}`',
        }
        with atomic_write(staging / README_NAME, 'w') as f:
            f.write(render_model_card(model_card.read_text(), repo_id, facts, run, license, calibration))
        steps.update()

        steps.set_postfix_str('verifying')
        reloaded = timm.create_model(f'local-dir:{staging.resolve()}', pretrained=True)
        diff = embedding_difference(model, reloaded)
        if not math.isclose(diff, 0.0, abs_tol=1e-6):
            raise PublishError(f'{out} loads back with eval embeddings {diff:.3g} away from the checkpoint\'s')
    steps.update()

    primary = next(iter(run.get('eval', {})), None)
    no_entry_reason = _tag_limitation(architecture, model_args, model.num_classes)
    entry = None if no_entry_reason else dict(
        model=architecture, tag=tag, hf_hub_id=repo_id, sha256=sha256, num_classes=model.num_classes,
        dataset=dataset or tag, protocol=protocol, training_config=training_config,
        metrics={k: run['eval'][primary][k] for k in ('mAP', 'rank1')} if primary else {}, license=license,
    )
    if entry is not None and tuple(model.pretrained_cfg['input_size']) != _default_input_size(architecture):
        entry['input_size'] = list(model.pretrained_cfg['input_size'])
    if push:
        steps.set_postfix_str(f'uploading to {repo_id}')
        _upload(out, repo_id)
    steps.update()
    steps.close()
    return PublishResult(out, repo_id, entry, no_entry_reason, diff, push)


def _default_input_size(architecture: str) -> tuple:
    return tuple(timm.models.get_pretrained_cfg(architecture).input_size)


def _tag_limitation(architecture: str, model_args: Mapping[str, Any], num_classes: int) -> str:
    """Why a registry tag could not rebuild this model ('' if it can): a tag carries weights and
    classes but no constructor arguments, so only an architecture's defaults fit one."""
    if architecture in GENERIC_MODELS:
        return f'{architecture} takes its backbone as an argument, which a pretrained tag cannot carry'
    defaults = timm.models.get_model_args(timm.create_model(architecture, num_classes=num_classes, device='meta'), {})
    differing = {k: v for k, v in model_args.items() if defaults.get(k) != v}
    if differing:
        return f'model_args {differing} differ from the {architecture} defaults, which a pretrained tag would use'
    return ''


def _upload(folder: Path, repo_id: str) -> None:
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo_id, repo_type='model', exist_ok=True)
    api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type='model',
                      commit_message='Publish with ptl-timm publish')
