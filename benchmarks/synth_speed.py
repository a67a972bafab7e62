"""How fast the synthetic generator writes datasets: images per minute for each layout, one process.

Target: thousands of images per minute on 2 CPU cores. Rendering is numpy masks on a
coordinate grid plus PIL blur and encoding; CUHK03-NP writes two PNGs (labeled, detected) per shot.

    python -m benchmarks.synth_speed [--num-ids 200] [--images-per-id 10] [--img-size 128 64] [--quiet]
"""
import argparse
import os
import tempfile
import time
from pathlib import Path

from benchmarks.report import add_report_argument, markdown_table, report_path, write_section
from ptl_timm.data.datasets import build_dataset
from ptl_timm.data.synth import LAYOUTS, SYNTH_DOMAINS, generate_synthetic


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--num-ids', type=int, default=200)
    parser.add_argument('--images-per-id', type=int, default=10)
    parser.add_argument('--img-size', type=int, nargs=2, default=(128, 64), metavar=('H', 'W'))
    parser.add_argument('--quiet', action='store_true')
    add_report_argument(parser)
    args = parser.parse_args()
    rows = []
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        for index, layout in enumerate(LAYOUTS):
            domain = SYNTH_DOMAINS[index % len(SYNTH_DOMAINS)]
            started = time.perf_counter()
            path = generate_synthetic(Path(tmp) / layout, domain, layout=layout, num_ids=args.num_ids,
                                      images_per_id=args.images_per_id, img_size=args.img_size,
                                      progress=not args.quiet)
            seconds = time.perf_counter() - started
            files = sum(1 for p in path.rglob('*') if p.suffix in ('.jpg', '.png'))
            dataset = build_dataset(layout, path)
            rows.append([layout, domain, files, f'{seconds:.1f}', f'{files / seconds * 60:,.0f}',
                         f'{len(dataset.train)} / {len(dataset.query)} / {len(dataset.gallery)}'])
    body = (f'{args.num_ids} identities × {args.images_per_id} images, {args.img_size[0]}×{args.img_size[1]} px, '
            f'one process. 1-minute load average {load_before:.1f} before and {os.getloadavg()[0]:.1f} after the run '
            f'on {os.cpu_count()} logical cores (other jobs share the machine when it exceeds 1).\n\n'
            + markdown_table(['layout', 'domain', 'files written', 'seconds', 'images / minute',
                              'train / query / gallery read back'], rows))
    write_section('synth_speed', 'Synthetic generator speed', body, path=report_path(parser, args))
    print(body)


if __name__ == '__main__':
    main()
