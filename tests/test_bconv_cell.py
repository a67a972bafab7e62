"""BConv-Cell state semantics against an independent step-by-step reference of paper Eq. 1."""
from typing import List, Optional

import pytest
import torch
import torch.nn.functional as F

from ptl_timm.layers import (
    BConvCell, probe_latent_states, reset_latent_states, restore_latent_states, set_eval_state, snapshot_latent_states)

IN_CHS, OUT_CHS, SIZE = 3, 4, (6, 5)


def reference_run(cell: BConvCell, batches: List[torch.Tensor], mode: str,
                  prev: Optional[torch.Tensor] = None) -> List[torch.Tensor]:
    """Eq. 1 written out per sample, with the state bookkeeping the module docstring promises;
    ``prev`` is the state before the first batch ('batch': [C,H,W]; 'sample': [B_prev,C,H,W])."""
    weight, bias, stride = cell.gates.weight, cell.gates.bias, cell.gates.stride
    padding = cell.gates.padding
    outputs = []
    for x in batches:
        gates = F.conv2d(x, weight, bias, stride=stride, padding=padding)
        batch_outputs, batch_states = [], []
        for k in range(x.shape[0]):
            i, f, o, g = (gates[k, j * OUT_CHS:(j + 1) * OUT_CHS] for j in range(4))
            if mode == 'batch' and prev is not None:
                c_prev = prev
            elif mode == 'sample' and prev is not None and k < prev.shape[0]:
                c_prev = prev[k]
            else:
                c_prev = torch.zeros_like(g)
            c = torch.sigmoid(f) * c_prev + torch.sigmoid(i) * torch.tanh(g)
            batch_outputs.append(torch.sigmoid(o) * torch.tanh(c))
            batch_states.append(c)
        states = torch.stack(batch_states)
        if mode == 'batch':
            prev = states.mean(0)
        elif mode == 'sample':
            # slots beyond a smaller batch are dropped (the official truncation)
            prev = states
        outputs.append(torch.stack(batch_outputs))
    return outputs


def make_batches(sizes=(4, 4, 3, 5), seed: int = 0) -> List[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, IN_CHS, *SIZE, generator=g) for b in sizes]


@pytest.fixture(params=['batch', 'sample', 'none'])
def state_mode(request) -> str:
    return request.param


@pytest.mark.parametrize('bias', [False, True])
def test_training_outputs_match_reference_over_batches(state_mode, bias):
    torch.manual_seed(0)
    cell = BConvCell(IN_CHS, OUT_CHS, bias=bias, state_mode=state_mode).train()
    batches = make_batches()  # the third batch is smaller, the fourth larger than the first
    expected = reference_run(cell, batches, state_mode)
    for x, y in zip(batches, expected):
        torch.testing.assert_close(cell(x), y, rtol=0, atol=1e-6)


def test_strided_cell_matches_reference():
    torch.manual_seed(0)
    cell = BConvCell(IN_CHS, OUT_CHS, kernel_size=3, stride=2).train()
    batches = make_batches((2, 2, 1))
    for x, y in zip(batches, reference_run(cell, batches, 'batch')):
        torch.testing.assert_close(cell(x), y, rtol=0, atol=1e-6)
    assert cell.latent_state.shape == (OUT_CHS, 3, 3)


def test_state_is_carried_in_training(state_mode):
    cell = BConvCell(IN_CHS, OUT_CHS, state_mode=state_mode).train()
    x = make_batches((2,))[0]
    first, second = cell(x), cell(x)
    assert torch.equal(first, second) == (state_mode == 'none')


def test_stored_state_shape_per_mode():
    x = make_batches((3,))[0]
    shapes = {}
    for mode in ('batch', 'sample', 'none'):
        cell = BConvCell(IN_CHS, OUT_CHS, state_mode=mode).train()
        cell(x)
        shapes[mode] = tuple(cell.latent_state.shape)
    assert shapes == {'batch': (OUT_CHS, *SIZE), 'sample': (3, OUT_CHS, *SIZE), 'none': (0,)}


def test_eval_neither_reads_nor_writes_state(state_mode):
    torch.manual_seed(0)
    cell = BConvCell(IN_CHS, OUT_CHS, state_mode=state_mode)
    x = make_batches((2,), seed=1)[0]
    fresh = cell.eval()(x)
    cell.train()
    for batch in make_batches():
        cell(batch)
    stored = cell.latent_state.clone()
    cell.eval()
    assert torch.equal(cell(x), fresh)
    assert torch.equal(cell.latent_state, stored)


