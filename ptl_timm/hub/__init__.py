"""The hub part, on top of the model family: the model folder format (saving, and the one strict
loader of every reader), published weights (manifest tags and the offline fail-fast check, layered
onto timm's registry when this package is imported), the calibration stored with the weights
(``ptl_timm.hub.calibration``), publishing (``ptl_timm.hub.publish``) and ONNX export
(``ptl_timm.hub.export``)."""
from ptl_timm import models  # noqa: F401  (the architectures the tags and the check are layered onto)
from .folder import (
    CONFIG_NAME, DATASET_METADATA_KEY, HUB_PREFIX, LOCAL_DIR_PREFIX, TIMM_HUB_PREFIX, TRAIN_STATE_NAME, WEIGHTS_NAME,
    check_hub_id, check_model_source, load_model, load_weights_strict, save_pretrained, set_preprocessing,
    weights_digest)
from .pretrained import register_published_weights

register_published_weights()
