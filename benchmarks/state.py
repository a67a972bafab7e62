"""Does the state matter? The miniature of ``benchmarks/transfer.py`` powered: many seeds, a large test
split, every contrast a paired-by-seed Δ with a 95% confidence interval and the smallest effect the
design could detect.

Same domains, pre-training and fine-tuning as the transfer benchmark (ResNet-18 at 128×64,
pre-trained on 'street', fine-tuned on 'campus'), except that one pre-trained backbone serves every
seed (the seeds vary the target data, the new layers' initialisation and the batch order; a machine
that pre-trains another backbone adds whole seeds, see ``StateExperiment``). Every
run is also scored on a large test split of the target domain: 230 unseen identities (drawn with
another seed), about 700 queries and 2,000 gallery images, the same split for every run of a seed;
ranked against the whole gallery, and (comparable with the old small split's numbers) averaged over
galleries of the small split's 25 identities. Tables, most important first:

* ``key``: plain vs PTL state 'batch' vs PTL state 'none' (stateless), ``key_seeds`` seeds;
* ``warm``: the same PTL 'batch' checkpoints evaluated with the zero state (the paper) and with the
  warm state (the cells' state after the last training batch, frozen), no retraining;
* ``post``: the gain of average query expansion (AQE) and of k-reciprocal re-ranking on the same
  plain and PTL 'batch' runs (no retraining);
* ``small-batch``: batch 8 and 16 at the same epochs, plain / 'batch' / 'none', where the paper's
  argument (the state stands in for data a small batch does not see) predicts the largest benefit;
* ``xbm``: a cross-batch memory of embeddings for the triplet loss (XBM, Wang et al., CVPR 2020) on
  the plain model, with its in-batch control (the same triplet loss without memory), against PTL;
* ``bot``: the strong baseline (BoT: last stride 1, BNNeck, its recipe at the miniature's size and
  epochs) with and without PTL, against the paper's baseline, and the gain of average query
  expansion and of k-reciprocal re-ranking on BoT's features.

A last table compares the spread on the old small split (74 queries, 126 gallery) with the large one.

    python -m benchmarks.state --reuse       # full setting: about 2.5 hours on 2 idle CPU cores; --reuse adds seeds later
    python -m benchmarks.state --quick       # CI-size, writes only under --work
"""
import argparse
import hashlib
import json
import math
import statistics
import time
from collections import Counter
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch
from safetensors.torch import load_file, save_file

from ptl_timm.data import build_dataset
from ptl_timm.data.synth import SYNTH_DOMAINS, generate_synthetic
from ptl_timm.eval import FeatureExtractor, evaluate_features, query_expansion
from ptl_timm.hub import load_model
from ptl_timm.layers import restore_latent_states, set_eval_state
from ptl_timm.utils import atomic_path, atomic_save_json
from benchmarks.report import ROOT, markdown_table, report_path, write_section
from benchmarks.transfer import (
    QUICK_MINIATURE, Experiment, Miniature, add_run_arguments, finished, previous_runs, run_folders)

RESULTS_DIR = ROOT / 'benchmarks' / 'results' / 'state'
TEST_SEED_OFFSET = 10_000  # the large test split's people are drawn with seed + this: unseen identities
SEED_COUNTS = ('key_seeds', 'seeds')  # may grow between invocations of --reuse


@dataclass(frozen=True)
class Setting(Miniature):
    """One size for every run; ``key_seeds`` for the key and warm tables, ``seeds`` for the others."""
    small_batches: Tuple[int, ...] = (8, 16)
    test_ids: int = 230  # large split: identities and images of each (about 700 queries, 2,000 gallery)
    test_images_per_id: int = 12
    triplet_margin: float = 0.3
    xbm_size: int = 128  # embeddings remembered: 4 batches of 32
    xbm_weight: float = 1.0
    key_seeds: int = 20
    seeds: int = 10


QUICK = Setting(**QUICK_MINIATURE, small_batches=(4,), test_ids=6, test_images_per_id=6, xbm_size=16, key_seeds=2)


# ---------------------------------------------------------------------------------------------
# statistics


