"""Training curves: loss per epoch and mAP / Rank-1 of every evaluated dataset, one PNG."""
from typing import Any, Dict, List, Tuple

from .io import PathLike, atomic_path

__all__ = ['plot_curves']


def _eval_points(history: List[Dict[str, Any]]) -> Dict[str, List[Tuple[int, Dict[str, float]]]]:
    """(epoch, metrics) of every evaluated dataset, by dataset label."""
    labels = sorted({name for r in history for name in r.get('eval', {})})
    return {name: [(r['epoch'], r['eval'][name]) for r in history if name in r.get('eval', {})] for name in labels}


def plot_curves(history: List[Dict[str, Any]], path: PathLike) -> None:
    """Write the loss and the evaluation curves of ``history`` (the metrics.jsonl records) atomically.

    The evaluation panel appears once some dataset was evaluated at two epochs or more; a single
    evaluation is written as text under the loss curve instead of a lone point on an epoch axis.
    Drawn on a ``matplotlib.figure.Figure`` (no pyplot), so the caller's matplotlib backend and open
    figures are left alone.
    """
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    points = _eval_points(history)
    curves = any(len(p) > 1 for p in points.values())
    width, height = (10 if curves else 5.5), 3.6
    fig = Figure(figsize=(width, height))
    ax_loss, *rest = fig.subplots(1, 2 if curves else 1, squeeze=False)[0]
    ax_loss.plot([r['epoch'] for r in history], [r['loss'] for r in history], marker='o', label='loss')
    ax_loss.set(xlabel='epoch', ylabel='training loss', title='loss')
    ax_loss.xaxis.set_major_locator(MaxNLocator(integer=True))
    if curves:
        ax_eval = rest[0]
        for name, evaluated in points.items():
            epochs = [e for e, _ in evaluated]
            ax_eval.plot(epochs, [m['mAP'] for _, m in evaluated], marker='o', label=f'{name} mAP')
            ax_eval.plot(epochs, [m['rank1'] for _, m in evaluated], marker='s', linestyle='--',
                         label=f'{name} Rank-1')
        ax_eval.set(xlabel='epoch', ylabel='%', title='evaluation')
        ax_eval.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax_eval.legend(fontsize='small')
    elif points:
        text = '; '.join(f'{name} (epoch {e}): mAP {m["mAP"]:.1f}, Rank-1 {m["rank1"]:.1f}'
                         for name, ((e, m),) in points.items())
        fig.text(0.5, 0.01, text, ha='center', va='bottom', fontsize='small', wrap=True)
        fig.subplots_adjust(bottom=0.28)
    if curves or not points:  # margins in inches: tight_layout measures every label, slower than the drawing
        fig.subplots_adjust(left=0.8 / width, right=1 - 0.2 / width, bottom=0.55 / height, top=1 - 0.35 / height,
                            wspace=0.22)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format='png', dpi=100)
