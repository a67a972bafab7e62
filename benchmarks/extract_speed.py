"""Feature-extraction throughput on CPU: ``ptl_timm.FeatureExtractor`` against a naive per-image loop.

The naive loop is what a first script does: open each image, transform it, run the model on a batch
of one under ``torch.no_grad()``, normalise. ``FeatureExtractor`` batches the images (``--batch-size``)
under ``torch.inference_mode()``; it is timed in contiguous and channels-last memory format. Both
read the same synthetic gallery (``ptl_timm.data.synth``, ``--num-images`` JPEGs of ``--img-size``)
with the same small model (``reid_net`` on a timm ``--backbone``, random weights: throughput does not
depend on the weights), and their embeddings are checked to agree. Each timing is the best of
``--repeats`` rounds in which the three alternate (after one warm-up batch), in one run, so the
ratio is what to read.

    python -m benchmarks.extract_speed [--backbone resnet18] [--num-images 128] [--batch-size 32]
"""
import argparse
import copy
import tempfile
import time
from typing import Callable, Dict, List, Tuple

import timm
import torch
import torch.nn.functional as F

from benchmarks.report import add_report_argument, markdown_table, report_path, write_section
from ptl_timm.data.loader import read_image
from ptl_timm.data.synth import SYNTH_DOMAINS, generate_synthetic
from ptl_timm.eval.extract import FeatureExtractor, image_files
from ptl_timm.models import embed


def naive_loop(model: torch.nn.Module, transform: Callable, paths: List[str]) -> torch.Tensor:
    """One image per forward pass, plain ``no_grad``."""
    model.eval()
    feats = []
    with torch.no_grad():
        for path in paths:
            image = transform(read_image(path)).unsqueeze(0)
            feats.append(F.normalize(embed(model, image), dim=1))
    return torch.cat(feats)


def best_times(runs: Dict[str, Callable[[], torch.Tensor]], repeats: int) -> Tuple[Dict[str, float], Dict[str, torch.Tensor]]:
    """Best wall time and output of each run; the runs alternate within each round, so load drift on a
    shared machine hits them alike."""
    best, outputs = {name: float('inf') for name in runs}, {}
    for _ in range(repeats):
        for name, fn in runs.items():
            start = time.perf_counter()
            outputs[name] = fn()
            best[name] = min(best[name], time.perf_counter() - start)
    return best, outputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--backbone', default='resnet18', help='timm backbone of the reid_net model')
    parser.add_argument('--num-images', type=int, default=128)
    parser.add_argument('--img-size', type=int, nargs=2, default=(128, 64), metavar=('H', 'W'))
    parser.add_argument('--batch-size', type=int, default=32)
    parser.add_argument('--repeats', type=int, default=2)
    add_report_argument(parser)
    args = parser.parse_args()

    torch.manual_seed(0)
    model = timm.create_model('reid_net', backbone=args.backbone, num_classes=0).eval()
    with tempfile.TemporaryDirectory() as tmp:
        images_per_id = 8
        root = generate_synthetic(tmp, SYNTH_DOMAINS[0], num_ids=-(-args.num_images // images_per_id),
                                  images_per_id=images_per_id, img_size=args.img_size, seed=0)
        paths = image_files(root)[:args.num_images]
        extractors = {
            'FeatureExtractor': FeatureExtractor(model, device='cpu', batch_size=args.batch_size, img_size=args.img_size),
            'FeatureExtractor, channels_last': FeatureExtractor(
                copy.deepcopy(model), device='cpu', batch_size=args.batch_size, img_size=args.img_size,
                channels_last=True),
        }
        transform = extractors['FeatureExtractor'].transform
        naive = 'naive per-image loop (no_grad, batch 1)'
        runs = {naive: lambda: naive_loop(model, transform, paths)}
        runs.update({f'{name} (batch {args.batch_size})': (lambda e=extractor: e(paths))
                     for name, extractor in extractors.items()})
        for extractor in extractors.values():  # warm-up (allocator, kernels)
            extractor(paths[:args.batch_size])
        seconds, outputs = best_times(runs, args.repeats)
    rows = [[name, f'{s:.2f}', f'{len(paths) / s:.1f}', f'{seconds[naive] / s:.1f}×',
             f'{float((outputs[name] - outputs[naive]).abs().max()):.1e}'] for name, s in seconds.items()]

    num_params = sum(p.numel() for p in model.parameters()) / 1e6
    body = (f'`reid_net` on `{args.backbone}` ({num_params:.1f} M parameters, random weights), {len(paths)} '
            f'synthetic {args.img_size[0]}×{args.img_size[1]} JPEGs decoded and transformed in the timed loop, '
            f'CPU, {torch.get_num_threads()} threads, best of {args.repeats} alternating rounds. The last column is the '
            f'largest absolute difference of the L2-normalised embeddings against the naive loop.\n\n' + markdown_table(
                ['method', 'time (s)', 'images/s', 'speed-up', 'max abs Δ vs naive'], rows))
    print(body)
    write_section('extract_speed', 'Feature extraction throughput (CPU)', body, path=report_path(parser, args))


if __name__ == '__main__':
    main()
