"""The synthetic end-to-end run behind ``ptl-timm demo`` (README's first command).

Two synthetic domains are generated on disk in Market-1501 layout; on the first, a plain ReID
network (the baseline, and the student's own fine-tuned starting point) and the same network with
PTL BConv-Cells are fine-tuned, then the PTL model is distilled into the plain one (STD, λ=0.8).
Every model is evaluated on both domains (in-domain and cross-domain), a table is printed with what one
seed on a small split can and cannot show (:func:`caveat`), and the distilled student's ranked lists on
the first domain are drawn (``ranked.png``).
Small backbone, small images, CPU-friendly: ``--quick`` takes a few CPU minutes.
"""
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Union

from ptl_timm.data import build_dataset
from ptl_timm.data.synth import SYNTH_DOMAINS, generate_synthetic
from ptl_timm.eval import FeatureExtractor, FeatureSet
from ptl_timm.eval.retrieval import draw_rankings, search
from ptl_timm.engine import DistillConfig, TrainConfig, fine_tune, run_distill
from ptl_timm.engine.transfer import results_table
from ptl_timm.utils import PathLike, atomic_write

__all__ = ['DemoScale', 'DEMO_SCALES', 'run_demo', 'caveat']


@dataclass(frozen=True)
class DemoScale:
    num_ids: int
    images_per_id: int
    epochs: int
    distill_epochs: int


DEMO_SCALES = {
    'quick': DemoScale(num_ids=40, images_per_id=8, epochs=6, distill_epochs=4),
    'full': DemoScale(num_ids=100, images_per_id=10, epochs=15, distill_epochs=10),
}


def run_demo(
        output: PathLike,
        scale: Union[str, DemoScale] = 'quick',
        backbone: str = 'resnet18',
        progress: bool = True,
        seed: int = 0,
) -> Dict[str, Any]:
    """Generate the data, train baseline / PTL / PTL+STD, evaluate on both domains; returns the
    table (markdown) and the rows. Writes everything under ``output`` (replacing an earlier demo).
    ``scale``: 'quick', 'full' or a ``DemoScale``."""
    scale = DEMO_SCALES[scale] if isinstance(scale, str) else scale
    output = Path(output)
    img_size = (128, 64)
    domains = []
    for offset, domain in enumerate(SYNTH_DOMAINS[:2]):
        root = generate_synthetic(
            output / 'data', domain, layout='market1501', num_ids=scale.num_ids, images_per_id=scale.images_per_id,
            img_size=img_size, seed=seed + offset, progress=progress)
        domains.append(dict(name='market1501', root=str(root), label=f'synth-{domain}'))
    home, away = domains[0]['label'], domains[1]['label']
    say = print if progress else (lambda *args, **kwargs: None)
    say(f'Two synthetic domains in the Market-1501 layout: {home} (trained on) and {away} (never seen in '
        f'training). Every network starts from random weights (nothing is downloaded), so the table compares '
        f'baseline, PTL and PTL+STD with each other, not with the paper\'s ImageNet-initialised numbers.')
    common = dict(
        dataset=domains[0], test_datasets=domains[1:], img_size=img_size, pretrained=False, batch_size=16,
        lr=0.05, epochs=scale.epochs, lr_step=scale.epochs, eval_every=0, eval_batch_size=64, num_workers=0,
        seed=seed, progress=progress, overwrite=True)
    say(f'\n[1/3] baseline: reid_net ({backbone}) from random weights, fine-tuned on {home} for {scale.epochs} epochs')
    baseline = fine_tune(TrainConfig(
        **common, model='reid_net', model_args=dict(backbone=backbone), output=str(output / 'baseline')))
    say(f'\n[2/3] PTL: ptl_net ({backbone} with BConv-Cells) from random weights, fine-tuned on {home} for '
        f'{scale.epochs} epochs')
    ptl = fine_tune(TrainConfig(
        **common, model='ptl_net', model_args=dict(backbone=backbone), output=str(output / 'ptl')))
    say(f'\n[3/3] PTL+STD: the baseline distilled from the PTL model (λ=0.8) on {home} for '
        f'{scale.distill_epochs} epochs\n')
    student = run_distill(DistillConfig(**{
        **common, 'epochs': scale.distill_epochs, 'lr_step': scale.distill_epochs, 'lr': 0.01}, model='reid_net',
        model_args=dict(backbone=backbone), teacher=str(output / 'ptl' / 'last'),
        init_checkpoint=str(output / 'baseline' / 'last'), output=str(output / 'ptl_std')))
    rows: List[Dict[str, Any]] = [
        dict(step=name, model=f'{model} ({backbone})', route=domains[0]['label'], eval=result['last']['eval'])
        for name, model, result in (('baseline', 'reid_net', baseline), ('PTL', 'ptl_net', ptl),
                                    ('PTL+STD', 'reid_net', student))]
    table = results_table(rows, [d['label'] for d in domains])
    note = caveat(rows, home)
    with atomic_write(output / 'demo.md', 'w') as f:
        f.write(f'{table}\n{note}\n')
    picture = _draw_ranked_lists(output / 'ptl_std' / 'last', domains[0]['root'], output / 'ranked.png')
    return dict(table=table, caveat=note, rows=rows, output=str(output), ranked=str(picture))


def caveat(rows: List[Dict[str, Any]], home: str) -> str:
    """What the demo's table can and cannot show: one seed on a small split is a smoke test of the whole
    pipeline, not a comparison; the powered one is in BENCHMARKS.md."""
    queries = next((r['eval'][home]['num_query'] for r in rows if 'num_query' in r['eval'].get(home, {})), None)
    split = f'{queries} queries' if queries else 'a small split'
    return textwrap.fill(
        f'What this table can and cannot show: each row is one training run (one seed), scored on {split} of '
        f'{home}. At this size, differences of several mAP points between rows are within the noise of the split '
        f'and of training (another --seed can reorder the rows): the demo shows the pipeline working end to end, '
        f'not whether PTL or STD helps. The powered comparison (many seeds, a large test split) is in '
        f'BENCHMARKS.md, "Does the state matter? The miniature, powered".', width=100)


def _draw_ranked_lists(checkpoint: Path, root: str, path: Path) -> Path:
    """The student's ranked lists, at the input size its checkpoint records (the training size)."""
    dataset = build_dataset('market1501', root)
    extractor = FeatureExtractor(checkpoint)
    query, gallery = (FeatureSet(*extractor.extract_records(records), [r.path for r in records])
                      for records in (dataset.query, dataset.gallery))
    title = f'PTL+STD student on {Path(root).name}: each row a query and its top 8 gallery images'
    return draw_rankings(search(query, gallery, top_k=8), path, max_queries=8, title=title)
