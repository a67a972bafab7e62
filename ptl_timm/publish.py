"""Turn a training checkpoint into a Hugging Face Hub folder, verify it, and optionally upload it.

``publish(checkpoint, out)`` refuses weights that would mislead a user (a config that names another
architecture than the tensors hold, NaN/Inf values), writes ``config.json`` (timm's format) +
``model.safetensors`` + a ``README.md`` model card rendered from ``MODEL_CARD.md`` with the run's
metrics, loads the folder back through timm's ``local-dir:`` route and checks its eval embeddings
equal the checkpoint's, and returns the ``weights/manifest.json`` entry that makes the weights a
registry tag. Nothing leaves the machine without ``push=True``.
"""
import dataclasses
import json
import math
import os
import re
import shutil
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Union

import safetensors.torch
import timm
from timm.models._input import get_model_args
import torch
import torch.nn as nn
from tqdm import tqdm

from ptl_timm.engine.checkpoint import TRAIN_STATE_NAME
from ptl_timm.hub import CONFIG_NAME, DATASET_METADATA_KEY, WEIGHTS_NAME, save_pretrained
from ptl_timm.models.registry import GENERIC_MODELS
from ptl_timm.utils import atomic_write
from ptl_timm.weights import hub_repo_id, sha256_file

__all__ = [
    'PublishError', 'PublishResult', 'publish', 'check_checkpoint', 'find_run_metrics', 'render_model_card',
    'embedding_difference', 'README_NAME', 'TRAIN_STATE_NAME',
]

README_NAME = 'README.md'
MODEL_CARD_NAME = 'MODEL_CARD.md'
HUB_FILES = (CONFIG_NAME, WEIGHTS_NAME, README_NAME)
# MODEL_CARD.md sections about the repository's state (e.g. "nothing published yet"), not a checkpoint's
_REPOSITORY_ONLY = re.compile(r'<!-- repository-only:begin.*?<!-- repository-only:end -->\n?', re.DOTALL)
PathLike = Union[str, os.PathLike]


class PublishError(ValueError):
    """A checkpoint that must not be published as it is (wrong architecture, non-finite weights)."""


@dataclasses.dataclass
class PublishResult:
    """What ``publish`` wrote and checked."""
    folder: Path
    repo_id: str
    manifest_entry: Optional[Dict[str, Any]]  # None when a registry tag could not rebuild the model
    no_entry_reason: str
    max_embedding_diff: float
    pushed: bool


def _read_config(checkpoint: Path) -> Dict[str, Any]:
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        if not (checkpoint / name).is_file():
            raise FileNotFoundError(
                f'{checkpoint} is not a checkpoint folder: it has no {name} (a checkpoint holds {CONFIG_NAME} + '
                f'{WEIGHTS_NAME}, written by `ptl-timm train` or ptl_timm.hub.save_pretrained)')
    config = json.loads((checkpoint / CONFIG_NAME).read_text())
    if not timm.is_model(config.get('architecture', '')):
        raise PublishError(
            f'{checkpoint / CONFIG_NAME} names architecture {config.get("architecture")!r}, which is not a registered '
            f'timm model (is ptl_timm imported, is it the right folder?)')
    return config


