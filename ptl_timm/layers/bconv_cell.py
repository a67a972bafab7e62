""" Batch-related Convolutional Cell (BConv-Cell), PTL paper (Yu et al., IJCAI-19) Eq. 1.

    i, f, o = sigmoid(W_i * x), sigmoid(W_f * x), sigmoid(W_o * x)
    C_b = f ⊙ C_{b-1} + i ⊙ tanh(W_g * x)
    y_b = o ⊙ tanh(C_b)

One convolution of the input produces the four gates, stacked along channels in the order
(i, f, o, g) as in the official code, so its weights port directly.

The latent state C is the point of the cell, and every rule about it lives in this class:

* ``state_mode``:
    - ``'batch'`` (default, the paper's C×H×W state): the stored state is the batch mean of the
      per-sample updates C_b[k] = f[k] ⊙ C_{b-1} + i[k] ⊙ tanh(g[k]). Every sample of the next batch
      reads the same state, so it does not matter which slot a sample lands in, and a smaller
      last batch simply reads and updates it.
    - ``'sample'`` (the official code's [B, C, H, W] state): slot k of batch b reads slot k of
      batch b-1. A smaller batch reads the first B slots and stores only those (the official
      truncation); slots beyond the stored ones start from zero.
    - ``'none'``: stateless, y = o ⊙ tanh(i ⊙ tanh(g)). This is what the official code effectively
      trains with after its first evaluation (it never clears its ``val`` flag); kept for ablations.
* Training mode: each forward reads C_{b-1} and stores C_b exactly once, detached (no
  back-propagation across batches) and in float32 even under autocast. The update runs outside
  the cell's own gradient checkpoint, so recomputation during backward never updates it twice.
* Eval mode: the state is treated as zero and is neither read nor written (paper §3.2, "during
  testing, we set all the latent states as zeros"), so an eval feature depends on its own image
  only. ``eval_state='warm'`` (``set_eval_state``) instead reads the stored state, frozen: the
  state after the last training batch, which is what the cells saw during training. It is still
  never written in eval mode, so every eval feature still depends on its own image only.
* Carrying states elsewhere (over epochs, into an evaluation): ``snapshot_latent_states`` and
  ``restore_latent_states``; measuring what the state carries: ``probe_latent_states``. No other code
  reads or writes ``latent_state``.
* Reset: ``reset_state()``; ``train()`` calls it too, so the state is zero at the start of every
  epoch of a timm-style loop (paper §3.2: "all the latent states are set to zeros at the beginning
  of each epoch").
* A change of the output's channel or spatial size since the last batch (a new input resolution)
  means the stored state no longer lines up with the input: it is treated as zero and replaced.
* The state is a non-persistent buffer: it moves with ``.to()``, but is never part of
  ``state_dict()``, checkpoints, safetensors files or EMA averaging. ``ddp_ignore_latent_states``
  keeps it out of DDP's buffer broadcast so each rank keeps its own.
"""
from typing import Callable, Dict, Iterable, List, Optional, Tuple

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from timm.layers import register_notrace_module

__all__ = [
    'BConvCell', 'STATE_MODES', 'EVAL_STATES', 'reset_latent_states', 'snapshot_latent_states',
    'restore_latent_states', 'set_eval_state', 'ddp_ignore_latent_states', 'probe_latent_states',
]

STATE_MODES = ('batch', 'sample', 'none')
EVAL_STATES = ('zero', 'warm')  # what an eval-mode forward reads: zero (the paper) or the frozen stored state


