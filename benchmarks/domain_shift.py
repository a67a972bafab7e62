"""Do the synthetic domains really shift? Train a plain ReID network on each domain, test it on every domain.

Each synthetic domain (``ptl_timm.data.synth``) has its own people, so in-domain and cross-domain
tests are both on unseen identities; what changes across domains is only the imaging (light, colour
cast, noise, blur, resolution, scale, occlusion, scene) and the clothing palette. A plain ``reid_net``
(default backbone timm's tiny ``test_resnet``, from scratch: nothing is downloaded) is trained with
CE + batch-hard triplet on P×K batches (``PKSampler``) of one domain, then evaluated (exact mAP /
Rank-1 from ``ptl_timm.eval.evaluate_rank``) on the query/gallery of every domain; the untrained
network is the chance-level reference. Expected: a model loses accuracy on domains it was
not trained on, i.e. for each test domain the in-domain model beats the models trained elsewhere.

Images are decoded once through ``ImageDataset`` with the evaluation transform and kept as one
tensor per split; training augments with a horizontal flip on that tensor. At 64×32 px re-decoding
every epoch would cost more than the network, and torch runs on one thread because the benchmark
machine's cores are shared (thread hand-offs dominated, 6× slower with two).

    python -m benchmarks.domain_shift [--quick] [--domains street night ...] [--backbone NAME] [--epochs N]
"""
import argparse
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Dict

import torch
import torch.nn.functional as F
from tqdm import tqdm

from benchmarks.report import add_report_argument, markdown_table, report_path, write_section
from ptl_timm import create_reid
from ptl_timm.data.datasets import ReIDDataset, build_dataset
from ptl_timm.data.loader import ImageDataset, PKSampler, build_transforms
from ptl_timm.data.synth import SYNTH_DOMAINS, generate_synthetic
from ptl_timm.eval import evaluate_rank
from ptl_timm.losses import ReIDLoss

SPLITS = ('train', 'query', 'gallery')


@dataclass(frozen=True)
class Setting:
    domains: tuple
    num_ids: int
    images_per_id: int
    num_cams: int
    epochs: int
    backbone: str = 'test_resnet'
    img_size: tuple = (64, 32)
    batch_size: int = 32
    num_instances: int = 4
    lr: float = 3e-3


SETTINGS = {
    'full': Setting(domains=SYNTH_DOMAINS, num_ids=128, images_per_id=8, num_cams=3, epochs=20),
    'quick': Setting(domains=('street', 'night', 'campus'), num_ids=64, images_per_id=8, num_cams=3, epochs=10),
}


class Domain:
    """One synthetic domain: its parsed dataset and every split decoded into one normalised tensor."""

    def __init__(self, name: str, dataset: ReIDDataset, img_size: tuple):
        self.name = name
        self.dataset = dataset
        transform = build_transforms(img_size, is_training=False)
        self.images = {}
        for split in SPLITS:
            images = ImageDataset(getattr(dataset, split), transform)
            self.images[split] = torch.stack([images[i][0] for i in range(len(images))])

    def labels(self, split: str, field: str) -> torch.Tensor:
        return torch.tensor([getattr(r, field) for r in getattr(self.dataset, split)])


