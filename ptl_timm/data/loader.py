"""Loading ReID records for training and testing: images, the P×K identity sampler, transforms.

The sampler follows torchreid's ``RandomIdentitySampler`` (all images of every identity cut into
groups of K, identities with fewer than K images oversampled, P distinct identities per batch), with
two differences that matter for reproducible and multi-GPU training: every epoch's order is a pure
function of ``(seed, epoch)``, so resuming at an epoch repeats it exactly; and with several processes
each one takes every ``num_replicas``-th batch, so the shards are disjoint and equally long.
"""
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch.distributed as dist
from PIL import Image, UnidentifiedImageError
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.data.auto_augment import augment_and_mix_transform, auto_augment_transform, rand_augment_transform
from timm.data.random_erasing import RandomErasing
from torch.utils.data import Dataset, Sampler
from torchvision import transforms as T

from ptl_timm.errors import ConfigError, CorruptFileError, DatasetError, DatasetFormatError, DatasetNotFoundError
from ptl_timm.utils import to_rgb
from .datasets import ReIDRecord

__all__ = ['CorruptImageError', 'ImageDataset', 'PKSampler', 'build_transforms', 'timm_augmentation', 'read_image']


class CorruptImageError(DatasetFormatError, CorruptFileError):
    """An image file of a dataset cannot be decoded."""


def read_image(path: str) -> Image.Image:
    """The 8-bit RGB image at ``path`` (:func:`ptl_timm.utils.to_rgb`: every mode, 16-bit and float
    included); a missing, undecodable or unconvertible file names itself and the fix."""
    try:
        with Image.open(path) as image:
            return to_rgb(image, path)
    except FileNotFoundError as e:
        raise DatasetNotFoundError(
            f'image {path} listed in the dataset does not exist; the dataset folder changed after it was read: '
            f'rebuild the dataset') from e
    except Image.DecompressionBombError as e:
        raise CorruptImageError(
            f'cannot decode image {path} ({e}); a person crop is never this large: resize the image or remove the '
            f'file') from e
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise CorruptImageError(
            f'cannot decode image {path} ({e}); the file is truncated or not an image: re-extract the dataset or '
            f'delete the file') from e


class ImageDataset(Dataset):
    """``records[i]`` → ``(transform(image), pid, camid, i)``."""

    def __init__(self, records: Sequence[ReIDRecord], transform: Optional[Any] = None):
        self.records = list(records)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> Tuple[Any, int, int, int]:
        record = self.records[index]
        image = read_image(record.path)
        if self.transform is not None:
            image = self.transform(image)
        return image, record.pid, record.camid, index


