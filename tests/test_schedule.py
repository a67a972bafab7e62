"""The learning-rate schedule: BoT's warm-up and steps, the paper's steps, and the cosine."""
import pytest

from ptl_timm.engine.schedule import lr_factor


def test_bot_schedule_is_the_paper_table():
    """BoT (Luo et al. 2019) §4: 3.5e-5 → 3.5e-4 linearly over 10 epochs, ÷10 at 40 and 70."""
    factor = lr_factor('step', epochs=120, warmup_epochs=10, warmup_factor=0.1, milestones=(40, 70))
    lr = [3.5e-4 * factor(e) for e in range(120)]
    assert lr[0] == pytest.approx(3.5e-5)
    assert lr[5] == pytest.approx(3.5e-5 + 0.5 * (3.5e-4 - 3.5e-5))
    assert lr[10] == lr[39] == pytest.approx(3.5e-4)
    assert lr[40] == lr[69] == pytest.approx(3.5e-5)
    assert lr[70] == lr[119] == pytest.approx(3.5e-6)


def test_step_schedule_without_milestones_decays_every_step_epochs():
    factor = lr_factor('step', epochs=50, step=10, gamma=0.1)
    assert [factor(e) for e in (0, 9, 10, 19, 20)] == pytest.approx([1, 1, 0.1, 0.1, 0.01])


def test_cosine_runs_from_one_after_warm_up_to_the_floor_at_the_last_epoch():
    factor = lr_factor('cosine', epochs=22, warmup_epochs=1, warmup_factor=0.0, min_factor=0.01)
    assert factor(0) == 0.0 and factor(1) == pytest.approx(1.0)
    assert factor(11) == pytest.approx(0.01 + 0.99 * 0.5)
    assert factor(21) == pytest.approx(0.01)
    values = [factor(e) for e in range(1, 22)]
    assert values == sorted(values, reverse=True)


def test_unknown_schedule_is_refused():
    with pytest.raises(ValueError, match='lr schedule must be one of'):
        lr_factor('linear')