def train(domain: Domain, s: Setting, seed: int, progress: bool) -> torch.nn.Module:
    """CE + triplet (margin 0.3), Adam, P×K batches of the training split, random horizontal flips."""
    torch.manual_seed(seed)
    model = create_reid(s.backbone, num_classes=domain.dataset.num_train_pids, embed_dim=256)
    sampler = PKSampler(domain.dataset.train, s.batch_size, s.num_instances, seed=seed)
    images, pids = domain.images['train'], domain.labels('train', 'pid')
    optimizer = torch.optim.Adam(model.parameters(), lr=s.lr, weight_decay=5e-4)
    criterion = ReIDLoss(ce_weight=1.0, triplet_weight=1.0, margin=0.3)
    model.train()
    for epoch in tqdm(range(s.epochs), desc=f'train {domain.name}', disable=not progress, leave=False):
        sampler.set_epoch(epoch)
        for batch in torch.tensor(list(sampler)).split(s.batch_size):
            flip = (torch.rand(len(batch)) < 0.5).view(-1, 1, 1, 1)
            x = torch.where(flip, images[batch].flip(3), images[batch])
            loss, _ = criterion(model.forward_reid(x), pids[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return model.eval()


@torch.inference_mode()
def evaluate(model: torch.nn.Module, domain: Domain) -> Dict[str, float]:
    q, g = (F.normalize(model.forward_reid(domain.images[split]).embedding, dim=1) for split in ('query', 'gallery'))
    result = evaluate_rank(q, g, domain.labels('query', 'pid'), domain.labels('gallery', 'pid'),
                           domain.labels('query', 'camid'), domain.labels('gallery', 'camid'), metric='cosine')
    return dict(mAP=100 * float(result['mAP']), R1=100 * float(result['cmc'][0]))


def report(results: Dict[str, Dict[str, Dict[str, float]]], s: Setting, seed: int, train_images: int,
           minutes: float) -> str:
    domains = list(s.domains)
    header = ['trained on \\ tested on'] + domains
    rows = [[source] + [('**{mAP:.1f} / {R1:.1f}**' if t == source else '{mAP:.1f} / {R1:.1f}').format(**results[source][t])
                        for t in domains] for source in results]
    per_target, kept = [], 0
    for target in domains:
        own = results[target][target]['mAP']
        others = [results[source][target]['mAP'] for source in domains if source != target]
        per_target.append([target, own, statistics.mean(others), max(others), results['untrained'][target]['mAP']])
        kept += own > max(others)
    return (
        f'Plain `reid_net` (`{s.backbone}` from scratch, 256-d embedding), CE + triplet, Adam {s.lr:g}, '
        f'{s.epochs} epochs of P×K = {s.batch_size // s.num_instances}×{s.num_instances} batches on one synthetic '
        f'domain ({s.num_ids} ids, half for training: {train_images} training images; {s.num_cams} cameras; '
        f'{s.img_size[0]}×{s.img_size[1]} px; seed {seed}), CPU, one thread. mAP / Rank-1 (%) on every '
        f'domain\'s own query/gallery (unseen identities in all cases); in-domain in bold.\n\n'
        + markdown_table(header, rows)
        + '\nPer test domain, mAP of the model trained on it vs the models trained elsewhere:\n\n'
        + markdown_table(['test domain', 'in-domain', 'cross-domain mean', 'best cross-domain', 'untrained'],
                         [[row[0]] + [f'{v:.1f}' for v in row[1:]] for row in per_target])
        + f'\nThe in-domain model is best on **{kept} of {len(domains)}** test domains; mean mAP in-domain '
          f'{statistics.mean(r[1] for r in per_target):.1f} vs cross-domain {statistics.mean(r[2] for r in per_target):.1f}. '
          f'Whole run (generation, decoding, {len(domains)} trainings, {len(domains) * (len(domains) + 1)} '
          f'evaluations) {minutes:.1f} min.\n')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--quick', action='store_true', help='three smaller domains, fewer epochs')
    parser.add_argument('--domains', nargs='+', choices=SYNTH_DOMAINS, help='override the setting')
    parser.add_argument('--backbone', default=Setting.backbone, help='any timm backbone (default: %(default)s)')
    parser.add_argument('--epochs', type=int, help='override the setting')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--work', help='folder for the generated data (default: a temporary folder)')
    parser.add_argument('--quiet', action='store_true')
    add_report_argument(parser)
    args = parser.parse_args()
    torch.set_num_threads(1)
    s = SETTINGS['quick' if args.quick else 'full']
    s = replace(s, domains=tuple(args.domains or s.domains), epochs=args.epochs or s.epochs, backbone=args.backbone)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        domains = {name: Domain(name, build_dataset('market1501', generate_synthetic(
            Path(args.work or tmp), name, num_ids=s.num_ids, images_per_id=s.images_per_id, num_cams=s.num_cams,
            img_size=s.img_size, seed=args.seed)), s.img_size) for name in s.domains}
    torch.manual_seed(args.seed)
    untrained = create_reid(args.backbone, num_classes=0, embed_dim=256).eval()
    results = {'untrained': {t: evaluate(untrained, d) for t, d in domains.items()}}
    for source, domain in domains.items():
        model = train(domain, s, args.seed, not args.quiet)
        results[source] = {t: evaluate(model, d) for t, d in domains.items()}
        if not args.quiet:
            print(f'trained on {source}: mAP', {t: round(r['mAP'], 1) for t, r in results[source].items()}, flush=True)
    train_images = len(next(iter(domains.values())).dataset.train)
    body = report(results, s, args.seed, train_images, (time.perf_counter() - started) / 60)
    write_section('domain_shift', 'Synthetic domain shift', body,
                  command='python -m benchmarks.domain_shift ' + ' '.join(sys.argv[1:]),
                  path=report_path(parser, args))
    print(body)


if __name__ == '__main__':
    main()
