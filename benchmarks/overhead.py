"""What the PTL side network costs: parameters, CPU train-step and inference latency of each PTL model
against the same network without cells, as ratios measured in one run.

Paired models are timed alternately (plain, PTL, plain, PTL, ...) and compared by median, so
machine load drifts affect both sides alike. Target: PTL train step ≤ 1.3× plain.
Multiply-accumulates (convolutions and linear layers, counted with forward hooks) give the
load-independent cost, and the share spent in the side network says where any excess comes from.

    python -m benchmarks.overhead [--batch-size 8] [--repeats 5] [--pairs ptl_resnet50:reid_resnet50 ...]
"""
import argparse
import statistics
import time
from typing import Callable, Dict, List, Tuple

import torch

import timm
import ptl_timm  # noqa: F401  registers the models
from benchmarks.report import add_report_argument, markdown_table, report_path, write_section

DEFAULT_PAIRS = ('ptl_resnet50:reid_resnet50', 'ptl_densenet161:reid_densenet161', 'ptl_mgn:mgn_resnet50')
NUM_CLASSES = 751


def params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def conv_linear_macs(model: torch.nn.Module, images: torch.Tensor) -> Tuple[int, int]:
    """Multiply-accumulates of every convolution and linear layer for one forward (eval mode):
    the total, and the part spent in the PTL side network (modules under ``side``)."""
    totals = {'all': 0, 'side': 0}

    def count(name: str, module: torch.nn.Module, output: torch.Tensor) -> None:
        if isinstance(module, torch.nn.Conv2d):
            macs = output.numel() * module.kernel_size[0] * module.kernel_size[1] * module.in_channels // module.groups
        else:
            macs = output.numel() * module.in_features
        totals['all'] += macs
        totals['side'] += macs if name.startswith('side.') else 0

    hooks = [m.register_forward_hook(lambda mod, _, out, name=n: count(name, mod, out))
             for n, m in model.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    model.eval()
    with torch.inference_mode():
        model(images)
    for hook in hooks:
        hook.remove()
    return totals['all'], totals['side']


def train_step_fn(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> Callable[[], None]:
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    model.train()

    def step() -> None:
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step


def inference_fn(model: torch.nn.Module, images: torch.Tensor) -> Callable[[], None]:
    def infer() -> None:
        model.eval()
        with torch.inference_mode():
            model(images)
    return infer


def conv_profile(step: Callable[[], None], steps: int = 2) -> Tuple[float, float]:
    """(seconds in convolution ops, seconds in all ops) per call of ``step``, self CPU time from torch.profiler."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    events = prof.key_averages()
    conv = sum(e.self_cpu_time_total for e in events if 'convolution' in e.key)
    total = sum(e.self_cpu_time_total for e in events)
    return conv / steps / 1e6, total / steps / 1e6


def alternate(fns: Dict[str, Callable[[], None]], repeats: int) -> Dict[str, float]:
    """Median seconds per call of each function, timed in alternation after one warm-up each."""
    for fn in fns.values():
        fn()
    times: Dict[str, List[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def measure_pair(ptl_name: str, plain_name: str, batch_size: int, repeats: int) -> Tuple[list, float]:
    torch.manual_seed(0)
    ptl = timm.create_model(ptl_name, num_classes=NUM_CLASSES)
    plain = timm.create_model(plain_name, num_classes=NUM_CLASSES)
    input_size = ptl.pretrained_cfg['input_size']
    images = torch.randn(batch_size, *input_size)
    labels = torch.randint(0, NUM_CLASSES, (batch_size,))
    (ptl_macs, side_macs), (plain_macs, _) = (conv_linear_macs(m, images[:1]) for m in (ptl, plain))
    steps = {'plain': train_step_fn(plain, images, labels), 'ptl': train_step_fn(ptl, images, labels)}
    train = alternate(steps, repeats)
    (plain_conv, plain_all), (ptl_conv, ptl_all) = conv_profile(steps['plain']), conv_profile(steps['ptl'])
    # convolution seconds per GMAC of the added layers against the plain network's
    conv_cost = ((ptl_conv - plain_conv) / (ptl_macs - plain_macs)) / (plain_conv / plain_macs)
    infer = alternate({'plain': inference_fn(plain, images), 'ptl': inference_fn(ptl, images)}, repeats)
    row = [
        f'{ptl_name} vs {plain_name}', f'{input_size[1]}×{input_size[2]}',
        f'{params(ptl) / 1e6:.2f}M / {params(plain) / 1e6:.2f}M', f'{params(ptl) / params(plain):.3f}',
        f'{ptl_macs / 1e9:.2f} / {plain_macs / 1e9:.2f}', f'{ptl_macs / plain_macs:.2f}×',
        f'{100 * side_macs / ptl_macs:.0f}%',
        f'{train["ptl"]:.2f} / {train["plain"]:.2f}', f'**{train["ptl"] / train["plain"]:.2f}×**',
        f'{infer["ptl"]:.2f} / {infer["plain"]:.2f}', f'{infer["ptl"] / infer["plain"]:.2f}×',
        f'{100 * (ptl_conv - plain_conv) / (ptl_all - plain_all):.0f}%', f'{conv_cost:.1f}×',
    ]
    return row, train['ptl'] / train['plain']


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--batch-size', type=int, default=8)
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument('--pairs', nargs='+', default=list(DEFAULT_PAIRS), help='PTL:PLAIN model name pairs')
    add_report_argument(parser)
    args = parser.parse_args()

    available = set(timm.list_models())
    rows = []
    for pair in args.pairs:
        ptl_name, plain_name = pair.split(':')
        if not {ptl_name, plain_name} <= available:
            print(f'skipping {pair}: not registered')
            continue
        row, ratio = measure_pair(ptl_name, plain_name, args.batch_size, args.repeats)
        print(' | '.join(row))
        rows.append(row)
    table = markdown_table(
        ['PTL vs plain', 'input', 'params PTL / plain', 'params ratio', 'GMACs PTL / plain', 'GMACs ratio', 'side network share of PTL GMACs', 'train step s (PTL / plain)',
         'train ratio (target ≤ 1.3×)', 'inference s (PTL / plain)', 'inference ratio',
         'extra train time in convolutions', 'conv time per MAC, added layers vs plain'], rows)
    note = (f'Batch {args.batch_size}, {NUM_CLASSES} classes, CPU float32, median of {args.repeats} '
            'alternating repeats after one warm-up. Train step = forward + cross-entropy + backward + SGD step. '
            'The last two columns come from torch.profiler (self CPU time of two train steps): the added time is '
            'almost all convolution, and the added convolutions (BConv-Cell gates and 1×1 fuses: narrow, on '
            'high-resolution maps, in MGN on three branches) take several times longer per MAC than the '
            'backbone\'s wide ones; this is why the train ratio is above the GMACs ratio.')
    write_section('overhead', 'PTL overhead: parameters and CPU latency against the plain network',
                  table + '\n' + note, path=report_path(parser, args))


if __name__ == '__main__':
    main()
