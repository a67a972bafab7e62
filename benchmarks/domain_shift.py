"""Do the synthetic domains really shift? Train a plain ReID network on each domain, test it on every domain.

Each synthetic domain (``ptl_timm.data.synth``) has its own people, so in-domain and cross-domain
tests are both on unseen identities; what changes across domains is only the imaging (light, colour
cast, noise, blur, resolution, scale, occlusion, scene) and the clothing palette. A plain ``reid_net``
(timm ResNet-10-T from scratch, no ImageNet weights: nothing is downloaded) is trained briefly with
identity cross-entropy on P×K batches of one domain, then evaluated (exact mAP / Rank-1 of cosine
distance, ``ptl_timm.eval.evaluate_rank``) on the query/gallery of every domain. Random embeddings
give the chance level. Acceptance (issue 4): a model loses accuracy on domains it was not trained
on, i.e. for each test domain the in-domain model beats the models trained elsewhere.

    python -m benchmarks.domain_shift [--quick] [--domains street night ...] [--epochs N] [--work DIR]
"""
import argparse
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from benchmarks.report import markdown_table, write_section
from ptl_timm import create_reid
from ptl_timm.data.datasets import ReIDDataset, ReIDRecord, build_dataset
from ptl_timm.data.loader import ImageDataset, PKSampler, build_transforms
from ptl_timm.data.synth import SYNTH_DOMAINS, generate_synthetic
from ptl_timm.eval import evaluate_rank
from ptl_timm.losses import ReIDLoss


@dataclass(frozen=True)
class Setting:
    num_ids: int
    images_per_id: int
    num_cams: int
    img_size: tuple
    epochs: int
    batch_size: int = 32
    num_instances: int = 4
    lr: float = 1e-3


BACKBONE = 'resnet10t'
SETTINGS = {
    'full': Setting(num_ids=96, images_per_id=8, num_cams=3, img_size=(64, 32), epochs=15),
    'quick': Setting(num_ids=48, images_per_id=8, num_cams=3, img_size=(64, 32), epochs=8, batch_size=16),
}


def make_domains(work: Path, domains: Sequence[str], s: Setting, seed: int) -> Dict[str, ReIDDataset]:
    return {d: build_dataset('market1501', generate_synthetic(
        work, d, num_ids=s.num_ids, images_per_id=s.images_per_id, num_cams=s.num_cams, img_size=s.img_size,
        seed=seed)) for d in domains}


def train(dataset: ReIDDataset, s: Setting, seed: int, progress: bool) -> torch.nn.Module:
    """Identity cross-entropy with Adam on P×K batches of the training split."""
    torch.manual_seed(seed)
    model = create_reid(BACKBONE, num_classes=dataset.num_train_pids, embed_dim=256)
    sampler = PKSampler(dataset.train, s.batch_size, s.num_instances, seed=seed)
    loader = DataLoader(ImageDataset(dataset.train, build_transforms(s.img_size, is_training=True)),
                        batch_size=s.batch_size, sampler=sampler, drop_last=True)
    optimizer = torch.optim.Adam(model.parameters(), lr=s.lr, weight_decay=5e-4)
    criterion = ReIDLoss(ce_weight=1.0)
    model.train()
    for epoch in range(s.epochs):
        sampler.set_epoch(epoch)
        for images, pids, _, _ in loader:
            loss, _ = criterion(model.forward_reid(images), pids)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        if progress:
            print(f'  {dataset.root}: epoch {epoch + 1}/{s.epochs} loss {loss.item():.3f}', flush=True)
    return model.eval()


@torch.inference_mode()
def embed(model: torch.nn.Module, records: List[ReIDRecord], img_size: tuple) -> torch.Tensor:
    loader = DataLoader(ImageDataset(records, build_transforms(img_size, is_training=False)), batch_size=128)
    return torch.cat([F.normalize(model.forward_reid(images).embedding, dim=1) for images, _, _, _ in loader])


def scores(q_feats: torch.Tensor, g_feats: torch.Tensor, dataset: ReIDDataset) -> Dict[str, float]:
    q, g = dataset.query, dataset.gallery
    result = evaluate_rank(q_feats, g_feats, [r.pid for r in q], [r.pid for r in g], [r.camid for r in q],
                           [r.camid for r in g], metric='cosine')
    return dict(mAP=100 * float(result['mAP']), R1=100 * float(result['cmc'][0]))


