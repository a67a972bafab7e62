"""ReID data: dataset parsers, image loading, P×K sampling, transforms and a synthetic generator."""
from .datasets import (
    DATASETS, DatasetFormatError, DatasetNotFoundError, ReIDDataset, ReIDRecord, build_dataset, build_union,
)