def _cell_update(
        gates: torch.Tensor,
        prev_state: Optional[torch.Tensor],
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Eq. 1 from the stacked gate pre-activations; returns (y_b, per-sample C_b)."""
    in_gate, forget_gate, out_gate, cell_gate = gates.chunk(4, 1)
    state = torch.sigmoid(in_gate) * torch.tanh(cell_gate)
    if prev_state is not None:
        # float32 state: the sum promotes, so the carried memory never drops to bf16/fp16
        state = torch.sigmoid(forget_gate) * prev_state + state
    out = torch.sigmoid(out_gate) * torch.tanh(state)
    return out.to(gates.dtype), state


@register_notrace_module  # state bookkeeping is data-dependent Python: FX keeps the cell a leaf
class BConvCell(nn.Module):
    """Gated convolution whose latent state carries information from one mini-batch to the next.

    Args:
        in_chs: Input channels.
        out_chs: Output (and state) channels.
        kernel_size: Gate convolution kernel; padding keeps 'same' geometry (stride s gives ceil(H/s)).
        stride: Gate convolution stride, chosen so the output meets the next backbone stage.
        bias: Gate biases (the paper's Eq. 1 has them; the official code has none).
        state_mode: 'batch', 'sample' or 'none' (see module docstring).
    """
    state_mode: torch.jit.Final[str]

    def __init__(
            self,
            in_chs: int,
            out_chs: int,
            kernel_size: int = 3,
            stride: int = 1,
            bias: bool = False,
            state_mode: str = 'batch',
            device=None,
            dtype=None,
    ):
        super().__init__()
        if state_mode not in STATE_MODES:
            raise ValueError(f'BConvCell state_mode must be one of {STATE_MODES}, got {state_mode!r}')
        self.in_chs = in_chs
        self.out_chs = out_chs
        self.state_mode = state_mode
        self.eval_state = 'zero'
        self.grad_checkpointing = False
        self.gates = nn.Conv2d(
            in_chs, 4 * out_chs, kernel_size, stride=stride, padding=kernel_size // 2, bias=bias,
            device=device, dtype=dtype,
        )
        # numel() == 0 means "zero state"; float32 regardless of the module dtype
        self.register_buffer('latent_state', torch.zeros(0, device=device, dtype=torch.float32), persistent=False)

    def reset_state(self) -> None:
        """Forget everything aggregated so far (the state becomes zero)."""
        self.latent_state = torch.zeros(0, device=self.latent_state.device, dtype=torch.float32)

    def train(self, mode: bool = True) -> 'BConvCell':
        if mode:
            self.reset_state()
        return super().train(mode)

    def _read_state(self, out_shape: List[int]) -> Optional[torch.Tensor]:
        """C_{b-1} aligned to this batch's [B, C, H, W] output, or None for a zero state."""
        prev = self.latent_state
        reads = self.training or self.eval_state == 'warm'
        if not reads or self.state_mode == 'none' or prev.numel() == 0:
            return None
        if prev.shape[-3:] != torch.Size(out_shape[1:]):
            return None  # new resolution: the old state does not line up with this input
        if prev.is_inference():
            # written under torch.inference_mode(): take a normal copy so autograd may save it
            prev = prev.clone()
        if self.state_mode == 'sample':
            batch_size = out_shape[0]
            if prev.shape[0] >= batch_size:
                return prev[:batch_size]
            return torch.cat([prev, prev.new_zeros([batch_size - prev.shape[0]] + out_shape[1:])], 0)
        return prev

    def _write_state(self, state: torch.Tensor) -> None:
        if not self.training or self.state_mode == 'none':
            return
        state = state.detach().float()
        # rebinding (not copy_) lets the shape follow the batch and never mutates an inference tensor
        self.latent_state = state.mean(0) if self.state_mode == 'batch' else state

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gates = self.gates(x)
        prev = self._read_state(list(gates.shape[:1]) + [self.out_chs] + list(gates.shape[2:]))
        if self.grad_checkpointing and gates.requires_grad and not torch.jit.is_scripting():
            out, state = checkpoint(_cell_update, gates, prev, use_reentrant=False)
        else:
            out, state = _cell_update(gates, prev)
        self._write_state(state)
        return out

    def extra_repr(self) -> str:
        return f'state_mode={self.state_mode!r}'


def _cells(module: nn.Module) -> Dict[str, BConvCell]:
    return {name: m for name, m in module.named_modules() if isinstance(m, BConvCell)}


def reset_latent_states(module: nn.Module) -> None:
    """Zero the latent state of every BConv-Cell inside ``module``."""
    for cell in _cells(module).values():
        cell.reset_state()


def snapshot_latent_states(module: nn.Module) -> Dict[str, torch.Tensor]:
    """The current state of every BConv-Cell inside ``module``, by module name (detached copies; an
    empty tensor stands for a zero state). ``restore_latent_states`` puts them back, e.g. after the
    ``train()`` call of the next epoch (``state_reset='never'``) or into an evaluation (warm state)."""
    return {name: cell.latent_state.detach().clone() for name, cell in _cells(module).items()}


def restore_latent_states(module: nn.Module, states: Dict[str, torch.Tensor]) -> None:
    """Give every BConv-Cell of ``module`` its state from ``snapshot_latent_states`` (same names)."""
    cells = _cells(module)
    if set(states) != set(cells):
        raise ValueError(
            f'latent state snapshot names {sorted(states)} do not match the cells of this module {sorted(cells)}')
    for name, cell in cells.items():
        cell.latent_state = states[name].to(cell.latent_state.device, torch.float32)


def set_eval_state(module: nn.Module, eval_state: str) -> None:
    """What every BConv-Cell of ``module`` reads in eval mode: ``'zero'`` (the paper, §3.2) or
    ``'warm'`` (its stored state, frozen; see ``snapshot_latent_states``)."""
    if eval_state not in EVAL_STATES:
        raise ValueError(f'eval_state must be one of {EVAL_STATES}, got {eval_state!r}')
    for cell in _cells(module).values():
        cell.eval_state = eval_state


def ddp_ignore_latent_states(module: nn.Module) -> List[str]:
    """Exclude every BConv-Cell state under ``module`` from DDP's buffer broadcast.

    DDP broadcasts all buffers (non-persistent ones included) from rank 0 before each forward,
    which would overwrite each rank's own state. DDP reads the ignore list from the module it wraps,
    so call this on that module (the PTL models call it on themselves at construction).
    """
    names = [name for name, _ in module.named_buffers() if name.endswith('latent_state')]
    ignored = set(getattr(module, '_ddp_params_and_buffers_to_ignore', ()))
    module._ddp_params_and_buffers_to_ignore = sorted(ignored.union(names))
    return names


def _chord(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-row distance between L2-normalised embeddings (what cosine retrieval ranks by)."""
    return (nn.functional.normalize(a.flatten(1).float(), dim=1)
            - nn.functional.normalize(b.flatten(1).float(), dim=1)).norm(dim=1)


@torch.no_grad()
def probe_latent_states(
        module: nn.Module,
        batches: Iterable[torch.Tensor],
        embed: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
) -> Dict[str, Dict[str, float]]:
    """What the latent state carries, measured over a sequence of training mini-batches.

    Runs ``batches`` through ``module`` in training mode without gradients, as one epoch of training sees
    them (so BatchNorm statistics and the cells' states change: pass a copy of a trained model). Per cell:

    * ``carried_share``: ‖f⊙C_{b-1}‖ / (‖f⊙C_{b-1}‖ + ‖i⊙tanh(g)‖), summed over batches: how much of the
      update C_b comes from the previous batches (0: none);
    * ``state_change``: ‖C_b − C_{b-1}‖ / ‖C_{b-1}‖ of the stored state, the mean over batches (near 0: the
      state is close to a constant).

    And for the embedding (``embed(x)``, default ``module(x)``), the mean per-image distance between
    L2-normalised embeddings computed from the true C_{b-1} and from a replacement in every cell:
    ``embedding_change_constant`` (the running mean of the stored states over the batches so far: the
    state replaced by a constant), ``embedding_change_zero`` (no state), beside ``embedding_spread``, the
    mean distance between two images' embeddings of the same batch. A change far below the spread means
    the state barely moves an image's embedding; a constant that changes it as little as the true state
    means what the state carries is a constant, which the following layers can absorb.
    The first batch (zero state) only starts the sequence.
    """
    embed = embed or module
    cells = _cells(module)
    module.train()  # zero states, as at the start of an epoch
    gates: Dict[str, torch.Tensor] = {}
    hooks = [cell.gates.register_forward_hook(lambda _m, _i, out, name=name: gates.__setitem__(name, out))
             for name, cell in cells.items()]
    carried = {name: 0.0 for name in cells}
    fresh = {name: 0.0 for name in cells}
    change: Dict[str, List[float]] = {name: [] for name in cells}
    running: Dict[str, Tuple[torch.Tensor, int]] = {}
    distances: Dict[str, List[float]] = {'constant': [], 'zero': [], 'spread': []}
    try:
        for step, x in enumerate(batches):
            before = {name: cell.latent_state for name, cell in cells.items()}
            if step:
                replaced = {}
                for kind, states in (('constant', {n: running[n][0] for n in cells if n in running}), ('zero', {})):
                    for name, cell in cells.items():
                        cell.latent_state = states.get(name, torch.zeros(0, device=before[name].device))
                    replaced[kind] = embed(x)
                for name, cell in cells.items():
                    cell.latent_state = before[name]
            true = embed(x)
            if step:
                for kind, other in replaced.items():
                    distances[kind].append(float(_chord(true, other).mean()))
                flat = nn.functional.normalize(true.flatten(1).float(), dim=1)
                n = flat.shape[0]
                if n > 1:
                    distances['spread'].append(float(torch.cdist(flat, flat).sum() / (n * (n - 1))))
            for name, cell in cells.items():
                after = cell.latent_state
                cell.latent_state = before[name]
                out_shape = [gates[name].shape[0], cell.out_chs] + list(gates[name].shape[2:])
                prev = cell._read_state(out_shape)
                cell.latent_state = after
                if prev is not None and after.numel():
                    in_gate, forget_gate, _, cell_gate = gates[name].float().chunk(4, 1)
                    carried[name] += float((torch.sigmoid(forget_gate) * prev).norm())
                    fresh[name] += float((torch.sigmoid(in_gate) * torch.tanh(cell_gate)).norm())
                    if before[name].shape == after.shape:
                        change[name].append(float((after - before[name]).norm() / before[name].norm().clamp_min(1e-12)))
                if after.numel():
                    total, count = running.get(name, (torch.zeros_like(after), 0))
                    if total.shape == after.shape:  # a smaller last batch ('sample' mode) keeps the mean as it is
                        running[name] = ((total * count + after) / (count + 1), count + 1)
    finally:
        for hook in hooks:
            hook.remove()

    def mean(xs: List[float]) -> float:
        return sum(xs) / len(xs) if xs else float('nan')
    report = {name: dict(carried_share=carried[name] / max(carried[name] + fresh[name], 1e-12),
                         state_change=mean(change[name])) for name in cells}
    report['embedding'] = {f'embedding_change_{kind}' if kind != 'spread' else 'embedding_spread': mean(values)
                           for kind, values in distances.items()}
    return report