def evaluate(model: torch.nn.Module, dataset: ReIDDataset, img_size: tuple) -> Dict[str, float]:
    return scores(embed(model, dataset.query, img_size), embed(model, dataset.gallery, img_size), dataset)


def chance(dataset: ReIDDataset, seed: int) -> Dict[str, float]:
    """The same metrics for random embeddings: what a model that learned nothing transferable gets."""
    generator = torch.Generator().manual_seed(seed)
    q, g = (torch.randn(len(records), 256, generator=generator) for records in (dataset.query, dataset.gallery))
    return scores(q, g, dataset)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--quick', action='store_true', help='smaller domains and fewer epochs')
    parser.add_argument('--domains', nargs='+', choices=SYNTH_DOMAINS,
                        help='domains to train and test on (default: all; --quick: the first three)')
    parser.add_argument('--epochs', type=int, help='override the setting')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--work', help='folder for the generated data (default: a temporary folder)')
    parser.add_argument('--quiet', action='store_true')
    args = parser.parse_args()
    s = SETTINGS['quick' if args.quick else 'full']
    domains = args.domains or list(SYNTH_DOMAINS[:3] if args.quick else SYNTH_DOMAINS)
    if args.epochs:
        s = Setting(**{**s.__dict__, 'epochs': args.epochs})
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        datasets = make_domains(Path(args.work or tmp), domains, s, args.seed)
        generated = time.perf_counter() - started
        results = {'chance (random embeddings)': {t: chance(d, args.seed) for t, d in datasets.items()}}
        for source, dataset in datasets.items():
            model = train(dataset, s, args.seed, not args.quiet)
            results[source] = {t: evaluate(model, d, s.img_size) for t, d in datasets.items()}
            if not args.quiet:
                print(source, {t: round(r['mAP'], 1) for t, r in results[source].items()}, flush=True)
        elapsed = time.perf_counter() - started

    header = ['trained on \\ tested on'] + list(datasets)
    rows = [[source] + [('**{mAP:.1f} / {R1:.1f}**' if t == source else '{mAP:.1f} / {R1:.1f}').format(**r)
                        for t, r in per_target.items()] for source, per_target in results.items()]
    drops, kept = [], 0
    for target in datasets:
        own = results[target][target]['mAP']
        others = [results[src][target]['mAP'] for src in datasets if src != target]
        drops.append([target, f'{own:.1f}', f'{statistics.mean(others):.1f}', f'{max(others):.1f}',
                      f'{results["chance (random embeddings)"][target]["mAP"]:.1f}'])
        kept += own > max(others)
    train_images = len(next(iter(datasets.values())).train)
    body = (
        f'Plain `reid_net` ({BACKBONE} from scratch, 256-d embedding), cross-entropy, Adam {s.lr:g}, '
        f'{s.epochs} epochs of P×K = {s.batch_size // s.num_instances}×{s.num_instances} batches on one synthetic '
        f'domain ({s.num_ids} ids, half for training: {train_images} training images; {s.num_cams} cameras; '
        f'{s.img_size[0]}×{s.img_size[1]} px; seed {args.seed}). mAP / Rank-1 (%) on every domain\'s own '
        f'query/gallery (unseen identities in all cases); in-domain in bold.\n\n'
        + markdown_table(header, rows)
        + '\nPer test domain, mAP of the model trained on it vs models trained elsewhere:\n\n'
        + markdown_table(['test domain', 'in-domain', 'cross-domain mean', 'best cross-domain', 'chance'], drops)
        + f'\nThe in-domain model is best on {kept} of {len(datasets)} test domains; mean in-domain mAP '
          f'{statistics.mean(float(d[1]) for d in drops):.1f} vs cross-domain '
          f'{statistics.mean(float(d[2]) for d in drops):.1f}. Data generated in {generated:.0f} s, '
          f'whole run {elapsed / 60:.1f} min.\n')
    write_section('domain_shift', 'Synthetic domain shift (issue 4, acceptance 4)', body)
    print(body)


if __name__ == '__main__':
    main()