def t_quantile(p: float, df: int) -> float:
    """The ``p`` quantile of Student's t with ``df`` degrees of freedom (Simpson integration of the
    density and bisection: the benchmark needs no SciPy)."""
    if not 0.5 <= p < 1 or df < 1:
        raise ValueError(f't_quantile needs 0.5 <= p < 1 and df >= 1, got p={p}, df={df}')
    log_norm = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)

    def cdf(x: float, steps: int = 2000) -> float:
        h = x / steps
        density = [math.exp(log_norm - (df + 1) / 2 * math.log1p((i * h) ** 2 / df)) for i in range(steps + 1)]
        return 0.5 + h / 3 * (density[0] + density[-1] + 4 * sum(density[1:-1:2]) + 2 * sum(density[2:-1:2]))
    low, high = 0.0, 1.0
    while cdf(high) < p:
        low, high = high, 2 * high
    for _ in range(40):
        middle = (low + high) / 2
        low, high = (middle, high) if cdf(middle) < p else (low, middle)
    return (low + high) / 2


class Paired(NamedTuple):
    """A paired-by-seed difference: mean, 95% CI, SD of the differences, seeds, and the smallest true
    effect the design detects with 80% power at α = 0.05 two-sided."""
    mean: float
    low: float
    high: float
    sd: float
    n: int
    detectable: float


def paired_difference(a: Sequence[float], b: Sequence[float], alpha: float = 0.05, power: float = 0.8) -> Paired:
    """``a - b`` paired by position: t-based CI, and the detectable effect
    ``(t(1-α/2) + t(power)) · sd / √n`` (the usual normal-shift approximation of a paired t-test's power)."""
    if len(a) != len(b) or len(a) < 2:
        raise ValueError(f'paired_difference needs two equally long lists of at least 2 values, got {len(a)}, {len(b)}')
    deltas = [x - y for x, y in zip(a, b)]
    n, mean, sd = len(deltas), statistics.mean(deltas), statistics.stdev(deltas)
    se = sd / math.sqrt(n)
    half = t_quantile(1 - alpha / 2, n - 1) * se
    detectable = (t_quantile(1 - alpha / 2, n - 1) + t_quantile(power, n - 1)) * se
    return Paired(mean, mean - half, mean + half, sd, n, detectable)


# ---------------------------------------------------------------------------------------------
# runs