def test_train_and_reset_state_zero_the_state():
    cell = BConvCell(IN_CHS, OUT_CHS).train()
    cell(make_batches((2,))[0])
    assert cell.latent_state.numel() > 0
    cell.train()
    assert cell.latent_state.numel() == 0
    cell(make_batches((2,))[0])
    reset_latent_states(torch.nn.Sequential(cell))
    assert cell.latent_state.numel() == 0


def test_state_is_not_in_state_dict():
    cell = BConvCell(IN_CHS, OUT_CHS).train()
    cell(make_batches((2,))[0])
    assert 'latent_state' in dict(cell.named_buffers())
    assert list(cell.state_dict()) == ['gates.weight']


def test_resolution_change_resets_state():
    torch.manual_seed(0)
    cell = BConvCell(IN_CHS, OUT_CHS).train()
    cell(torch.randn(2, IN_CHS, 8, 8))
    x = torch.randn(2, IN_CHS, 4, 6)
    out = cell(x)
    assert tuple(cell.latent_state.shape) == (OUT_CHS, 4, 6)
    zero_state = BConvCell(IN_CHS, OUT_CHS).train()
    zero_state.load_state_dict(cell.state_dict())
    assert torch.equal(out, zero_state(x))


def test_autocast_bfloat16_keeps_state_float32():
    cell = BConvCell(IN_CHS, OUT_CHS).train()
    batches = make_batches((2, 2))
    with torch.autocast('cpu', dtype=torch.bfloat16):
        for x in batches:
            out = cell(x)
    assert out.dtype == torch.bfloat16
    assert cell.latent_state.dtype == torch.float32


def test_gradient_accumulation_updates_state_once_per_forward():
    torch.manual_seed(0)
    cell = BConvCell(IN_CHS, OUT_CHS).train()
    reference = BConvCell(IN_CHS, OUT_CHS).train()
    reference.load_state_dict(cell.state_dict())
    batches = make_batches((2, 2))
    for x in batches:  # two forwards, two backwards, one optimiser step's worth of gradients
        cell(x).square().sum().backward()
    with torch.no_grad():
        for x in batches:
            reference(x)
    torch.testing.assert_close(cell.latent_state, reference.latent_state, rtol=0, atol=0)
    assert cell.gates.weight.grad is not None


def test_gradient_checkpointing_same_state_and_gradients():
    torch.manual_seed(0)
    plain = BConvCell(IN_CHS, OUT_CHS).train()
    ckpt = BConvCell(IN_CHS, OUT_CHS).train()
    ckpt.load_state_dict(plain.state_dict())
    ckpt.grad_checkpointing = True
    for x in make_batches((2, 2, 1)):
        plain(x).square().sum().backward()
        ckpt(x.clone()).square().sum().backward()
        # backward recomputed the update inside the checkpoint; the state must still be the forward's
        torch.testing.assert_close(ckpt.latent_state, plain.latent_state, rtol=0, atol=1e-7)
    torch.testing.assert_close(ckpt.gates.weight.grad, plain.gates.weight.grad)


def test_training_forward_under_inference_mode_then_backward():
    cell = BConvCell(IN_CHS, OUT_CHS).train()
    x = make_batches((2,))[0]
    with torch.inference_mode():
        cell(x)  # a validation pass that forgot model.eval(): the state becomes an inference tensor
    assert cell.latent_state.is_inference()
    cell(x).sum().backward()  # reading it back in a normal forward must not fail
    assert not cell.latent_state.is_inference()


@pytest.mark.slow
def test_torch_compile_matches_eager():
    torch.manual_seed(0)
    eager = BConvCell(IN_CHS, OUT_CHS).train()
    compiled_cell = BConvCell(IN_CHS, OUT_CHS).train()
    compiled_cell.load_state_dict(eager.state_dict())
    compiled = torch.compile(compiled_cell, backend='aot_eager', fullgraph=False)
    for x in make_batches((2, 2, 1)):
        torch.testing.assert_close(compiled(x), eager(x), rtol=0, atol=1e-6)
    torch.testing.assert_close(compiled_cell.latent_state, eager.latent_state, rtol=0, atol=1e-6)


def test_state_moves_with_module_and_stays_float32():
    cell = BConvCell(IN_CHS, OUT_CHS, dtype=torch.float64).train()
    cell(make_batches((2,))[0].double())
    assert cell.gates.weight.dtype == torch.float64
    assert cell.latent_state.dtype == torch.float32


def test_unknown_state_mode_is_rejected():
    with pytest.raises(ValueError, match="state_mode must be one of"):
        BConvCell(IN_CHS, OUT_CHS, state_mode='global')


