"""P×K sampler: batch composition, determinism per seed and epoch, distributed shards, resume."""
from collections import Counter
from typing import List

import pytest

from ptl_timm.data.datasets import ReIDRecord
from ptl_timm.data.loader import PKSampler

BATCH, K = 8, 2


def _records(images_per_id: List[int]) -> List[ReIDRecord]:
    return [ReIDRecord(f'{pid}_{i}.jpg', pid, i % 2) for pid, n in enumerate(images_per_id) for i in range(n)]


RECORDS = _records([5, 4, 6, 2, 3, 7, 4, 5, 1, 6])


def _batches(sampler: PKSampler) -> List[List[int]]:
    indices = list(sampler)
    return [indices[i:i + sampler.batch_size] for i in range(0, len(indices), sampler.batch_size)]


def test_every_batch_has_p_identities_with_k_images_each():
    for batch in _batches(PKSampler(RECORDS, BATCH, K)):
        counts = Counter(RECORDS[i].pid for i in batch)
        assert len(counts) == BATCH // K and set(counts.values()) == {K}


def test_identity_with_fewer_than_k_images_is_oversampled():
    records = _records([1, 1, 1])
    batches = [b for epoch in range(3) for b in _batches(_at_epoch(PKSampler(records, 4, 2), epoch))]
    assert batches and all(len(b) == 4 for b in batches)


def _at_epoch(sampler: PKSampler, epoch: int) -> PKSampler:
    sampler.set_epoch(epoch)
    return sampler


def test_order_is_a_function_of_seed_and_epoch():
    def order(seed: int, epoch: int) -> List[int]:
        return list(_at_epoch(PKSampler(RECORDS, BATCH, K, seed=seed), epoch))
    assert order(3, 2) == order(3, 2)
    assert order(3, 2) != order(3, 3)
    assert order(3, 2) != order(4, 2)


def test_len_matches_iteration():
    for epoch in range(4):
        sampler = _at_epoch(PKSampler(RECORDS, BATCH, K, num_replicas=2, rank=1), epoch)
        assert len(sampler) == len(list(sampler)) > 0


def test_distributed_shards_are_disjoint_equal_and_cover_the_global_batches():
    shards = [list(_at_epoch(PKSampler(RECORDS, 4, K, seed=1, num_replicas=3, rank=r), 5)) for r in range(3)]
    assert len({len(s) for s in shards}) == 1
    assert all(not set(a) & set(b) for i, a in enumerate(shards) for b in shards[i + 1:])
    single = _at_epoch(PKSampler(RECORDS, 4, K, seed=1), 5)
    merged = sorted(i for s in shards for i in s)
    assert merged == sorted(i for b in single.global_batches()[:len(merged) // 4] for i in b.tolist())


def test_state_dict_resumes_the_same_epoch_order():
    trained = _at_epoch(PKSampler(RECORDS, BATCH, K, seed=7), 4)
    resumed = PKSampler(RECORDS, BATCH, K, seed=0)
    resumed.load_state_dict(trained.state_dict())
    assert list(resumed) == list(trained)


def test_batch_not_a_multiple_of_k_is_rejected():
    with pytest.raises(ValueError, match='multiple of num_instances'):
        PKSampler(RECORDS, 7, 2)


def test_too_few_identities_for_one_batch_is_rejected():
    with pytest.raises(ValueError, match='needs 4 identities'):
        PKSampler(_records([4, 4, 4]), 8, 2)
