"""Training curves: an evaluation panel only when there is a curve to draw; the caller's matplotlib
state is left alone."""
import matplotlib
from PIL import Image

from ptl_timm.utils.plots import curves_figure, plot_curves


def _history(eval_epochs):
    return [dict(epoch=e, loss=3.0 / e, **({'eval': {'synth-street': dict(mAP=10.0 * e, rank1=20.0 * e)}}
                                             if e in eval_epochs else {})) for e in range(1, 5)]


def test_curves_get_an_evaluation_panel_from_two_evaluations(tmp_path):
    plot_curves(_history({2, 4}), tmp_path / 'curves.png')
    with Image.open(tmp_path / 'curves.png') as picture:
        assert picture.size == (1000, 360)


def test_a_single_evaluation_is_text_not_a_lone_point_on_an_epoch_axis(tmp_path):
    plot_curves(_history({4}), tmp_path / 'curves.png')
    with Image.open(tmp_path / 'curves.png') as picture:
        assert picture.size == (550, 360), 'the loss panel alone'
    plot_curves(_history(set()), tmp_path / 'none.png')
    with Image.open(tmp_path / 'none.png') as picture:
        assert picture.size == (550, 360)


def test_plotting_leaves_the_backend_and_pyplot_alone(tmp_path):
    backend = matplotlib.get_backend()
    plot_curves(_history({2, 4}), tmp_path / 'curves.png')
    assert matplotlib.get_backend() == backend
    import matplotlib.pyplot as plt
    assert plt.get_fignums() == []


def test_epoch_ticks_are_whole_epochs_and_a_lone_epoch_is_its_own_tick():
    """A one-epoch run's axis read 0.945 … 1.050: the integer locator falls back to fractions around one point."""
    assert list(curves_figure(_history(set())[:1]).axes[0].get_xticks()) == [1]
    assert all(float(t).is_integer() for t in curves_figure(_history({2, 4})).axes[1].get_xticks())