class PKSampler(Sampler[int]):
    """Batches of P identities × K images (``batch_size = P*K``), yielded as flat dataset indices.

    Args:
        records: the training records (their ``pid`` defines the identities).
        batch_size: images per batch and process; a multiple of ``num_instances``.
        num_instances: K, images per identity in a batch.
        seed: with the epoch (``set_epoch``), fixes the order.
        num_replicas, rank: the process group (default: torch.distributed's, else a single process).
    """

    def __init__(
            self,
            records: Sequence[ReIDRecord],
            batch_size: int,
            num_instances: int,
            seed: int = 0,
            num_replicas: Optional[int] = None,
            rank: Optional[int] = None,
    ):
        if num_instances < 1 or batch_size % num_instances:
            raise ConfigError(
                f'batch_size ({batch_size}) must be a positive multiple of num_instances ({num_instances})')
        if num_replicas is None:
            num_replicas = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        if rank is None:
            rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        if not 0 <= rank < num_replicas:
            raise ValueError(f'rank {rank} is outside 0..{num_replicas - 1}')
        pids = np.array([r.pid for r in records])
        self.identities = [np.flatnonzero(pids == pid) for pid in np.unique(pids)]
        self.num_identities = batch_size // num_instances
        if len(self.identities) < self.num_identities:
            raise DatasetError(
                f'a P×K batch of {batch_size} with K={num_instances} needs {self.num_identities} identities, but the '
                f'training set has {len(self.identities)}; lower batch_size or raise num_instances')
        self.batch_size = batch_size
        self.num_instances = num_instances
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.epoch = 0
        self._cache: Optional[Tuple[int, List[np.ndarray]]] = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def state_dict(self) -> Dict[str, int]:
        return dict(seed=self.seed, epoch=self.epoch)

    def load_state_dict(self, state: Dict[str, int]) -> None:
        self.seed, self.epoch = int(state['seed']), int(state['epoch'])

    def _groups(self, rng: np.random.Generator) -> List[List[np.ndarray]]:
        """Per identity, its images shuffled and cut into groups of K (last partial group dropped)."""
        k = self.num_instances
        groups = []
        for indices in self.identities:
            indices = rng.choice(indices, size=k, replace=True) if len(indices) < k else rng.permutation(indices)
            groups.append([indices[i:i + k] for i in range(0, len(indices) - k + 1, k)])
        return groups

    def global_batches(self) -> List[np.ndarray]:
        """All processes' batches of the current epoch, in order (rank r takes batches r, r+W, ...)."""
        if self._cache is not None and self._cache[0] == self.epoch:
            return self._cache[1]
        rng = np.random.default_rng([self.seed, self.epoch])
        groups = self._groups(rng)
        batches = []
        available = [i for i, g in enumerate(groups) if g]
        while len(available) >= self.num_identities:
            chosen = rng.choice(available, size=self.num_identities, replace=False)
            batches.append(np.concatenate([groups[i].pop() for i in chosen]))
            available = [i for i in available if groups[i]]
        batches = batches[:len(batches) - len(batches) % self.num_replicas]
        self._cache = (self.epoch, batches)
        return batches

    def __iter__(self) -> Iterator[int]:
        for batch in self.global_batches()[self.rank::self.num_replicas]:
            yield from batch.tolist()

    def __len__(self) -> int:
        return len(self.global_batches()) // self.num_replicas * self.batch_size


def timm_augmentation(augment: str, img_size: Sequence[int], mean: Sequence[float] = IMAGENET_DEFAULT_MEAN) -> Any:
    """timm's RandAugment ('rand-m9-mstd0.5'), AugMix ('augmix-m5-w4-d2') or AutoAugment ('original',
    'v0', '3a', ...) from its config string, with the hyper-parameters timm's transform factory gives them."""
    hparams = dict(translate_const=int(min(img_size) * 0.45), img_mean=tuple(round(255 * m) for m in mean))
    try:
        if augment.startswith('rand'):
            return rand_augment_transform(augment, hparams)
        if augment.startswith('augmix'):
            return augment_and_mix_transform(augment, dict(hparams, translate_pct=0.3))
        return auto_augment_transform(augment, hparams)
    except (AssertionError, KeyError, ValueError) as e:
        raise ConfigError(
            f'augment {augment!r} is not a timm augmentation string ({e!r}); use e.g. \'rand-m9-mstd0.5\' '
            f'(RandAugment), \'augmix-m5-w4-d2\' (AugMix) or \'original\' (AutoAugment)') from e


def build_transforms(
        img_size: Sequence[int],
        is_training: bool,
        random_erasing: float = 0.0,
        flip: float = 0.5,
        padding: int = 10,
        mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
        std: Sequence[float] = IMAGENET_DEFAULT_STD,
        augment: str = '',
        color_jitter: float = 0.0,
) -> T.Compose:
    """The ReID transforms (BoT recipe): resize to ``img_size`` (height, width); for training also
    horizontal flip, pad-and-random-crop and random erasing (timm's, filled with the mean colour), and
    optionally colour jitter (brightness, contrast and saturation by ``color_jitter``) and a timm
    augmentation (``timm_augmentation``) after the crop."""
    size = (int(img_size[0]), int(img_size[1]))
    steps: List[Any] = [T.Resize(size, interpolation=T.InterpolationMode.BILINEAR)]
    if is_training:
        steps += [T.RandomHorizontalFlip(flip)]
        if padding:
            steps += [T.Pad(padding), T.RandomCrop(size)]
        if color_jitter:
            steps += [T.ColorJitter(color_jitter, color_jitter, color_jitter)]
        if augment:
            steps += [timm_augmentation(augment, size, mean)]
    steps += [T.ToTensor(), T.Normalize(mean=mean, std=std)]
    if is_training and random_erasing > 0:
        steps += [RandomErasing(probability=random_erasing, mode='const', device='cpu')]
    return T.Compose(steps)
