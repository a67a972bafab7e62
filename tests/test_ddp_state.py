"""Under DDP each rank keeps its own latent state: DDP must not broadcast it from rank 0."""
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ptl_timm import BConvCell, create_ptl

WORLD_SIZE = 2


def _train_rank(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group('gloo', init_method=f'file://{init_file}', rank=rank, world_size=WORLD_SIZE)
    torch.manual_seed(0)  # same initial weights on every rank
    model = create_ptl('test_resnet', num_classes=4)  # timm's smallest ResNet: the point is the state, not the size
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    optimizer = torch.optim.SGD(ddp.parameters(), lr=0.01)
    data = torch.Generator().manual_seed(100 + rank)  # each rank sees its own shard
    ddp.train()
    for _ in range(3):
        images = torch.randn(2, 3, 64, 32, generator=data)
        labels = torch.randint(0, 4, (2,), generator=data)
        loss = torch.nn.functional.cross_entropy(ddp(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    states = {n: m.latent_state for n, m in model.named_modules() if isinstance(m, BConvCell)}
    with torch.no_grad():
        # same weights, same images: outputs differ only if each rank read its own state
        shared = ddp(torch.randn(2, 3, 64, 32, generator=torch.Generator().manual_seed(7)))
    torch.save(dict(states=states, params=model.state_dict(), shared=shared), os.path.join(out_dir, f'rank{rank}.pt'))
    dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_ranks_keep_their_own_state(tmp_path):
    mp.spawn(_train_rank, args=(str(tmp_path / 'init'), str(tmp_path)), nprocs=WORLD_SIZE, join=True)
    rank0, rank1 = (torch.load(tmp_path / f'rank{r}.pt', weights_only=True) for r in range(WORLD_SIZE))
    assert rank0['states'].keys() == rank1['states'].keys() and rank0['states']
    for name in rank0['states']:
        assert rank0['states'][name].numel() > 0
        assert not torch.allclose(rank0['states'][name], rank1['states'][name]), name
    assert not torch.allclose(rank0['shared'], rank1['shared'])
    # parameters are still synchronised by the gradient all-reduce
    for name, value in rank0['params'].items():
        if value.is_floating_point() and 'running' not in name:
            torch.testing.assert_close(value, rank1['params'][name], msg=name)
