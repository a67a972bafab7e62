"""Query/gallery evaluation during training, sharded over the ranks of a distributed run.

Each rank extracts the features of its contiguous shard of the query and gallery lists (eval mode:
every BConv-Cell state is zero); the shards are gathered in rank order, so rank 0 ranks exactly
the features a single process would have, then shares the metrics with every rank.
"""
from collections import defaultdict
from typing import Dict, Set

import torch.nn as nn

from ptl_timm.data.datasets import ReIDDataset
from ptl_timm.errors import DatasetError, InputError
from ptl_timm.eval.aqe import query_expansion
from ptl_timm.eval.extract import evaluate_features, extract_features
from ptl_timm.eval.features import FeatureSet
from ptl_timm.eval.protocol import auto_protocol, resolve_protocol
from .config import TrainConfig
from .data import eval_loader
from .distributed import DistContext, broadcast_object, gather_rows

__all__ = ['check_evaluable', 'evaluate_split']


def check_evaluable(dataset: ReIDDataset, label: str) -> str:
    """The protocol (``camera`` or ``self``) the split will be evaluated under, refusing before any training a
    split that evaluation would fail on: no query or gallery images, cameras known for some images only, or no
    query whose identity the gallery shows from another camera (the protocol ignores same-camera matches, so
    such a split has no answer to rank)."""
    if not dataset.query or not dataset.gallery:
        raise DatasetError(f'dataset {label!r} at {dataset.root} has no query or no gallery images to evaluate on')
    records = dataset.query + dataset.gallery
    try:
        protocol = auto_protocol(sum(r.camid < 0 for r in records), len(records))
    except InputError as e:
        raise DatasetError(f'dataset {label!r} at {dataset.root}: {e}') from None
    cameras: Dict[int, Set[int]] = defaultdict(set)
    for record in dataset.gallery:
        cameras[record.pid].add(record.camid)
    # without any camera (a folder dataset without camera folders) only the query image itself is excluded
    excluded = (lambda q: set()) if protocol == 'self' else (lambda q: {q.camid})
    if not any(cameras.get(q.pid, set()) - excluded(q) for q in dataset.query):
        raise DatasetError(
            f'dataset {label!r} at {dataset.root}: no query identity appears in the gallery under another camera, '
            f'so there is nothing to evaluate (the protocol ignores same-camera matches); check the query and '
            f'gallery folders and their camera ids')
    return protocol


def _features(model: nn.Module, records, cfg: TrainConfig, ctx: DistContext, split: str):
    feats, pids, camids = extract_features(
        model, eval_loader(records, cfg, ctx), flip=cfg.eval_flip, device=ctx.device,
        progress=cfg.progress and ctx.is_main, channels_last=cfg.channels_last, desc=f'extract {split}')
    return tuple(gather_rows(t, ctx) for t in (feats, pids, camids))


def evaluate_split(model: nn.Module, dataset: ReIDDataset, cfg: TrainConfig, ctx: DistContext) -> Dict[str, float]:
    """mAP, Rank-1/5/10 and mINP (percent) of ``model`` on ``dataset``'s query/gallery split, and
    how many query and gallery features were ranked."""
    q_feats, q_pids, q_camids = _features(model, dataset.query, cfg, ctx, 'query')
    g_feats, g_pids, g_camids = _features(model, dataset.gallery, cfg, ctx, 'gallery')
    metrics = None
    if ctx.is_main:
        if cfg.eval_aqe:
            q_feats, g_feats = query_expansion(
                q_feats, g_feats, cfg.aqe_k, cfg.aqe_alpha, cfg.aqe_times, device=ctx.device)
        sets = [FeatureSet(feats, pids, camids, [r.path for r in records]) for feats, pids, camids, records in (
            (q_feats, q_pids, q_camids, dataset.query), (g_feats, g_pids, g_camids, dataset.gallery))]
        q_keys, g_keys = resolve_protocol(sets).keys  # cameras, or the file where no camera is known
        result = evaluate_features(
            q_feats, g_feats, q_pids, g_pids, q_keys, g_keys, metric=cfg.eval_metric, rerank=cfg.eval_rerank,
            device=ctx.device, rerank_args=dict(k1=cfg.rerank_k1, k2=cfg.rerank_k2, lambda_value=cfg.rerank_lambda))
        cmc = result['cmc']
        metrics = dict(
            mAP=100 * float(result['mAP']), rank1=100 * float(cmc[0]), rank5=100 * float(cmc[min(4, len(cmc) - 1)]),
            rank10=100 * float(cmc[min(9, len(cmc) - 1)]), mINP=100 * float(result['mINP']),
            num_query=int(q_feats.shape[0]), num_gallery=int(g_feats.shape[0]))
    return broadcast_object(metrics, ctx)
