"""Evaluation and retrieval: exact chunked ReID metrics, k-reciprocal re-ranking, feature extraction."""
from .metrics import evaluate_distance_chunks, evaluate_distmat, evaluate_rank, pairwise_distance_chunks