def check_checkpoint(checkpoint: PathLike) -> nn.Module:
    """The checkpoint's model, built from its ``config.json`` and loaded strictly from its weights.

    Raises ``PublishError`` when the tensors do not belong to the configured architecture (names or
    shapes differ) or any of them holds NaN or Inf.
    """
    checkpoint = Path(checkpoint)
    config = _read_config(checkpoint)
    state_dict = safetensors.torch.load_file(str(checkpoint / WEIGHTS_NAME))
    non_finite = [k for k, v in state_dict.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if non_finite:
        raise PublishError(
            f'{checkpoint / WEIGHTS_NAME} has NaN/Inf values in {len(non_finite)} tensors (e.g. {non_finite[:3]}); '
            f'the run diverged: publish an earlier checkpoint')
    model = timm.create_model(config['architecture'], pretrained=False, **config.get('model_args', {}))
    own = model.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    reshaped = sorted(k for k in set(own) & set(state_dict) if own[k].shape != state_dict[k].shape)
    if missing or unexpected or reshaped:
        raise PublishError(
            f'the weights in {checkpoint} do not belong to the {config["architecture"]} model its {CONFIG_NAME} '
            f'describes (model_args {config.get("model_args", {})}): {len(missing)} missing, {len(unexpected)} '
            f'unexpected and {len(reshaped)} reshaped tensors, e.g. {(missing + unexpected + reshaped)[:3]}; '
            f'pair the weights with the config.json they were saved with')
    model.load_state_dict(state_dict)
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
        state = torch.load(own_state, map_location='cpu', weights_only=True)
        record = next((r for r in state.get('history', []) if r.get('epoch') == state.get('epoch')), None)
    elif checkpoint.name == 'best' and (checkpoint.parent / 'last' / TRAIN_STATE_NAME).is_file():
        state = torch.load(checkpoint.parent / 'last' / TRAIN_STATE_NAME, map_location='cpu', weights_only=True)
        record = state.get('best')
    else:
        return {}
    if not record or 'eval' not in record:
        return dict(training_config=state.get('config', {}))
    return dict(eval=record['eval'], epoch=record['epoch'], training_config=state.get('config', {}))


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


def render_model_card(
        model_card: str,
        repo_id: str,
        architecture: str,
        model_args: Mapping[str, Any],
        run: Mapping[str, Any],
        dataset: str,
        license: str,
        sha256: str,
) -> str:
    """The Hub README: front matter, this checkpoint's facts (metrics, usage), then ``MODEL_CARD.md``."""
    lines = [
        '---',
        'library_name: timm',
        f'license: {license}',
        'pipeline_tag: image-feature-extraction',
        'tags:', '- timm', '- ptl_timm', '- person-reid', '- image-feature-extraction',
        '---',
        f'# {repo_id}',
        '',
        f'`{architecture}` person re-identification weights for the `ptl_timm` package (Progressive Transfer '
        'Learning, IJCAI-19, on timm; paper code: https://github.com/ZJULearning/PTL).',
        '',
        '## This checkpoint',
        '',
        f'- Architecture: `{architecture}`, model_args `{json.dumps(dict(model_args))}`',
        f'- Training data: {dataset or "not recorded"}',
        f'- `model.safetensors` SHA-256: `{sha256}`',
    ]
    if run.get('eval'):
        lines += ['', f'Evaluation of these weights by ptl_timm (epoch {run["epoch"]}, single query, '
                      'no re-ranking):', '', *_metrics_table(run['eval'])]
    else:
        lines += ['', 'These weights were not evaluated by the training run; no metrics are claimed for them.']
    lines += [
        '',
        '## Usage',
        '',
        'timm needs the `ptl_timm` package to build this architecture:',
        '',
        '```bash',
        'pip install ptl_timm',
        '```',
        '',
        '```python',
        'import timm',
        'import ptl_timm  # registers the ptl_timm architectures in timm',
        '',
        f"model = timm.create_model('hf-hub:{repo_id}', pretrained=True, num_classes=0).eval()",
        'data_config = timm.data.resolve_data_config({}, model=model)',
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


def _default_model_card() -> Path:
    return Path(__file__).resolve().parent.parent / MODEL_CARD_NAME


def _prepare_out(out: Path, overwrite: bool) -> None:
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise PublishError(f'{out} exists and is not empty; choose another --out or pass --overwrite')
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


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
        out: The Hub folder to write; it must be new or empty unless ``overwrite``.
        tag: The pretrained tag (default: the dataset recorded in the weights' metadata).
        repo_id: The Hub repository (default ``<HUB_ORG>/<architecture>.<tag>``).
        push: Upload to the Hub after verification (needs a Hub login); otherwise a dry run.
        model_card: The card template (default: the repository's ``MODEL_CARD.md``).
        license: Licence of the published weights (Hub front matter and pretrained cfg).
        protocol: Evaluation protocol recorded in the manifest entry.
        overwrite: Replace a non-empty ``out``.
        progress: Show a progress bar over the steps.
    """
    checkpoint, out = Path(checkpoint), Path(out)
    model_card = Path(model_card) if model_card is not None else _default_model_card()
    if not model_card.is_file():
        raise FileNotFoundError(f'model card template {model_card} does not exist; pass model_card=/--model-card')
    steps = tqdm(total=4, desc='publish', disable=not progress)

    steps.set_postfix_str('checking weights')
    model = check_checkpoint(checkpoint)
    config = _read_config(checkpoint)
    architecture, model_args = config['architecture'], config.get('model_args', {})
    with safetensors.safe_open(str(checkpoint / WEIGHTS_NAME), framework='pt') as f:
        metadata = f.metadata() or {}
    dataset = metadata.get(DATASET_METADATA_KEY, '')
    tag = tag or dataset
    if not tag or '.' in tag:
        raise ValueError(f'the weights record no dataset to name the tag after (got {tag!r}); pass tag=/--tag')
    repo_id = repo_id or hub_repo_id(architecture, tag)
    run = find_run_metrics(checkpoint)
    steps.update()

    steps.set_postfix_str('writing folder')
    _prepare_out(out, overwrite)
    model.pretrained_cfg = dict(model.pretrained_cfg, license=license)
    save_pretrained(model, out, metadata={k: str(v) for k, v in metadata.items() if k != 'format'})
    sha256 = sha256_file(out / WEIGHTS_NAME)
    card = render_model_card(
        model_card.read_text(), repo_id, architecture, model_args, run, dataset, license, sha256)
    with atomic_write(out / README_NAME, 'w') as f:
        f.write(card)
    steps.update()

    steps.set_postfix_str('verifying')
    extra = sorted(p.name for p in out.iterdir() if p.name not in HUB_FILES)
    if extra:
        raise PublishError(f'{out} holds files other than {HUB_FILES}: {extra}')
    reloaded = timm.create_model(f'local-dir:{out.resolve()}', pretrained=True)
    diff = embedding_difference(model, reloaded)
    if not math.isclose(diff, 0.0, abs_tol=1e-6):
        raise PublishError(f'{out} loads back with eval embeddings {diff:.3g} away from the checkpoint\'s')
    steps.update()

    primary = next(iter(run.get('eval', {})), None)
    no_entry_reason = _tag_limitation(architecture, model_args, model.num_classes)
    entry = None if no_entry_reason else dict(
        model=architecture, tag=tag, hf_hub_id=repo_id, sha256=sha256, num_classes=model.num_classes,
        dataset=dataset or tag, protocol=protocol, training_config=run.get('training_config', {}),
        metrics={k: run['eval'][primary][k] for k in ('mAP', 'rank1')} if primary else {}, license=license,
    )
    if push:
        steps.set_postfix_str(f'uploading to {repo_id}')
        _upload(out, repo_id)
    steps.update()
    steps.close()
    return PublishResult(out, repo_id, entry, no_entry_reason, diff, push)


def _tag_limitation(architecture: str, model_args: Mapping[str, Any], num_classes: int) -> str:
    """Why a registry tag could not rebuild this model ('' if it can): a tag carries weights and
    classes but no constructor arguments, so only an architecture's defaults fit one."""
    if architecture in GENERIC_MODELS:
        return f'{architecture} takes its backbone as an argument, which a pretrained tag cannot carry'
    defaults = get_model_args(timm.create_model(architecture, num_classes=num_classes, device='meta'), {})
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
