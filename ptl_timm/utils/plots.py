"""Training curves: loss per epoch and mAP / Rank-1 of every evaluated dataset, one PNG."""
from typing import TYPE_CHECKING, Any, Dict, List, Tuple

from .io import PathLike, atomic_path

if TYPE_CHECKING:  # matplotlib is imported when a figure is drawn, not with the package
    from matplotlib.figure import Figure

__all__ = ['plot_curves', 'curves_figure']


def _eval_points(history: List[Dict[str, Any]]) -> Dict[str, List[Tuple[int, Dict[str, float]]]]:
    """(epoch, metrics) of every evaluated dataset, by dataset label."""
    labels = sorted({name for r in history for name in r.get('eval', {})})
    return {name: [(r['epoch'], r['eval'][name]) for r in history if name in r.get('eval', {})] for name in labels}


def plot_curves(history: List[Dict[str, Any]], path: PathLike) -> None:
    """Write :func:`curves_figure` of ``history`` (the metrics.jsonl records) to the PNG ``path`` atomically."""
    fig = curves_figure(history)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format='png', dpi=100)


def curves_figure(history: List[Dict[str, Any]]) -> 'Figure':
    """The loss and the evaluation curves of ``history``.

    The evaluation panel appears once some dataset was evaluated at two epochs or more; a single
    evaluation is written as text under the loss curve instead of a lone point on an epoch axis.
    Drawn on a ``matplotlib.figure.Figure`` (no pyplot), so the caller's matplotlib backend and open
    figures are left alone.
    """
    from matplotlib.figure import Figure
    from matplotlib.ticker import FixedLocator, MaxNLocator

    points = _eval_points(history)
    curves = any(len(p) > 1 for p in points.values())
    width, height = (10 if curves else 5.5), 3.6
    fig = Figure(figsize=(width, height))
    ax_loss, *rest = fig.subplots(1, 2 if curves else 1, squeeze=False)[0]
    ax_loss.plot([r['epoch'] for r in history], [r['loss'] for r in history], marker='o', label='loss')
    ax_loss.set(xlabel='epoch', ylabel='training loss')
    ax_loss.set_title('loss', y=1.0)
    # integer epoch ticks; a lone epoch gets its own (the locator would fall back to fractions around it)
    lone = len(history) == 1
    ax_loss.xaxis.set_major_locator(FixedLocator([history[0]['epoch']]) if lone else MaxNLocator(integer=True))
    if curves:
        ax_eval = rest[0]
        for name, evaluated in points.items():
            epochs = [e for e, _ in evaluated]
            ax_eval.plot(epochs, [m['mAP'] for _, m in evaluated], marker='o', label=f'{name} mAP')
            ax_eval.plot(epochs, [m['rank1'] for _, m in evaluated], marker='s', linestyle='--',
                         label=f'{name} Rank-1')
        ax_eval.set(xlabel='epoch', ylabel='%')
        ax_eval.set_title('evaluation', y=1.0)
        ax_eval.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax_eval.legend(fontsize='small')
    elif points:
        text = '; '.join(f'{name} (epoch {e}): mAP {m["mAP"]:.1f}, Rank-1 {m["rank1"]:.1f}'
                         for name, ((e, m),) in points.items())
        fig.text(0.5, 0.01, text, ha='center', va='bottom', fontsize='small', wrap=True)
    # margins in inches (tight_layout measures every label, slower than the drawing); room for the text line
    bottom = 1.0 if points and not curves else 0.55
    fig.subplots_adjust(left=0.9 / width, right=1 - 0.2 / width, bottom=bottom / height, top=1 - 0.35 / height,
                        wspace=0.24)
    return fig
