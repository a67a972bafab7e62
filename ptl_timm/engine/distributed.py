"""Process-group plumbing for ``torchrun --nproc_per_node N -m ptl_timm train ...``.

torchrun sets ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``; without them training runs in one process.
NCCL is used when every rank has a GPU, gloo otherwise (CPU runs, and the tests).
"""
import os
from dataclasses import dataclass
from typing import Any, List

import torch
import torch.distributed as dist

from ptl_timm.utils import resolve_device

__all__ = ['DistContext', 'setup_distributed', 'gather_rows', 'broadcast_object', 'sync_buffers']


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device('cpu')
    owns_group: bool = False  # this context created the process group (and destroys it)

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
            self.owns_group = False


def setup_distributed(device: str = 'auto') -> DistContext:
    """Join the process group torchrun describes (or an existing one); a single process otherwise."""
    local_rank = int(os.environ.get('LOCAL_RANK', 0))
    resolved = resolve_device(device, local_rank)
    if resolved.type == 'cuda':
        torch.cuda.set_device(resolved)
    if dist.is_initialized():
        return DistContext(dist.get_rank(), dist.get_world_size(), resolved)
    world_size = int(os.environ.get('WORLD_SIZE', 1))
    if world_size <= 1:
        return DistContext(device=resolved)
    dist.init_process_group('nccl' if resolved.type == 'cuda' else 'gloo')
    return DistContext(dist.get_rank(), dist.get_world_size(), resolved, owns_group=True)


def gather_rows(tensor: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Concatenate each rank's rows in rank order (row counts may differ between ranks)."""
    if not ctx.distributed:
        return tensor
    # gloo cannot gather CUDA tensors and NCCL cannot gather CPU ones: move to the group's device
    device = ctx.device if dist.get_backend() == 'nccl' else torch.device('cpu')
    local = tensor.to(device)
    count = torch.tensor([local.shape[0]], device=device)
    counts = [torch.zeros_like(count) for _ in range(ctx.world_size)]
    dist.all_gather(counts, count)
    counts = [int(c.item()) for c in counts]
    padded = local.new_zeros((max(counts),) + tuple(local.shape[1:]))
    padded[:local.shape[0]] = local
    pieces = [torch.zeros_like(padded) for _ in range(ctx.world_size)]
    dist.all_gather(pieces, padded)
    return torch.cat([p[:n] for p, n in zip(pieces, counts)]).to(tensor.device)


def broadcast_object(obj: Any, ctx: DistContext) -> Any:
    """Rank 0's ``obj`` on every rank (evaluation results, so all ranks agree on the best epoch)."""
    if not ctx.distributed:
        return obj
    holder: List[Any] = [obj]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def sync_buffers(model: torch.nn.Module, ctx: DistContext) -> None:
    """Give every rank rank 0's persistent buffers (BatchNorm running statistics).

    DDP broadcasts them before each forward, so after the last training step of an epoch each rank
    holds statistics updated by its own batch; evaluation shards and the checkpoint rank 0 writes must
    agree. Latent states are non-persistent, so each rank keeps its own."""
    if not ctx.distributed:
        return
    persistent = set(model.state_dict())
    for name, buffer in model.named_buffers():
        if name in persistent:
            dist.broadcast(buffer.data, src=0)
