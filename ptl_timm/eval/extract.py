"""Feature extraction: images → L2-normalised ReID embeddings, and model evaluation on a dataset split.

Extraction always runs the model in eval mode under ``torch.inference_mode``: every BConv-Cell then
treats its latent state as zero, so an embedding depends on its image only, never on the batch or on
what was seen before. The embedding is ``forward_reid(x).embedding`` for ptl_timm models and the
pooled pre-logits feature (``forward_head(..., pre_logits=True)``) for any other timm model. Flip
test-time augmentation sums the embeddings of the image and its mirror before normalising (as the
official PTL code and layumi's baseline do).
"""
import logging
import os
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from timm.data import create_transform, resolve_data_config
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ptl_timm.data.datasets import ReIDDataset, labels_from_names
from ptl_timm.data.loader import ImageDataset, read_image
from ptl_timm.errors import DatasetFormatError, DatasetNotFoundError, InputError, NonFiniteError
from ptl_timm.hub import load_model, weights_digest
from ptl_timm.models import embed
from ptl_timm.utils import PathLike, resolve_device, to_rgb
from ptl_timm.utils.images import IMAGE_EXTENSIONS, list_images
from .analysis import VerificationRates
from .features import FeatureSet
from .metrics import evaluate_distance_chunks, pairwise_distance_chunks
from .rerank import iter_re_ranking

__all__ = [
    'extract_features', 'eval_data_config', 'FeatureExtractor', 'evaluate_model', 'evaluate_features',
    'image_files', 'IMAGE_EXTENSIONS']

_logger = logging.getLogger(__name__)
ImageSource = Union[str, os.PathLike, Image.Image, torch.Tensor, Sequence[Union[str, os.PathLike, Image.Image]]]


def _model_device(model: nn.Module) -> torch.device:
    return next(model.parameters(), torch.empty(0)).device


