"""Training curves: loss per epoch and mAP / Rank-1 of every evaluated dataset, one PNG."""
import os
from typing import Any, Dict, List, Union

from ptl_timm.utils import atomic_path

__all__ = ['plot_curves']


def plot_curves(history: List[Dict[str, Any]], path: Union[str, os.PathLike]) -> None:
    """Write the loss and the evaluation curves of ``history`` (the metrics.jsonl records) atomically."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_eval) = plt.subplots(1, 2, figsize=(10, 3.6))
    ax_loss.plot([r['epoch'] for r in history], [r['loss'] for r in history], marker='o', label='loss')
    ax_loss.set(xlabel='epoch', ylabel='training loss', title='loss')
    labels = sorted({name for r in history for name in r.get('eval', {})})
    for name in labels:
        points = [(r['epoch'], r['eval'][name]) for r in history if name in r.get('eval', {})]
        epochs = [e for e, _ in points]
        ax_eval.plot(epochs, [m['mAP'] for _, m in points], marker='o', label=f'{name} mAP')
        ax_eval.plot(epochs, [m['rank1'] for _, m in points], marker='s', linestyle='--', label=f'{name} Rank-1')
    ax_eval.set(xlabel='epoch', ylabel='%', title='evaluation')
    if labels:
        ax_eval.legend(fontsize='small')
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format='png', dpi=100)
    plt.close(fig)