class StateExperiment(Experiment):
    """Transfer's experiment, with each run (fine-tuned once per invocation) also scored on the large
    test split: features kept beside the checkpoint so later metrics need no re-extraction.

    Every run records the pre-trained backbone it started from (``backbone``: a hash of its weights,
    also in the run's key): pre-training is not bit-reproducible across machines, so runs made from
    different backbones are never paired. A table's seed is one unit: its rows all come from one
    backbone, so a unit recorded with an earlier backbone is kept, and a unit that lacks a row is
    completed by running all its rows with the current backbone."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.backbone_id: Optional[str] = None  # known once the pre-trained backbone exists

    def key(self, name: str, seed: int) -> str:
        return f'{name}/seed{seed}@{self.backbone_id}'

    def _record(self, name: str, seed: int, *args) -> None:
        super()._record(name, seed, *args)
        self.runs[self.key(name, seed)]['backbone'] = self.backbone_id

    def pretrained_init(self) -> Dict[str, Any]:
        """The pre-trained backbone as init kwargs (trained on first need; kept while its finished
        checkpoint is in the work folder), and ``backbone_id`` set from its weights."""
        last = self.work / 'seed0' / 'pretrain' / 'last'
        if not finished(last):
            s = self.s
            Experiment.finetune(self, 'pretrain', 0, self.domain(SYNTH_DOMAINS[0], 0, s.pretrain_ids),
                                dict(pretrained=False), None, epochs=s.pretrain_epochs, lr_step=s.pretrain_epochs)
        init = self.backbone_init(last)
        if self.backbone_id is None:
            weights = Path(init['model_args']['pretrained_cfg_overlay']['file'])
            self.backbone_id = hashlib.sha256(weights.read_bytes()).hexdigest()[:12]
        trained = self.runs.pop('pretrain/seed0@None', None)
        if trained:
            self.runs[f'pretrain@{self.backbone_id}'] = dict(trained, backbone=self.backbone_id)
        return init

    def finetune(self, name: str, seed: int, dataset: Any, init: Dict[str, Any], state_mode: Optional[str],
                 **kwargs) -> Path:
        if self.key(name, seed) in self.runs:  # an earlier table of this invocation already ran it
            return self.work / f'seed{seed}' / name / 'last'
        return super().finetune(name, seed, dataset, init, state_mode, **kwargs)

    def _with_evals(self, key: str, evals: Sequence[str]) -> Optional[Dict[str, Any]]:
        record = self.runs.get(key) or self.previous.get(key)
        if record and all('mAP_groups' in record.get('test', {}).get(e, {}) for e in evals):
            return record
        return None

    def recorded_unit(self, runs: Sequence[Tuple[str, Sequence[str]]], seed: int) -> bool:
        """Whether some backbone has every run ``(name, evals)`` of a table's seed recorded: such a unit
        needs no checkpoint, so a later session adds seeds and tables from the committed runs.json."""
        backbones = dict.fromkeys(r.get('backbone') for r in (*self.previous.values(), *self.runs.values())
                                  if r.get('seed') == seed)
        for backbone in backbones:
            records = {f'{name}/seed{seed}@{backbone}': self._with_evals(f'{name}/seed{seed}@{backbone}', evals)
                       for name, evals in runs}
            if all(records.values()):
                self.runs.update(records)
                return True
        return False

    def recorded(self, name: str, seed: int, evals: Sequence[str]) -> bool:
        """Whether run ``name`` is recorded with every result in ``evals`` for the current backbone."""
        record = self._with_evals(self.key(name, seed), evals)
        if record:
            self.runs[self.key(name, seed)] = record
        return record is not None

    def checkpoint(self, name: str, seed: int) -> bool:
        """Whether an earlier invocation's run ``name`` left its finished checkpoint in the work folder."""
        return self.key(name, seed) in self.previous and finished(self.work / f'seed{seed}' / name / 'last')

    def test_split(self, seed: int) -> Any:
        root = generate_synthetic(
            self.work / f'test-seed{seed}', SYNTH_DOMAINS[3], layout='market1501', num_ids=2 * self.s.test_ids,
            images_per_id=self.s.test_images_per_id, img_size=self.s.img_size, seed=TEST_SEED_OFFSET + seed)
        return build_dataset('market1501', root)

    def score(self, name: str, seed: int, test_set: Any, evals: Sequence[str] = ('zero',)) -> None:
        """Metrics of run ``name`` on the large split for each of ``evals``: 'zero' (the paper's zero
        state), 'warm' (the cells' state after the last training batch, frozen), 'aqe' / 'rerank' (the
        zero-state features after average query expansion / k-reciprocal re-ranking). Each over the
        whole gallery and averaged over galleries of ``num_ids // 2`` identities (``*_groups``)."""
        record = self.runs[self.key(name, seed)]
        scores = record.setdefault('test', {})
        missing = [key for key in evals if 'mAP_groups' not in scores.get(key, {})]
        if not missing:
            return
        started = time.time()
        last = self.work / f'seed{seed}' / name / 'last'
        model = load_model(last, num_classes=0)
        for key in missing:
            state = 'warm' if key == 'warm' else 'zero'
            if state == 'warm':
                restore_latent_states(model, torch.load(last / 'train_state.pt', weights_only=True)['latent_states'])
            set_eval_state(model, state)
            q, g = self._features(model, last, state, test_set)
            scores[key] = _metrics(q, g, test_set, key, self.s.num_ids // 2)
        record['eval_seconds'] = round(record.get('eval_seconds', 0) + time.time() - started, 1)

    def _features(self, model: torch.nn.Module, last: Path, state: str, test_set: Any) -> Tuple[torch.Tensor, ...]:
        path = last.parent / f'test-features-{state}.safetensors'
        if path.exists():
            saved = load_file(str(path))
            return saved['query'], saved['gallery']
        extractor = FeatureExtractor(model, device='cpu', batch_size=128, img_size=self.s.img_size)
        q, g = (extractor.extract_records(records)[0] for records in (test_set.query, test_set.gallery))
        with atomic_path(path) as tmp:
            save_file(dict(query=q, gallery=g), str(tmp))
        return q, g


def _pid_cam(records: Sequence[Any]) -> Tuple[torch.Tensor, torch.Tensor]:
    return torch.tensor([r.pid for r in records]), torch.tensor([r.camid for r in records])


def _rank(q: torch.Tensor, g: torch.Tensor, q_labels: Tuple[torch.Tensor, ...], g_labels: Tuple[torch.Tensor, ...],
          key: str) -> Tuple[float, float]:
    if key == 'aqe':
        q, g = query_expansion(q, g, device='cpu')
    metrics = evaluate_features(q, g, q_labels[0], g_labels[0], q_labels[1], g_labels[1], rerank=key == 'rerank',
                                device='cpu')
    return 100 * float(metrics['mAP']), 100 * float(metrics['cmc'][0])


def _metrics(q: torch.Tensor, g: torch.Tensor, test_set: Any, key: str, group: int) -> Dict[str, float]:
    """mAP and Rank-1 over the whole large split, and their means over disjoint groups of ``group``
    identities, each ranked against its own gallery: the old small split's difficulty, many times over."""
    q_labels, g_labels = _pid_cam(test_set.query), _pid_cam(test_set.gallery)
    full = _rank(q, g, q_labels, g_labels, key)
    ids = q_labels[0].unique()
    parts = []
    for start in range(0, len(ids) - group + 1, group):
        chosen = ids[start:start + group]
        qm, gm = torch.isin(q_labels[0], chosen), torch.isin(g_labels[0], chosen)
        parts.append(_rank(q[qm], g[gm], tuple(t[qm] for t in q_labels), tuple(t[gm] for t in g_labels), key))
    return dict(mAP=full[0], rank1=full[1], mAP_groups=statistics.mean(p[0] for p in parts),
                rank1_groups=statistics.mean(p[1] for p in parts), groups=len(parts))


# BoT (issue 14) in the miniature: its recipe at the miniature's size, epochs and batch; the warm-up
# scaled like the epochs (BoT: 10 of 120)
BOT_RECIPE = dict(recipe='bot', lr=3.5e-4, warmup_epochs=1)
BOT_ARGS = dict(neck='bnneck', last_stride=1, classifier_dims=())


def _batch_sizes(setting: Setting) -> List[Tuple[str, int]]:
    """The small-batch table's (run-name suffix, batch size): the setting's own batch is the key
    table's trio, each small batch has its own; ``run_table`` and ``tables`` both name runs from it."""
    return [('', setting.batch_size), *((f'-bs{batch}', batch) for batch in setting.small_batches)]


def run_table(exp: StateExperiment, table: str, seed: int, train: bool = True) -> None:
    """The runs one table needs for one seed (runs shared with an earlier table are not repeated),
    all from one backbone (see ``StateExperiment``). Data and the pre-trained backbone are made on
    first need: a seed whose unit is recorded needs neither. ``train=False`` only scores the runs
    whose checkpoints are there."""
    s = exp.s
    runs: List[Tuple[str, Optional[str], Tuple[str, ...], Dict[str, Any]]] = []

    def run(name: str, state_mode: Optional[str], evals: Sequence[str] = ('zero',), **overrides) -> None:
        runs.append((name, state_mode, tuple(evals), overrides))

    if table in ('key', 'warm'):
        run('plain', None)
        run('ptl-batch', 'batch', ('zero', 'warm'))
        run('ptl-none', 'none')
    elif table == 'post':
        run('plain', None, ('zero', 'aqe', 'rerank'))
        run('ptl-batch', 'batch', ('zero', 'aqe', 'rerank'))
    elif table == 'small-batch':
        for suffix, batch in _batch_sizes(s):
            run(f'plain{suffix}', None, batch_size=batch)
            run(f'ptl-batch{suffix}', 'batch', batch_size=batch)
            run(f'ptl-none{suffix}', 'none', batch_size=batch)
    elif table == 'xbm':
        run('plain', None)
        run('ptl-batch', 'batch', ('zero', 'warm'))
        metric = dict(sampler='pk', triplet_weight=1.0, triplet_margin=s.triplet_margin)
        run('plain-triplet', None, **metric)
        run('plain-xbm', None, xbm_size=s.xbm_size, xbm_weight=s.xbm_weight, **metric)
    elif table == 'bot':
        run('plain', None)
        run('bot', None, ('zero', 'aqe', 'rerank'), model_args=dict(BOT_ARGS, embed_dim=0), **BOT_RECIPE)
        for mode in ('batch', 'none'):
            run(f'bot-ptl-{mode}', mode, model_args=BOT_ARGS, **BOT_RECIPE)
    else:
        raise ValueError(f'unknown table {table!r}')
    if exp.recorded_unit([(name, evals) for name, _, evals, _ in runs], seed):
        return
    if not (train or finished(exp.work / 'seed0' / 'pretrain' / 'last')):
        return
    init = exp.pretrained_init()
    made: Dict[str, Any] = {}
    for name, state_mode, evals, overrides in runs:
        if exp.recorded(name, seed, evals) or not (train or exp.checkpoint(name, seed)):
            continue
        if 'target' not in made:
            made['target'], made['test'] = exp.domain(SYNTH_DOMAINS[3], seed, s.num_ids), exp.test_split(seed)
        exp.finetune(name, seed, made['target'], dict(init), state_mode, **overrides)
        exp.score(name, seed, made['test'], evals)


# ---------------------------------------------------------------------------------------------
# tables


class Table(NamedTuple):
    title: str
    seeds: str  # the Setting field with this table's seed count
    rows: List[Tuple[str, str, str]]  # (run name, eval, label)
    contrasts: List[Tuple[int, int]]  # (row, reference row): Δ = row - reference


def _trio(suffix: str, label: str) -> List[Tuple[str, str, str]]:
    return [(f'plain{suffix}', 'zero', f'plain{label}'), (f'ptl-batch{suffix}', 'zero', f"PTL 'batch'{label}"),
            (f'ptl-none{suffix}', 'zero', f"PTL 'none' (stateless){label}")]


TRIO_CONTRASTS = [(1, 0), (2, 0), (1, 2)]


def tables(setting: Setting) -> Dict[str, Table]:
    batches = _batch_sizes(setting)
    return {
        'key': Table('The key contrast: plain vs PTL with and without state', 'key_seeds',
                     _trio('', ''), TRIO_CONTRASTS),
        'warm': Table('Train/test mismatch: the same PTL \'batch\' checkpoints with a zero vs a warm state',
                      'key_seeds', [('ptl-batch', 'zero', "PTL 'batch', zero state (the paper)"),
                                    ('ptl-batch', 'warm', "PTL 'batch', warm state (frozen after training)"),
                                    ('plain', 'zero', 'plain')], [(1, 0), (1, 2)]),
        'post': Table('Retrieval post-processing: average query expansion and k-reciprocal re-ranking', 'key_seeds', [
            ('plain', 'zero', 'plain'), ('plain', 'aqe', 'plain + AQE'), ('plain', 'rerank', 'plain + re-ranking'),
            ('ptl-batch', 'zero', "PTL 'batch'"), ('ptl-batch', 'aqe', "PTL 'batch' + AQE"),
            ('ptl-batch', 'rerank', "PTL 'batch' + re-ranking")], [(1, 0), (2, 0), (4, 3), (5, 3)]),
        'small-batch': Table('Small batches, same epochs: plain vs PTL with and without state', 'seeds',
                             [row for suffix, batch in batches for row in _trio(suffix, f', batch {batch}')],
                             [(i + 3 * k, 3 * k) for k in range(len(batches)) for i in (1, 2)]
                             + [(1 + 3 * k, 2 + 3 * k) for k in range(len(batches))]),
        'xbm': Table('Cross-batch memory (XBM) of embeddings vs PTL\'s latent state', 'seeds', [
            ('plain', 'zero', 'plain (CE)'), ('plain-triplet', 'zero', 'plain, CE + triplet (P×K, in-batch)'),
            ('plain-xbm', 'zero', f'plain, CE + triplet + XBM memory of {setting.xbm_size}'),
            ('ptl-batch', 'zero', "PTL 'batch' (CE)")], [(1, 0), (2, 1), (2, 0), (3, 0), (2, 3)]),
        'bot': Table('On a strong baseline: BoT vs BoT + PTL, and the paper\'s baseline; AQE and re-ranking', 'seeds', [
            ('plain', 'zero', "paper's baseline (plain)"), ('bot', 'zero', 'BoT'),
            ('bot-ptl-batch', 'zero', "BoT + PTL 'batch'"), ('bot-ptl-none', 'zero', "BoT + PTL 'none' (stateless)"),
            ('bot', 'aqe', 'BoT + AQE'), ('bot', 'rerank', 'BoT + re-ranking')],
            [(1, 0), (2, 1), (3, 1), (2, 3), (4, 1), (5, 1)]),
    }


# the measures of a run: (label, where it is read from)
MEASURES = (('mAP', 'mAP'), ('Rank-1', 'rank1'), ('mAP, old-size galleries', 'mAP_groups'))


def _values(runs: Dict[str, Dict[str, Any]], name: str, state: str, seeds: int,
            split: str = 'large') -> Dict[Tuple[int, str], Tuple[float, ...]]:
    """The ``MEASURES`` by (seed, backbone) of run ``name`` on the large split (state ``state``), or mAP
    and Rank-1 on the training set's own small split."""
    found = {}
    for r in runs.values():
        if r['name'] != name or r['seed'] >= seeds:
            continue
        metrics = r.get('test', {}).get(state, {}) if split == 'large' else r['eval'][SYNTH_DOMAINS[3]]
        if all(field in metrics for _, field in MEASURES[:2 if split == 'small' else 3]):
            found[r['seed'], r['backbone']] = tuple(metrics[field] for _, field in MEASURES if field in metrics)
    return found


def _units(rows: List[Dict[Tuple[int, str], Tuple[float, ...]]]) -> List[Dict[int, Tuple[float, ...]]]:
    """Each row's values by seed, for the seeds that one backbone completes (all the rows), taking the
    first such backbone in recording order: a seed is one unit, never a mix of backbones."""
    order = list(dict.fromkeys(backbone for row in rows for _, backbone in row))
    seeds = sorted({seed for row in rows for seed, _ in row})
    chosen = {seed: next((b for b in order if all((seed, b) in row for row in rows)), None) for seed in seeds}
    return [{seed: row[seed, backbone] for seed, backbone in chosen.items() if backbone} for row in rows]


def _ci(p: Paired) -> str:
    return f'{p.mean:+.2f} [{p.low:+.2f}, {p.high:+.2f}]'


def _mean_sd(xs: List[float]) -> str:
    if not xs:
        return '–'
    return f'{statistics.mean(xs):.2f} ± {statistics.stdev(xs):.2f}' if len(xs) > 1 else f'{xs[0]:.2f}'


def render_table(runs: Dict[str, Dict[str, Any]], setting: Setting, table: Table) -> Tuple[str, list]:
    seeds = getattr(setting, table.seeds)
    values = _units([_values(runs, name, state, seeds) for name, state, _ in table.rows])
    rows = [[label] + [_mean_sd([v[i] for v in vals.values()]) for i in range(len(MEASURES))] + [len(vals)]
            for (_, _, label), vals in zip(table.rows, values)]
    text = markdown_table(['setting'] + [f'{m} % (mean ± sd)' for m, _ in MEASURES] + ['seeds'], rows)
    contrast_rows, forest = [], []
    for row, ref in table.contrasts:
        common = sorted(set(values[row]) & set(values[ref]))
        label = f'{table.rows[row][2]} − {table.rows[ref][2]}'
        if len(common) < 2:
            contrast_rows.append([label] + ['–'] * (len(MEASURES) + 1) + [len(common)])
            continue
        deltas = [paired_difference([values[row][s][i] for s in common], [values[ref][s][i] for s in common])
                  for i in range(len(MEASURES))]
        contrast_rows.append([label] + [_ci(d) for d in deltas] + [f'{deltas[0].sd:.2f}', len(common)])
        forest.append((label, deltas))
    text += '\n' + markdown_table(['contrast (paired by seed)'] + [f'Δ {m} [95% CI]' for m, _ in MEASURES]
                                  + ['sd of Δ mAP', 'seeds'], contrast_rows)
    if forest:
        whole, small = (sorted(deltas[i].detectable for _, deltas in forest) for i in (0, 2))
        text += (f'\nPower: from the observed spread of the paired differences, a true Δ mAP of '
                 f'{whole[0]:.2f} to {whole[-1]:.2f} points over the whole large split ({small[0]:.2f} to '
                 f'{small[-1]:.2f} on the old-size galleries), depending on the contrast, is detected with 80% power '
                 f'at α = 0.05, two-sided.\n')
    return text, forest


def render_precision(runs: Dict[str, Dict[str, Any]], setting: Setting, large: Tuple[int, int]) -> str:
    """How much the large split (``large``: seed 0's query and gallery sizes) shrinks the spread: mean
    and sd over seeds of mAP and of the paired Δ mAP on the small split, the large one and its
    galleries of the small split's size (the small split's difficulty): the sd next to its mean,
    since the larger gallery also lowers every mAP."""
    seeds, rows = setting.key_seeds, []
    trio = _trio('', '')
    columns = [('small', 0), ('large', 0), ('large', 2)]
    per_split = {split: _units([_values(runs, name, state, seeds, split) for name, state, _ in trio])
                 for split in ('small', 'large')}
    for index, (_, _, label) in enumerate(trio):
        rows.append([f'mAP of {label}'] + [_mean_sd([v[i] for v in per_split[split][index].values()])
                                           for split, i in columns])
    for row, ref in TRIO_CONTRASTS:
        cells = []
        for split, i in columns:
            a, b = per_split[split][row], per_split[split][ref]
            cells.append(_mean_sd([a[s][i] - b[s][i] for s in sorted(set(a) & set(b))]))
        rows.append([f'Δ mAP {trio[row][2]} − {trio[ref][2]}'] + cells)
    small = next(r['eval'][SYNTH_DOMAINS[3]] for r in runs.values() if r['name'] == 'plain')
    return markdown_table(['mean ± sd over seeds (key table runs)',
                           f'small split ({small["num_query"]} queries / {small["num_gallery"]} gallery)',
                           f'large split ({large[0]} queries / {large[1]} gallery)',
                           'large split, mean over galleries of the old size'], rows)


def plot_forest(forest: List[Tuple[str, List[Paired]]], title: str, path: Path) -> None:
    """Each contrast's Δ mAP with its 95% CI, over the whole large split and over its small galleries."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8, 0.5 * len(forest) + 1.4))
    ys = list(range(len(forest)))[::-1]
    for offset, index, marker in ((0.12, 0, 'o'), (-0.12, 2, 's')):
        deltas = [d[index] for _, d in forest]
        ax.errorbar([p.mean for p in deltas], [y + offset for y in ys], fmt=marker, capsize=3,
                    xerr=[[p.mean - p.low for p in deltas], [p.high - p.mean for p in deltas]], label=MEASURES[index][0])
    ax.axvline(0, color='grey', lw=0.8)
    ax.legend(fontsize=7)
    ax.set_yticks(ys, [label for label, _ in forest], fontsize=7)
    ax.set_xlabel('Δ mAP (points, paired by seed, 95% CI)', fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format='png', dpi=110)
    plt.close(fig)


def _backbones(runs: Dict[str, Dict[str, Any]]) -> str:
    counts = Counter(r['backbone'] for r in runs.values() if r['name'] != 'pretrain')
    return (f'Pre-trained backbones: {", ".join(f"`{b}` ({n} runs)" for b, n in counts.items())}. Pre-training '
            f'is not bit-reproducible across machines, so a later session may pre-train another; within a table '
            f'every run of one seed starts from the same backbone (runs from different backbones are never '
            f'paired).\n')


def render(runs: Dict[str, Dict[str, Any]], setting: Setting, keys: Sequence[str], plot_dir: Path,
           link: str, large: Tuple[int, int]) -> str:
    body = [f'Every run is fine-tuned from one pre-trained backbone and scored on a large test split of unseen '
            f'identities ({large[0]} queries, {large[1]} gallery images for seed 0; one split per seed, the same '
            f'for every run of that seed). mAP and Rank-1 rank each query against that whole gallery, a much harder '
            f'task than the old {setting.num_ids // 2}-identity split, hence the low numbers; "old-size galleries" '
            f'is the mean mAP over disjoint galleries of {setting.num_ids // 2} identities each (the old split\'s '
            f'difficulty, measured {setting.test_ids // (setting.num_ids // 2)} times). Δ: paired by seed, with its '
            f'95% t-interval; "seeds" counts the seeds finished.\n',
            _backbones(runs)]
    for key in keys:
        table = tables(setting)[key]
        text, forest = render_table(runs, setting, table)
        body.append(f'### {table.title}\n\n{text}')
        if forest:
            plot_forest(forest, table.title, plot_dir / f'{key}.png')
            body.append(f'![{key}]({link}/{key}.png)\n')
    body.append('### Precision: the old small test split vs the large one\n\n' + render_precision(runs, setting, large))
    return '\n'.join(body)


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--tables', nargs='+', choices=list(tables(Setting())), default=list(tables(Setting())),
                        help='in the order given, each table for all its seeds before the next')
    parser.add_argument('--key-seeds', type=int, help='seeds of the key and warm tables (default 20)')
    parser.add_argument('--seeds', type=int, help='seeds of the other tables (default 10)')
    add_run_arguments(parser, 'state', reuse_help=(
        'keep the runs recorded in <out>/runs.json (same setting): a seed whose runs are all recorded needs no '
        'checkpoint; a missing run reuses its finished checkpoint in --work, else trains (tables or seeds added later)'))
    parser.add_argument('--no-train', action='store_true',
                        help='with --reuse: train nothing, only score the runs already there and write the tables')
    args = parser.parse_args(argv)

    setting = QUICK if args.quick else Setting()
    setting = replace(setting, key_seeds=args.key_seeds or setting.key_seeds, seeds=args.seeds or setting.seeds)
    work, out = run_folders(args, RESULTS_DIR)
    previous = previous_runs(parser, args, out, setting, ignored=SEED_COUNTS)
    exp = StateExperiment(setting, work, progress=not args.quiet, previous=previous)
    started = time.time()
    for key in args.tables:
        for seed in range(getattr(setting, tables(setting)[key].seeds)):
            run_table(exp, key, seed, train=not args.no_train)
            atomic_save_json(dict(setting=asdict(setting), runs={**previous, **exp.runs}), out / 'runs.json')
            if not args.quiet:
                print(f'state benchmark: table {key} seed {seed} done ({(time.time() - started) / 60:.1f} min)')
    link = 'benchmarks/results/state'
    runs = {**previous, **exp.runs}  # tables not asked for this time keep their runs
    test_set = exp.test_split(0)
    body = render(runs, setting, args.tables, out, link, (len(test_set.query), len(test_set.gallery)))
    compute = sum(r['seconds'] + r.get('eval_seconds', 0) for r in runs.values())
    body = (f'Setting: `{json.dumps(asdict(setting))}`  \nCompute: {compute / 3600:.1f} h of training and '
            f'evaluation over {len(runs)} runs.\n\n' + body)
    if not args.no_report:  # BENCHMARKS.md for the full setting, a scratch report for --quick
        write_section('state', 'Does the state matter? The miniature, powered', body,
                      command='python -m benchmarks.state --reuse', path=report_path(parser, args))
    if not args.quiet:
        print(body)
    return dict(setting=setting, runs=runs, body=body)


if __name__ == '__main__':
    main()
