"""Feature-extraction throughput on CPU: ``ptl_timm.FeatureExtractor`` against a naive per-image loop.

The naive loop is what a first script does: open each image, transform it, run the model on a batch
of one under ``torch.no_grad()``, normalise. ``FeatureExtractor`` batches the images (``--batch-size``)
under ``torch.inference_mode()``; it is timed in contiguous and channels-last memory format. Both
read the same synthetic gallery (``ptl_timm.data.synth``, ``--num-images`` JPEGs of ``--img-size``)
with the same small model (``reid_net`` on a timm ``--backbone``, random weights: throughput does not
depend on the weights), and their embeddings are checked to agree. Each timing is the best of
``--repeats`` passes after one warm-up image batch, in one run, so the ratio is what to read.

    python -m benchmarks.extract_speed [--backbone resnet18] [--num-images 256] [--batch-size 64]
"""
import argparse
import copy
import tempfile
import time
from typing import Callable, List, Tuple

import timm
import torch
import torch.nn.functional as F

from benchmarks.report import markdown_table, write_section
from ptl_timm.data.loader import read_image
from ptl_timm.data.synth import SYNTH_DOMAINS, generate_synthetic
from ptl_timm.eval.extract import FeatureExtractor, embed, image_files


def naive_loop(model: torch.nn.Module, transform: Callable, paths: List[str]) -> torch.Tensor:
    """One image per forward pass, plain ``no_grad``."""
    model.eval()
    feats = []
    with torch.no_grad():
        for path in paths:
            image = transform(read_image(path)).unsqueeze(0)
            feats.append(F.normalize(embed(model, image), dim=1))
    return torch.cat(feats)


def best_time(fn: Callable[[], torch.Tensor], repeats: int) -> Tuple[float, torch.Tensor]:
    best, out = float('inf'), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--backbone', default='resnet18', help='timm backbone of the reid_net model')
    parser.add_argument('--num-images', type=int, default=256)
    parser.add_argument('--img-size', type=int, nargs=2, default=(128, 64), metavar=('H', 'W'))
    parser.add_argument('--batch-size', type=int, default=64)
    parser.add_argument('--repeats', type=int, default=2)
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
        naive_loop(model, transform, paths[:4])  # warm-up (allocator, kernels)
        naive_seconds, reference = best_time(lambda: naive_loop(model, transform, paths), args.repeats)
        rows = [['naive per-image loop (no_grad, batch 1)', f'{naive_seconds:.2f}',
                 f'{len(paths) / naive_seconds:.0f}', '1.0×', '0']]
        for name, extractor in extractors.items():
            extractor(paths[:args.batch_size])
            seconds, feats = best_time(lambda: extractor(paths), args.repeats)
            diff = float((feats - reference).abs().max())
            rows.append([f'{name} (batch {args.batch_size})', f'{seconds:.2f}', f'{len(paths) / seconds:.0f}',
                         f'{naive_seconds / seconds:.1f}×', f'{diff:.1e}'])

    num_params = sum(p.numel() for p in model.parameters()) / 1e6
    body = (f'`reid_net` on `{args.backbone}` ({num_params:.1f} M parameters, random weights), {len(paths)} '
            f'synthetic {args.img_size[0]}×{args.img_size[1]} JPEGs decoded and transformed in the timed loop, '
            f'CPU, {torch.get_num_threads()} threads, best of {args.repeats} passes. The last column is the '
            f'largest absolute difference of the L2-normalised embeddings against the naive loop.\n\n' + markdown_table(
                ['method', 'time (s)', 'images/s', 'speed-up', 'max abs Δ vs naive'], rows))
    print(body)
    write_section('extract_speed', 'Feature extraction throughput (CPU)', body)


if __name__ == '__main__':
    main()