def extract_features(
        model: nn.Module,
        loader: Iterable,
        flip: bool = False,
        device: Optional[Union[str, torch.device]] = None,
        progress: bool = True,
        channels_last: bool = False,
        desc: str = 'extract',
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Embeddings of every batch of ``loader`` (L2-normalised, float32, on CPU) with its pids and camids;
    ``desc`` names the progress bar (``'extract query'``: which split is running).

    Batches are ``(images, pids, camids, ...)`` as :class:`ptl_timm.data.loader.ImageDataset` yields,
    or ``(images,)`` / bare image tensors (pids and camids then -1). The model runs in eval mode on
    ``device`` (default: where its parameters are) and is put back in its previous mode afterwards.
    An embedding with NaN or Inf (weights of a diverged run) raises ``NonFiniteError`` naming how many
    images have one: ranks or files made of them would be meaningless.
    """
    device = resolve_device(device) if device is not None else _model_device(model)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    was_training = model.training
    model.eval()
    feats, pids, camids = [], [], []
    non_finite = 0
    try:
        with torch.inference_mode():
            for batch in tqdm(loader, desc=desc, unit='batch', disable=not progress, leave=False):
                images = batch if isinstance(batch, torch.Tensor) else batch[0]
                images = images.to(device, non_blocking=True).contiguous(memory_format=memory_format)
                embedding = embed(model, images).float()
                if flip:
                    embedding = embedding + embed(model, images.flip(3)).float()
                non_finite += int((~torch.isfinite(embedding).all(dim=1)).sum())
                feats.append(F.normalize(embedding, dim=1).cpu())
                unknown = torch.full((len(images),), -1, dtype=torch.int64)
                labelled = not isinstance(batch, torch.Tensor) and len(batch) >= 3
                pids.append(torch.as_tensor(batch[1]).long() if labelled else unknown)
                camids.append(torch.as_tensor(batch[2]).long() if labelled else unknown)
    finally:
        model.train(was_training)
    if not feats:
        raise InputError('no images to extract features from (the loader is empty)')
    feats = torch.cat(feats)
    if non_finite:
        raise NonFiniteError(f'the model gives NaN/Inf embeddings for {non_finite} of {len(feats)} images: its weights '
                             f'hold NaN/Inf (a diverged run?) or the input does; use an earlier checkpoint')
    return feats, torch.cat(pids), torch.cat(camids)


def image_files(folder: PathLike) -> List[str]:
    """Every image under ``folder`` (recursively), in sorted path order."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise DatasetNotFoundError(f'image folder {folder} does not exist')
    files = [str(p) for p in list_images(folder, recursive=True)]
    if not files:
        raise DatasetNotFoundError(f'{folder} holds no images ({", ".join(IMAGE_EXTENSIONS)})')
    return files


def eval_data_config(pretrained_cfg: Mapping[str, Any], img_size: Optional[Sequence[int]] = None) -> Dict[str, Any]:
    """The preprocessing a model's weights expect, as timm's data config (input size, interpolation,
    crop, mean/std): exactly what ``timm.data.resolve_data_config(model=m)`` gives for its
    ``pretrained_cfg``. ``img_size`` (height, width) replaces the input size, with a warning naming
    both when they differ (features at another size than the weights were trained at are worse)."""
    data_cfg = resolve_data_config({}, pretrained_cfg=dict(pretrained_cfg))
    if img_size is not None:
        recorded = tuple(data_cfg['input_size'][1:])
        if tuple(int(s) for s in img_size) != recorded:
            _logger.warning(
                f'image size {tuple(img_size)} differs from the {recorded} that the model\'s pretrained_cfg (its '
                f'config.json) records for its weights; leave the size unset to use the recorded one')
        data_cfg['input_size'] = (data_cfg['input_size'][0], int(img_size[0]), int(img_size[1]))
    return data_cfg


class _Images(Dataset):
    """Image paths or PIL images, transformed; a path that is missing or corrupt raises with its name."""

    def __init__(self, items: Sequence[Union[str, Image.Image]], transform: Any):
        self.items, self.transform = list(items), transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> torch.Tensor:
        item = self.items[index]
        image = to_rgb(item, f'number {index}') if isinstance(item, Image.Image) else read_image(str(item))
        return self.transform(image)


class FeatureExtractor:
    """Images → L2-normalised ReID embeddings, batched, with any ptl_timm or timm model.

    Args:
        model: a module, a timm model name with a pretrained tag, an ``hf-hub:``/``local-dir:`` id,
            a checkpoint folder or a ``.safetensors`` file beside its ``config.json``
            (see :func:`ptl_timm.hub.load_model`; the classifier is not built). A bare model name
            is refused unless ``random_weights``.
        device: default (None or 'auto') CUDA when available, else CPU.
        batch_size: images per forward pass.
        img_size: (height, width); default the model's ``pretrained_cfg['input_size']`` (a checkpoint's
            training size); another size warns. Interpolation, crop and mean/std always come from the
            ``pretrained_cfg`` (see :func:`eval_data_config`).
        flip: sum the embeddings of each image and its mirror (flip test-time augmentation).
        num_workers: DataLoader workers decoding images.
        channels_last: run in channels-last memory format (faster convolutions on many CPUs/GPUs).
        progress: show a progress bar.
        random_weights: build the architecture ``model`` names with random weights (benchmarking speed;
            the features mean nothing).

    ``extractor(images)`` / ``extractor.extract(images)`` takes image paths, a folder (every image
    below it, sorted by path), PIL images, or an already preprocessed tensor (B × 3 × H × W or one
    3 × H × W image) and returns an N × D float32 CPU tensor of unit-norm rows.
    """

    def __init__(
            self,
            model: Union[str, os.PathLike, nn.Module],
            device: Optional[Union[str, torch.device]] = None,
            batch_size: int = 64,
            img_size: Optional[Sequence[int]] = None,
            flip: bool = False,
            num_workers: int = 0,
            channels_last: bool = False,
            progress: bool = False,
            random_weights: bool = False,
    ):
        if isinstance(model, nn.Module) and random_weights:
            raise InputError('random_weights applies to a model source (a name, folder or Hub id), not to a module')
        self.device = resolve_device(device)  # before the model is read: a bad device is found at once
        if not isinstance(model, nn.Module):
            model = load_model(model, random_weights=random_weights, num_classes=0)
        self.model = model.to(self.device)  # extract_features switches to eval mode and back
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.data_config = eval_data_config(getattr(model, 'pretrained_cfg', None) or {}, img_size)
        self.img_size = tuple(self.data_config['input_size'][1:])
        self.transform = create_transform(**self.data_config, is_training=False)
        self.batch_size, self.flip, self.num_workers = batch_size, flip, num_workers
        self.channels_last, self.progress = channels_last, progress

    def extraction(self) -> Dict[str, Any]:
        """What decides the embeddings, as a calibration or a features file records it: the weights
        (``weights_sha256``, :func:`ptl_timm.hub.weights_digest`), the input size and flip. A model read
        from a source is built without its classifier, so the digest is that of the embedding's weights."""
        return dict(weights_sha256=weights_digest(self.model), input_size=[3, *self.img_size], flip=self.flip)

    def _loader(self, images: ImageSource) -> Iterable:
        if isinstance(images, torch.Tensor):
            batch = images.unsqueeze(0) if images.ndim == 3 else images
            if batch.ndim != 4:
                raise InputError(f'an image tensor must be 3 × H × W or B × 3 × H × W, got shape {tuple(images.shape)}')
            return batch.split(self.batch_size)
        if isinstance(images, (str, os.PathLike)):
            images = image_files(images) if Path(images).expanduser().is_dir() else [images]
        elif isinstance(images, Image.Image):
            images = [images]
        missing = [str(p) for p in images if not isinstance(p, Image.Image) and not os.path.isfile(p)]
        if missing:
            more = f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''
            raise DatasetNotFoundError(f'image {missing[0]} does not exist{more}')
        return DataLoader(_Images(images, self.transform), batch_size=self.batch_size, shuffle=False,
                          num_workers=self.num_workers, pin_memory=self.device.type == 'cuda')

    def extract(self, images: ImageSource, desc: str = 'extract') -> torch.Tensor:
        feats, _, _ = extract_features(self.model, self._loader(images), flip=self.flip, device=self.device,
                                       progress=self.progress, channels_last=self.channels_last, desc=desc)
        return feats

    __call__ = extract

    def extract_records(self, records: Sequence[Any],
                        desc: str = 'extract') -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Features, pids and camids of dataset records (``ReIDRecord``: path, pid, camid); ``desc`` names the
        progress bar (e.g. ``'extract gallery'``)."""
        loader = DataLoader(ImageDataset(records, self.transform), batch_size=self.batch_size, shuffle=False,
                            num_workers=self.num_workers, pin_memory=self.device.type == 'cuda')
        return extract_features(self.model, loader, flip=self.flip, device=self.device, progress=self.progress,
                                channels_last=self.channels_last, desc=desc)

    def extract_splits(self, dataset: ReIDDataset,
                       splits: Sequence[str] = ('query', 'gallery')) -> Dict[str, FeatureSet]:
        """A ``FeatureSet`` per split of ``dataset`` (``'train'``, ``'query'``, ``'gallery'``)."""
        sets = {}
        for split in splits:
            records = getattr(dataset, split)
            feats, pids, camids = self.extract_records(records, desc=f'extract {split}')
            sets[split] = FeatureSet(feats, pids, camids, [r.path for r in records])
        return sets

    def extract_images(self, paths: Sequence[str], name: str = 'images') -> FeatureSet:
        """Features of image files (the set ``name``: its progress bar says it), with identities and cameras when
        the file names carry them in a dataset's convention (``0002_c1s1_000451_01.jpg``), else unknown (-1)."""
        labels = labels_from_names(paths)
        pids, camids = (torch.tensor(x, dtype=torch.int64) for x in labels) if labels else (
            torch.full((len(paths),), -1, dtype=torch.int64) for _ in range(2))
        return FeatureSet(self(list(paths), desc=f'extract {name}'), pids, camids, list(paths))

    def extract_folder(self, folder: PathLike, name: str = 'images') -> FeatureSet:
        """Features of every image under ``folder`` (see :meth:`extract_images`)."""
        return self.extract_images(image_files(folder), name)


def evaluate_model(
        model: Union[str, os.PathLike, nn.Module],
        dataset: ReIDDataset,
        img_size: Optional[Sequence[int]] = None,
        batch_size: int = 64,
        flip: bool = False,
        metric: str = 'cosine',
        rerank: bool = False,
        device: Optional[Union[str, torch.device]] = None,
        num_workers: int = 0,
        progress: bool = True,
        random_weights: bool = False,
        **metric_kwargs,
) -> Dict[str, Any]:
    """mAP, CMC and mINP (fractions) of ``model`` on ``dataset``'s query/gallery split.

    ``model`` and ``random_weights`` as in :class:`FeatureExtractor`. ``rerank`` applies k-reciprocal
    re-ranking (k1=20, k2=6, λ=0.3) to the features; ``metric_kwargs`` go to
    :func:`ptl_timm.eval.metrics.evaluate_distance_chunks` (``ap_mode``, ``max_rank``, ...).
    """
    if not dataset.query or not dataset.gallery:
        raise DatasetFormatError(f'dataset {dataset.name!r} at {dataset.root} has no query or no gallery images')
    extractor = FeatureExtractor(model, device=device, batch_size=batch_size, img_size=img_size, flip=flip,
                                 num_workers=num_workers, progress=progress, random_weights=random_weights)
    q_feats, q_pids, q_camids = extractor.extract_records(dataset.query, desc='extract query')
    g_feats, g_pids, g_camids = extractor.extract_records(dataset.gallery, desc='extract gallery')
    return evaluate_features(q_feats, g_feats, q_pids, g_pids, q_camids, g_camids, metric=metric, rerank=rerank,
                             device=extractor.device, **metric_kwargs)


def evaluate_features(
        q_feats: torch.Tensor, g_feats: torch.Tensor, q_pids: torch.Tensor, g_pids: torch.Tensor,
        q_camids: torch.Tensor, g_camids: torch.Tensor, metric: str = 'cosine', rerank: bool = False,
        device: Optional[Union[str, torch.device]] = None, rerank_args: Optional[Mapping[str, Any]] = None,
        roc: bool = False, **metric_kwargs,
) -> Dict[str, Any]:
    """Metrics of saved or extracted features, optionally re-ranked (streamed, bounded memory).

    ``rerank_args``: ``k1``, ``k2``, ``lambda_value`` of the re-ranking (default 20, 6, 0.3). ``roc``
    adds ``tpr_at_fpr`` ({fpr: tpr}, :class:`~ptl_timm.eval.analysis.VerificationRates`), taken from the
    same pass over the (re-ranked) distances."""
    if rerank:
        chunks = iter_re_ranking(q_feats, g_feats, device=device, **(rerank_args or {}))
    else:
        chunks = pairwise_distance_chunks(q_feats, g_feats, metric=metric, device=device)
    rates = VerificationRates(q_pids, g_pids, q_camids, g_camids) if roc else None
    if rates is not None:
        chunks = _observed(chunks, rates)
    result = evaluate_distance_chunks(chunks, q_pids, g_pids, q_camids, g_camids, **metric_kwargs)
    if rates is not None:
        result['tpr_at_fpr'] = rates.result()
    return result


def _observed(chunks: Iterable[Tuple[slice, torch.Tensor]],
              rates: VerificationRates) -> Iterator[Tuple[slice, torch.Tensor]]:
    for rows, dist in chunks:
        rates.update(rows, dist)
        yield rows, dist
