"""Evaluation and retrieval: exact chunked ReID metrics, k-reciprocal re-ranking, feature extraction,
operating points (calibrated same-person thresholds) and the protocol for data without cameras."""
from .extract import (
    FeatureExtractor, eval_data_config, evaluate_features, evaluate_model, extract_features, image_files,
)
from .features import FeatureSet, load_features, save_features
from .metrics import evaluate_distance_chunks, evaluate_distmat, evaluate_rank, pairwise_distance_chunks
from .rerank import iter_re_ranking, re_ranking
from .aqe import query_expansion
from .analysis import ROC_FPRS, VerificationRates, camera_pair_map, tpr_at_fpr, tpr_at_fpr_chunks
from .protocol import PROTOCOLS, resolve_protocol
from .calibration import CALIBRATION_KEY, calibrate, operating_points, read_calibration, verify
