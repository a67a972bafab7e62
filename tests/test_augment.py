"""timm's augmentations in the ReID training transforms."""
import random

import numpy as np
import pytest
import torch
from PIL import Image
from timm.data.auto_augment import AugMixAugment, AutoAugment, RandAugment
from torchvision import transforms as T

from ptl_timm.data.loader import build_transforms
from ptl_timm.errors import ConfigError

IMAGE = Image.fromarray(np.random.default_rng(0).integers(0, 255, (128, 64, 3), dtype=np.uint8))


@pytest.mark.parametrize('augment, kind', [
    ('rand-m9-mstd0.5', RandAugment), ('augmix-m5-w4-d2', AugMixAugment), ('original', AutoAugment)])
def test_timm_augmentation_runs_after_the_crop_and_keeps_the_size(augment, kind):
    transform = build_transforms((64, 32), is_training=True, augment=augment, color_jitter=0.4)
    kinds = [type(t) for t in transform.transforms]
    assert kinds.index(kind) == kinds.index(T.ColorJitter) + 1 == kinds.index(T.RandomCrop) + 2
    assert transform(IMAGE).shape == (3, 64, 32)


def test_augmentation_changes_images_and_evaluation_never_augments():
    torch.manual_seed(0)
    plain = build_transforms((64, 32), is_training=True, padding=0, flip=0.0)
    augmented = build_transforms((64, 32), is_training=True, padding=0, flip=0.0, augment='rand-m9-n3-mstd0')
    random.seed(0)  # timm's RandAugment draws its ops (each applied with probability 0.5) from `random`
    assert any(not torch.equal(plain(IMAGE), augmented(IMAGE)) for _ in range(10))
    evaluation = build_transforms((64, 32), is_training=False, augment='rand-m9-mstd0.5', color_jitter=0.4)
    assert [type(t) for t in evaluation.transforms] == [T.Resize, T.ToTensor, T.Normalize]


def test_unknown_augmentation_string_is_a_config_error():
    with pytest.raises(ConfigError, match="augment 'bogus' is not a timm augmentation string"):
        build_transforms((64, 32), is_training=True, augment='bogus')