def test_snapshot_restore_round_trip_and_train_reset():
    torch.manual_seed(0)
    model = torch.nn.Sequential(BConvCell(IN_CHS, OUT_CHS), BConvCell(OUT_CHS, OUT_CHS))
    model.train()
    model(torch.randn(3, IN_CHS, *SIZE))
    snapshot = snapshot_latent_states(model)
    assert set(snapshot) == {'0', '1'} and all(s.shape == (OUT_CHS, *SIZE) for s in snapshot.values())
    model.train()  # a new epoch zeroes the states ...
    assert all(cell.latent_state.numel() == 0 for cell in model)
    restore_latent_states(model, snapshot)  # ... and restoring carries them over (state_reset='never')
    for name, cell in model.named_children():
        assert torch.equal(cell.latent_state, snapshot[name])
    with pytest.raises(ValueError, match='do not match'):
        restore_latent_states(model, {'0': snapshot['0']})


@pytest.mark.parametrize('state_mode', ['batch', 'sample'])
def test_warm_eval_state_reads_frozen_state_without_writing(state_mode):
    torch.manual_seed(0)
    cell = BConvCell(IN_CHS, OUT_CHS, state_mode=state_mode)
    cell.train()
    cell(torch.randn(4, IN_CHS, *SIZE))
    stored = cell.latent_state.clone()
    x = torch.randn(2, IN_CHS, *SIZE)
    cell.eval()
    zero_out = cell(x)
    set_eval_state(cell, 'warm')
    warm_out = cell(x)
    # the reference: a training-mode step from the stored state, without keeping its update
    expected = reference_run(cell, [x], state_mode, prev=stored)[0]
    torch.testing.assert_close(warm_out, expected)
    assert not torch.allclose(warm_out, zero_out)
    assert torch.equal(cell.latent_state, stored)  # read, never written
    torch.testing.assert_close(cell(x[:1]), warm_out[:1])  # each feature still depends on its own image only
    set_eval_state(cell, 'zero')
    torch.testing.assert_close(cell(x), zero_out)
    with pytest.raises(ValueError, match='eval_state'):
        set_eval_state(cell, 'hot')


def _chord(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (F.normalize(a.flatten(1), dim=1) - F.normalize(b.flatten(1), dim=1)).norm(dim=1)


@pytest.mark.parametrize('mode', ['batch', 'sample'])
def test_probe_measures_the_carried_term_state_change_and_embedding_shifts(mode):
    """``probe_latent_states`` against Eq. 1 written out: the carried share, the state's relative change and
    the embedding's shift when C_{b-1} is replaced by the running mean of the stored states or by zero."""
    torch.manual_seed(0)
    cell = BConvCell(IN_CHS, OUT_CHS, state_mode=mode)
    batches = make_batches((4, 4, 4, 4))
    report = probe_latent_states(cell, batches)

    weight = cell.gates.weight.detach()
    carried = fresh = 0.0
    changes, shifts = [], {'constant': [], 'zero': []}
    stored: List[torch.Tensor] = []

    def step(gates: torch.Tensor, prev: torch.Tensor):
        i, f, o, g = gates.chunk(4, 1)
        c = torch.sigmoid(f) * prev + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c, torch.sigmoid(f) * prev, torch.sigmoid(i) * torch.tanh(g)
    for b, x in enumerate(batches):
        gates = F.conv2d(x, weight, padding=1)
        prev = stored[-1] if stored else torch.zeros(OUT_CHS, *SIZE)
        y, c, carry, new = step(gates, prev)
        if b:
            carried, fresh = carried + float(carry.norm()), fresh + float(new.norm())
            state = c.mean(0) if mode == 'batch' else c
            changes.append(float((state - prev).norm() / prev.norm()))
            shifts['constant'].append(float(_chord(y, step(gates, torch.stack(stored).mean(0))[0]).mean()))
            shifts['zero'].append(float(_chord(y, step(gates, torch.zeros_like(prev))[0]).mean()))
        stored.append(c.mean(0) if mode == 'batch' else c)
    measured = report['']  # the cell itself is the only cell of the module
    assert measured['carried_share'] == pytest.approx(carried / (carried + fresh), rel=1e-5)
    assert measured['state_change'] == pytest.approx(sum(changes) / len(changes), rel=1e-5)
    for kind, values in shifts.items():
        assert report['embedding'][f'embedding_change_{kind}'] == pytest.approx(sum(values) / len(values), rel=1e-4)
    assert 0 < report['embedding']['embedding_change_constant'] < report['embedding']['embedding_change_zero']


def test_probe_of_a_stateless_cell_finds_nothing_carried():
    cell = BConvCell(IN_CHS, OUT_CHS, state_mode='none')
    report = probe_latent_states(cell, make_batches((4, 4, 4)))
    assert report['']['carried_share'] == 0
    assert report['embedding']['embedding_change_constant'] == report['embedding']['embedding_change_zero'] == 0
