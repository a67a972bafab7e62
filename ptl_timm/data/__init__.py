"""ReID data: dataset parsers, image loading, P×K sampling, transforms and a synthetic generator."""
from .datasets import (
    DATASETS, DatasetFormatError, DatasetNotFoundError, ReIDDataset, ReIDRecord, build_dataset, build_union,
)
from .loader import CorruptImageError, ImageDataset, PKSampler, build_transforms
from .synth import LAYOUTS, SYNTH_DOMAINS, generate_synthetic
