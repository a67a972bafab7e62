"""TensorBoard logging: the scalars of an epoch record, and a clear error without the extra."""
import importlib.util

import pytest

from ptl_timm.engine.tensorboard_log import TensorBoardLog
from ptl_timm.errors import MissingExtraError

RECORD = {'epoch': 3, 'lr': 3.5e-4, 'loss': 1.25, 'ce': 1.0, 'triplet': 0.25, 'time_s': 2.0,
          'eval': {'market1501': {'mAP': 40.5, 'rank1': 60.25, 'cmc': [60.25, 70.0]}}}


@pytest.mark.skipif(importlib.util.find_spec('tensorboard') is None, reason='tensorboard is not installed')
def test_record_becomes_train_and_eval_scalars_at_its_epoch(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    log = TensorBoardLog(tmp_path / 'tb')
    log.log(RECORD)
    log.close()
    events = EventAccumulator(str(tmp_path / 'tb'))
    events.Reload()
    tags = set(events.Tags()['scalars'])
    assert tags == {'train/lr', 'train/loss', 'train/ce', 'train/triplet', 'train/time_s',
                    'eval/market1501/mAP', 'eval/market1501/rank1'}
    scalar, = events.Scalars('eval/market1501/mAP')
    assert (scalar.step, scalar.value) == (3, pytest.approx(40.5))


def test_missing_tensorboard_is_a_clear_error(tmp_path, monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, 'find_spec',
                        lambda name, *a: None if name == 'tensorboard' else real_find_spec(name, *a))
    with pytest.raises(MissingExtraError, match=r'pip install "ptl_timm\[tensorboard\]"'):
        TensorBoardLog(tmp_path / 'tb')
    assert not (tmp_path / 'tb').exists()
