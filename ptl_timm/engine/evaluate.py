"""Query/gallery evaluation during training, sharded over the ranks of a distributed run.

Each rank extracts the features of its contiguous shard of the query and gallery lists (eval mode:
every BConv-Cell state is zero); the shards are gathered in rank order, so rank 0 ranks exactly
the features a single process would have, then shares the metrics with every rank.
"""
from typing import Dict

import torch.nn as nn

from ptl_timm.data.datasets import ReIDDataset
from ptl_timm.eval.extract import extract_features
from ptl_timm.eval.metrics import evaluate_rank
from .config import TrainConfig
from .data import eval_loader
from .distributed import DistContext, broadcast_object, gather_rows

__all__ = ['evaluate_split']


def _features(model: nn.Module, records, cfg: TrainConfig, ctx: DistContext):
    feats, pids, camids = extract_features(
        model, eval_loader(records, cfg, ctx), flip=cfg.eval_flip, device=ctx.device,
        progress=cfg.progress and ctx.is_main, channels_last=cfg.channels_last)
    return tuple(gather_rows(t, ctx) for t in (feats, pids, camids))


def evaluate_split(model: nn.Module, dataset: ReIDDataset, cfg: TrainConfig, ctx: DistContext) -> Dict[str, float]:
    """mAP, Rank-1/5/10 and mINP (percent) of ``model`` on ``dataset``'s query/gallery split, and
    how many query and gallery features were ranked."""
    if not dataset.query or not dataset.gallery:
        raise ValueError(f'dataset at {dataset.root} has no query or no gallery images to evaluate on')
    q_feats, q_pids, q_camids = _features(model, dataset.query, cfg, ctx)
    g_feats, g_pids, g_camids = _features(model, dataset.gallery, cfg, ctx)
    metrics = None
    if ctx.is_main:
        result = evaluate_rank(q_feats, g_feats, q_pids, g_pids, q_camids, g_camids, metric=cfg.eval_metric,
                               device=ctx.device)
        cmc = result['cmc']
        metrics = dict(
            mAP=100 * float(result['mAP']), rank1=100 * float(cmc[0]), rank5=100 * float(cmc[min(4, len(cmc) - 1)]),
            rank10=100 * float(cmc[min(9, len(cmc) - 1)]), mINP=100 * float(result['mINP']),
            num_query=int(q_feats.shape[0]), num_gallery=int(g_feats.shape[0]))
    return broadcast_object(metrics, ctx)
