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

That is the miniature (``--setting miniature``, the default): exact, but its models sit near chance, so
it is kept as the small-scale record. ``--setting realistic`` asks the question where models work: each
of two backbones pre-trained once to convergence (600 identities × 8 images, cross-entropy + triplet,
40 epochs), fine-tuned for 8 epochs of at least 50 mini-batches (one state reset each), a cosine
learning-rate decay and cross-entropy + triplet, scored on about 750 queries and 2,200 gallery images; a
one-seed plain pilot must first reach 30 mAP on that split (``--pilot``, recorded in ``pilots.json``).
Its tables:

* ``layers``: plain, PTL 'batch' / 'none' / 'sample', and a capacity-matched plain (the side network
  with a plain conv block instead of each cell: the same parameters and MACs, no gates, no state);
* ``bot-neck``: BoT, BoT + the 1×1 neck PTL adds, BoT + PTL 'batch' / 'none';
* ``mechanism``: on trained 'batch' and 'sample' runs, the share of the carried term f⊙C_{b−1} in C_b,
  the relative change of C per batch, and how much the embedding moves when C_{b−1} is replaced by its
  running mean (a constant) or by zero.

Every invocation writes ``runs.json`` after each seed and ``summary.json`` (arms and contrasts, machine
readable) beside it; a run whose results are recorded needs no checkpoint, so the study grows across
sessions with ``--reuse``. A run in ``--work`` is kept (or resumed, when it was stopped) only if it was
started with the very values and inputs (generated data, starting weights) asked for; else it trains
afresh in an emptied folder.

    python -m benchmarks.state --reuse                               # miniature: about 2.5 h on 2 idle cores
    python -m benchmarks.state --setting realistic --pilot           # the gate: about 90 min on 2 idle cores
    python -m benchmarks.state --setting realistic --reuse           # the study: about 16 h; resumable
    python -m benchmarks.state --quick [--setting realistic]         # CI-size, writes only under --work
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
from ptl_timm.data.loader import PKSampler
from ptl_timm.data.synth import SYNTH_DOMAINS, generate_synthetic
from ptl_timm.eval import FeatureExtractor, evaluate_features, query_expansion
from ptl_timm.hub import load_model
from ptl_timm.engine import TrainConfig
from ptl_timm.engine.data import build_train_data
from ptl_timm.engine.distributed import DistContext
from ptl_timm.layers import probe_latent_states, restore_latent_states, set_eval_state
from ptl_timm.utils import atomic_path, atomic_save_json
from benchmarks.report import ROOT, markdown_table, report_path, write_section
from benchmarks.stats import Paired, Relative, paired_difference, relative_difference
from benchmarks.transfer import (
    QUICK_MINIATURE, Experiment, Miniature, add_run_arguments, folder_result, previous_runs, run_folders)

RESULTS_DIR = ROOT / 'benchmarks' / 'results' / 'state'
TEST_SEED_OFFSET = 10_000  # the large test split's people are drawn with seed + this: unseen identities
SEED_COUNTS = ('key_seeds', 'seeds')  # may grow between invocations of --reuse
PILOTS = 'pilots.json'  # every pilot of the gate, beside runs.json


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
    # Added for the realistic setting; each default is the miniature's behaviour, so the miniature's recorded
    # runs keep their setting (``previous_runs`` reads a field missing from an older runs.json as its default).
    backbones: int = 1  # pre-trained backbones; seed s fine-tunes from backbone s % backbones
    pretrain_recipe: Tuple[Tuple[str, Any], ...] = ()  # TrainConfig values of pre-training (over the common ones)
    finetune_recipe: Tuple[Tuple[str, Any], ...] = ()  # TrainConfig values of every fine-tune (tables override)
    group_ids: int = 0  # identities per "old-size" gallery; 0: num_ids // 2 (the miniature's own test split)
    pilot_gate: float = 0.0  # mAP % a one-seed plain pilot must reach on the large split before any table runs
    mechanism_seeds: int = 4  # seeds of the mechanism table (trained 'batch' and 'sample' runs probed)


QUICK = Setting(**QUICK_MINIATURE, small_batches=(4,), test_ids=6, test_images_per_id=6, xbm_size=16, key_seeds=2)

# Where users live: a backbone pre-trained to convergence on a large source (600 identities × 8 images,
# cross-entropy + triplet), fine-tuned for 8 epochs with at least 50 mini-batches between two state resets (204
# identities × 8 images in P×K batches of 8 × 4: 408 groups of 4, of which an epoch's sampler drops at most 8),
# a learning-rate decay and cross-entropy + triplet (the recipe family of the paper's strongest results), and
# scored on about 750 queries and 2,200 gallery images of unseen identities.
METRIC_RECIPE = (('sampler', 'pk'), ('num_instances', 4), ('triplet_weight', 1.0), ('triplet_margin', 0.3))
REALISTIC = Setting(
    num_ids=408, pretrain_ids=1200, pretrain_epochs=40, epochs=8, test_ids=250, backbones=2, group_ids=25,
    pilot_gate=30.0,
    pretrain_recipe=METRIC_RECIPE + (('batch_size', 64), ('lr', 0.05), ('lr_schedule', 'cosine'),
                                     ('warmup_epochs', 2), ('min_lr_factor', 0.01)),
    finetune_recipe=METRIC_RECIPE + (('lr_schedule', 'cosine'), ('warmup_epochs', 1), ('min_lr_factor', 0.01),
                                     ('channels_last', True)))
QUICK_REALISTIC = replace(QUICK, backbones=2, group_ids=3, pilot_gate=0.0, pretrain_recipe=METRIC_RECIPE,
                          finetune_recipe=REALISTIC.finetune_recipe, mechanism_seeds=2)
SETTINGS = {'miniature': (Setting(), QUICK), 'realistic': (REALISTIC, QUICK_REALISTIC)}


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
        self.backbone_ids: Dict[int, str] = {}  # pre-trained backbone index -> hash of its weights, once it exists

    def backbone_of(self, seed: int) -> int:
        """The pre-trained backbone a fine-tune seed starts from."""
        return seed % self.s.backbones

    def key(self, name: str, seed: int) -> str:
        return f'{name}/seed{seed}@{self.backbone_ids.get(self.backbone_of(seed))}'

    def _describe(self, name: str, seed: int, model: str, result: Dict[str, Any],
                  started: Optional[float] = None) -> Dict[str, Any]:
        last_epoch = result['history'][-1]
        return dict(super()._describe(name, seed, model, result, started),
                    backbone=self.backbone_ids.get(self.backbone_of(seed)), device=_device(),
                    train_loss={k: round(v, 4) for k, v in last_epoch.items()
                                if k not in ('epoch', 'lr', 'time_s') and isinstance(v, float)})

    def pretrained_init(self, seed: int) -> Optional[Dict[str, Any]]:
        """The pre-trained backbone of ``seed`` as init kwargs (trained on first need, with the setting's
        pre-training recipe; kept while the work folder holds its finished run of this very recipe), its
        hash recorded; None when it would have to be trained and ``train`` is off."""
        index, s = self.backbone_of(seed), self.s
        if not self.runnable('pretrain', index):
            return None  # nothing to keep, and no data made for a run that will not train
        last = Experiment.finetune(
            self, 'pretrain', index, self.domain(SYNTH_DOMAINS[0], index, s.pretrain_ids), dict(pretrained=False),
            None, recorded_only=False, epochs=s.pretrain_epochs, lr_step=s.pretrain_epochs, **dict(s.pretrain_recipe))
        if last is None:
            return None
        init = self.backbone_init(last)
        if index not in self.backbone_ids:
            weights = Path(init['model_args']['pretrained_cfg_overlay']['file'])
            self.backbone_ids[index] = hashlib.sha256(weights.read_bytes()).hexdigest()[:12]
        key = f'pretrain{index}@{self.backbone_ids[index]}'
        trained = self.runs.pop(f'pretrain/seed{index}@None', None)
        if trained is None and key not in self.runs and key not in self.previous:
            # trained by an invocation that stopped before recording it (runs.json is written per seed)
            trained = self._describe('pretrain', index, 'reid_net', folder_result(last))
        if trained:
            self.runs[key] = dict(trained, backbone=self.backbone_ids[index])
        return init

    def finetune(self, name: str, seed: int, dataset: Any, init: Dict[str, Any], state_mode: Optional[str],
                 **kwargs) -> Optional[Path]:
        if self.key(name, seed) in self.runs:  # an earlier table of this invocation already ran it
            return self.folder(name, seed) / 'last'
        return super().finetune(name, seed, dataset, init, state_mode, **{**dict(self.s.finetune_recipe), **kwargs})

    def _with_evals(self, key: str, evals: Sequence[str]) -> Optional[Dict[str, Any]]:
        record = self.runs.get(key) or self.previous.get(key)
        if record and all(_scored(record.get('test', {}), e) for e in evals):
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

    def test_split(self, seed: int) -> Any:
        root = generate_synthetic(
            self.work / f'test-seed{seed}', SYNTH_DOMAINS[3], layout='market1501', num_ids=2 * self.s.test_ids,
            images_per_id=self.s.test_images_per_id, img_size=self.s.img_size, seed=TEST_SEED_OFFSET + seed)
        return build_dataset('market1501', root)

    def score(self, name: str, seed: int, test_set: Any, evals: Sequence[str] = ('zero',)) -> None:
        """Metrics of run ``name`` on the large split for each of ``evals``: 'zero' (the paper's zero
        state), 'warm' (the cells' state after the last training batch, frozen), 'aqe' / 'rerank' (the
        zero-state features after average query expansion / k-reciprocal re-ranking). Each over the
        whole gallery and averaged over galleries of ``group_size`` identities (``*_groups``). 'probe':
        what the trained cells' state carries over one epoch of training batches (see ``probe``)."""
        record = self.runs[self.key(name, seed)]
        scores = record.setdefault('test', {})
        missing = [key for key in evals if not _scored(scores, key)]
        if not missing:
            return
        started = time.time()
        last = self.folder(name, seed) / 'last'
        model = load_model(last, num_classes=0)
        for key in missing:
            if key == 'probe':
                scores[key] = probe(last)
                continue
            state = 'warm' if key == 'warm' else 'zero'
            if state == 'warm':
                restore_latent_states(model, torch.load(last / 'train_state.pt', weights_only=True)['latent_states'])
            set_eval_state(model, state)
            q, g = self._features(model, last, state, test_set)
            scores[key] = _metrics(q, g, test_set, key, group_size(self.s))
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


def _device() -> str:
    """Where training ran (``TrainConfig.device='auto'``): recorded with every run, so that runs made on
    different devices are never paired (see ``_unit_source``)."""
    return torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu'


def _unit_source(run: Dict[str, Any]) -> str:
    """What a seed's runs must share to be paired: the pre-trained backbone and the training device
    (runs recorded before devices were recorded ran on CPU)."""
    return f"{run['backbone']}/{run.get('device', 'cpu')}"


def _scored(scores: Dict[str, Any], key: str) -> bool:
    return key in scores if key == 'probe' else 'mAP_groups' in scores.get(key, {})


def probe(last: Path) -> Dict[str, Dict[str, float]]:
    """``probe_latent_states`` on the trained checkpoint ``last``: one epoch of its own training batches
    (its saved config: data, transforms, sampler, batch size), in training mode, embedding = the retrieval
    embedding."""
    config = torch.load(last / 'train_state.pt', map_location='cpu', weights_only=True)['config']
    data = build_train_data(TrainConfig(**dict(config, progress=False)), DistContext())
    data.sampler.set_epoch(0)
    model = load_model(last, num_classes=0)
    return probe_latent_states(model, (images for images, *_ in data.loader))


def group_size(setting: Setting) -> int:
    """Identities per "old-size" gallery: the miniature's own test split has ``num_ids // 2``."""
    return setting.group_ids or setting.num_ids // 2


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


# BoT in the miniature: its recipe at the miniature's size, epochs and batch; the warm-up
# scaled like the epochs (BoT: 10 of 120)
BOT_RECIPE = dict(recipe='bot', lr=3.5e-4, warmup_epochs=1)
BOT_ARGS = dict(neck='bnneck', last_stride=1, classifier_dims=())


def _batch_sizes(setting: Setting) -> List[Tuple[str, int]]:
    """The small-batch table's (run-name suffix, batch size): the setting's own batch is the key
    table's trio, each small batch has its own; ``run_table`` and ``tables`` both name runs from it."""
    return [('', setting.batch_size), *((f'-bs{batch}', batch) for batch in setting.small_batches)]


def run_table(exp: StateExperiment, table: str, seed: int) -> None:
    """The runs one table needs for one seed (runs shared with an earlier table are not repeated),
    all from one backbone (see ``StateExperiment``). Data and the pre-trained backbone are made on
    first need: a seed whose unit is recorded needs neither. With the experiment's ``train`` off, only
    the runs whose checkpoints are there are scored."""
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
    elif table == 'layers':
        run('plain', None)
        for mode in ('batch', 'none', 'sample'):
            run(f'ptl-{mode}', mode)
        run('matched', 'none', model_args=dict(side_block='conv'))
    elif table == 'bot-neck':
        run('bot', None, model_args=dict(BOT_ARGS, embed_dim=0), **BOT_RECIPE)
        run('bot-neck', None, model_args=BOT_ARGS, **BOT_RECIPE)  # the 1×1 ConvBNReLU PTL's fusion adds
        for mode in ('batch', 'none'):
            run(f'bot-ptl-{mode}', mode, model_args=BOT_ARGS, **BOT_RECIPE)
    elif table == 'mechanism':
        for mode in ('batch', 'sample'):
            run(f'ptl-{mode}', mode, ('zero', 'probe'))
    else:
        raise ValueError(f'unknown table {table!r}')
    if exp.recorded_unit([(name, evals) for name, _, evals, _ in runs], seed):
        return
    init = exp.pretrained_init(seed)
    if init is None:  # train=False and no backbone to keep
        return
    made: Dict[str, Any] = {}
    for name, state_mode, evals, overrides in runs:
        if exp.recorded(name, seed, evals) or not exp.runnable(name, seed):
            continue  # recorded, or nothing to keep and training off: no data to make
        if 'target' not in made:
            made['target'], made['test'] = exp.domain(SYNTH_DOMAINS[3], seed, s.num_ids), exp.test_split(seed)
        if exp.finetune(name, seed, made['target'], dict(init), state_mode, **overrides):
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
        'layers': Table('Layers, state or capacity: plain vs PTL with each state mode vs a capacity-matched plain',
                        'key_seeds', [
                            ('plain', 'zero', 'plain'), ('ptl-batch', 'zero', "PTL 'batch'"),
                            ('ptl-none', 'zero', "PTL 'none' (stateless)"), ('ptl-sample', 'zero', "PTL 'sample'"),
                            ('matched', 'zero', 'capacity-matched plain (side network without cells)')],
                        [(1, 0), (2, 0), (3, 0), (4, 0), (1, 2), (3, 2), (1, 4), (2, 4)]),
        'bot-neck': Table('On BoT: the neck PTL adds, the side network, its state', 'seeds', [
            ('bot', 'zero', 'BoT'), ('bot-neck', 'zero', 'BoT + the 1×1 ConvBNReLU neck PTL adds'),
            ('bot-ptl-batch', 'zero', "BoT + PTL 'batch'"), ('bot-ptl-none', 'zero', "BoT + PTL 'none' (stateless)")],
            [(1, 0), (2, 1), (3, 1), (2, 3)]),
        'mechanism': Table('The mechanism: what the trained cells\' state carries', 'mechanism_seeds', [
            ('ptl-batch', 'probe', "PTL 'batch'"), ('ptl-sample', 'probe', "PTL 'sample'")], []),
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
            found[r['seed'], _unit_source(r)] = tuple(metrics[field] for _, field in MEASURES if field in metrics)
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


def _rel(r: Relative) -> str:
    if math.isnan(r.mean):
        return 'undefined (reference is 0)'
    return f'{100 * r.mean:+.1f}% [{100 * r.low:+.1f}%, {100 * r.high:+.1f}%]'


def _finite(x: float) -> Optional[float]:
    """A number for strict JSON: an unbounded or undefined relative limit is written as null."""
    return x if math.isfinite(x) else None


def _range(values: Sequence[int]) -> str:
    return f'{min(values):,}' if min(values) == max(values) else f'{min(values):,}–{max(values):,}'


def split_line(splits: Dict[int, Dict[str, Any]], seeds: Sequence[int], setting: Setting) -> str:
    """The test split of a table's seeds: sizes as ranges over seeds, and the chance level of each measure."""
    facts = [splits[seed] for seed in seeds if seed in splits]
    if not facts:
        return ''
    chance = {k: statistics.mean(f['chance'][k] for f in facts) for k in ('mAP', 'rank1', 'mAP_groups')}
    return (f'Test split over these {len(facts)} seeds: {_range([f["query"] for f in facts])} queries, '
            f'{_range([f["gallery"] for f in facts])} gallery images. Chance level (random ranking, same protocol): '
            f'mAP {chance["mAP"]:.2f}, Rank-1 {chance["rank1"]:.2f}, mAP on galleries of {group_size(setting)} '
            f'identities {chance["mAP_groups"]:.2f}.\n')


def render_table(runs: Dict[str, Dict[str, Any]], setting: Setting, table: Table,
                 splits: Dict[int, Dict[str, Any]]) -> Tuple[str, list, Dict[str, Any]]:
    """The table's arms (mean ± sd), its contrasts (Δ in points with the 95% t-interval, and relative to the
    reference with Fieller's interval), the test split's sizes and chance level, the design's power; and
    the same as a machine-readable summary."""
    seeds = getattr(setting, table.seeds)
    values = _units([_values(runs, name, state, seeds) for name, state, _ in table.rows])
    rows = [[label] + [_mean_sd([v[i] for v in vals.values()]) for i in range(len(MEASURES))] + [len(vals)]
            for (_, _, label), vals in zip(table.rows, values)]
    text = markdown_table(['setting'] + [f'{m} % (mean ± sd)' for m, _ in MEASURES] + ['seeds'], rows)
    summary: Dict[str, Any] = dict(title=table.title, arms=[
        dict(name=name, eval=state, label=label, seeds=len(vals),
             **{field: statistics.mean(v[i] for v in vals.values()) if vals else None
                for i, (_, field) in enumerate(MEASURES[:2])})
        for (name, state, label), vals in zip(table.rows, values)], contrasts=[])
    contrast_rows, forest = [], []
    for row, ref in table.contrasts:
        common = sorted(set(values[row]) & set(values[ref]))
        label = f'{table.rows[row][2]} − {table.rows[ref][2]}'
        if len(common) < 2:
            contrast_rows.append([label] + ['–'] * (len(MEASURES) + 3) + [len(common)])
            continue
        pairs = [([values[row][s][i] for s in common], [values[ref][s][i] for s in common]) for i in range(len(MEASURES))]
        deltas = [paired_difference(a, b) for a, b in pairs]
        relative = [relative_difference(a, b) for a, b in pairs[:2]]
        contrast_rows.append([label, _ci(deltas[0]), _rel(relative[0]), _ci(deltas[1]), _rel(relative[1]),
                              _ci(deltas[2]), f'{deltas[0].sd:.2f}', len(common)])
        forest.append((label, deltas))
        summary['contrasts'].append(dict(label=label, arm=table.rows[row][0], reference=table.rows[ref][0],
                                         seeds=len(common), **{
            field: dict(delta=d.mean, low=d.low, high=d.high, relative=_finite(r.mean),
                        relative_low=_finite(r.low), relative_high=_finite(r.high), detectable=d.detectable)
            for (_, field), d, r in zip(MEASURES[:2], deltas, relative)}))
    if table.contrasts:
        text += '\n' + markdown_table(
            ['contrast (paired by seed)', 'Δ mAP [95% CI]', 'Δ mAP relative to the reference [95% CI]',
             'Δ Rank-1 [95% CI]', 'Δ Rank-1 relative', f'Δ mAP, galleries of {group_size(setting)} ids [95% CI]',
             'sd of Δ mAP', 'seeds'], contrast_rows)
    unit_seeds = sorted({seed for vals in values for seed in vals})
    text += '\n' + split_line(splits, unit_seeds, setting)
    summary['split'] = {seed: splits[seed] for seed in unit_seeds if seed in splits}
    if forest:
        whole, small = (sorted(deltas[i].detectable for _, deltas in forest) for i in (0, 2))
        text += (f'\nPower (a property of the design, not a bound on the effect: the intervals bound it): from the '
                 f'observed spread of the paired differences, a true Δ mAP of {whole[0]:.2f} to {whole[-1]:.2f} points '
                 f'over the whole large split ({small[0]:.2f} to {small[-1]:.2f} on the smaller galleries), depending on '
                 f'the contrast, is detected with 80% power at α = 0.05, two-sided.\n')
    return text, forest, summary


PROBE_MEASURES = (('carried_share', 'share of f⊙C_{b−1} in C_b'), ('state_change', 'relative change of C per batch'))
EMBEDDING_MEASURES = (('embedding_change_constant', 'C_{b−1} → its running mean (a constant)'),
                      ('embedding_change_zero', 'C_{b−1} → zero (no state)'),
                      ('embedding_spread', 'between two images of a batch (for scale)'))


def render_mechanism(runs: Dict[str, Dict[str, Any]], setting: Setting, table: Table,
                     plot_path: Path) -> Tuple[str, Dict[str, Any]]:
    """What the trained cells' state carries (``probe_latent_states`` over one epoch of training batches), the
    mean over seeds: per cell, the carried term's share and the state's change per batch; for the embedding,
    how far it moves when the state is replaced by a constant or by zero, beside the distance between images."""
    seeds = getattr(setting, table.seeds)
    probes = {label: [r['test']['probe'] for r in runs.values()
                      if r['name'] == name and r['seed'] < seeds and 'probe' in r.get('test', {})]
              for name, _, label in table.rows}
    summary: Dict[str, Any] = dict(title=table.title, arms=[])
    cell_rows, embedding_rows = [], []
    for label, found in probes.items():
        if not found:
            continue
        cells = [name for name in found[0] if name != 'embedding']
        per_cell = {c: {k: statistics.mean(p[c][k] for p in found) for k, _ in PROBE_MEASURES} for c in cells}
        embedding = {k: statistics.mean(p['embedding'][k] for p in found) for k, _ in EMBEDDING_MEASURES}
        cell_rows += [[label, c or '(cell)', *(f'{per_cell[c][k]:.3f}' for k, _ in PROBE_MEASURES), len(found)]
                      for c in cells]
        embedding_rows.append([label, *(f'{embedding[k]:.4f}' for k, _ in EMBEDDING_MEASURES), len(found)])
        summary['arms'].append(dict(label=label, seeds=len(found), cells=per_cell, embedding=embedding))
    if not summary['arms']:
        return 'No probed runs yet.\n', summary
    text = (markdown_table(['model', 'cell', *(m for _, m in PROBE_MEASURES), 'seeds'], cell_rows) + '\n'
            + markdown_table(['model', *(f'embedding shift: {m}' for _, m in EMBEDDING_MEASURES), 'seeds'],
                             embedding_rows)
            + '\nShares and changes are norms summed or averaged over one epoch of the run\'s own training batches '
              '(training mode, no gradients); embedding shifts are mean distances between L2-normalised embeddings '
              '(the cosine retrieval space).\n')
    _plot_mechanism(summary['arms'], table.title, plot_path)
    return text, summary


def _plot_mechanism(arms: List[Dict[str, Any]], title: str, path: Path) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.2))
    width = 0.8 / len(arms)
    for panel, (key, label) in zip(axes[:2], PROBE_MEASURES):
        for k, arm in enumerate(arms):
            names = list(arm['cells'])
            panel.bar([i + k * width for i in range(len(names))], [arm['cells'][c][key] for c in names], width,
                      label=arm['label'])
            panel.set_xticks([i + width * (len(arms) - 1) / 2 for i in range(len(names))],
                             [c.split('.')[-1] or 'cell' for c in names], fontsize=7, rotation=20)
        panel.set_title(label, fontsize=8)
        panel.legend(fontsize=7)
    names = [label for _, label in EMBEDDING_MEASURES]
    for k, arm in enumerate(arms):
        axes[2].bar([i + k * width for i in range(len(names))], [arm['embedding'][key] for key, _ in EMBEDDING_MEASURES],
                    width, label=arm['label'])
    axes[2].set_xticks([i + width * (len(arms) - 1) / 2 for i in range(len(names))],
                       ['→ constant', '→ zero', 'image spread'], fontsize=7)
    axes[2].set_title('embedding distance (cosine space)', fontsize=8)
    axes[2].legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format='png', dpi=110)
    plt.close(fig)


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
    counts = Counter(_unit_source(r).replace('/', '` on `') for r in runs.values() if r['name'] != 'pretrain')
    return (f'Pre-trained backbones and training devices: {", ".join(f"`{b}` ({n} runs)" for b, n in counts.items())}. '
            f'Pre-training is not bit-reproducible across machines, so a later session may pre-train another; within '
            f'a table every run of one seed starts from the same backbone on the same device (runs from different '
            f'backbones or devices are never paired).\n')


def render(runs: Dict[str, Dict[str, Any]], setting: Setting, keys: Sequence[str], plot_dir: Path,
           link: str, splits: Dict[int, Dict[str, Any]]) -> Tuple[str, Dict[str, Any]]:
    """The report's body and ``summary.json``'s content: every table asked for, its plot, and (for the
    miniature) the precision table."""
    group = group_size(setting)
    start = ('from one pre-trained backbone' if setting.backbones == 1 else
             f'from one of {setting.backbones} pre-trained backbones (seed s from backbone s mod {setting.backbones})')
    body = [f'Every run is fine-tuned {start} and scored on a large test split of unseen identities (one split per '
            f'seed, the same for every run of that seed; sizes and chance level under each table). mAP and Rank-1 '
            f'rank each query against that whole gallery; the last column is the mean mAP over disjoint galleries of '
            f'{group} identities each (the miniature\'s old test split\'s size, measured {setting.test_ids // group} '
            f'times per seed). Δ: paired by seed, with its 95% t-interval in points, and relative to the reference '
            f'arm\'s mean with Fieller\'s 95% interval; "seeds" counts the seeds finished.\n',
            _backbones(runs)]
    summary: Dict[str, Any] = dict(setting=asdict(setting), tables={})
    for key in keys:
        table = tables(setting)[key]
        if key == 'mechanism':
            text, summary['tables'][key] = render_mechanism(runs, setting, table, plot_dir / f'{key}.png')
            forest = [True]
        else:
            text, forest, summary['tables'][key] = render_table(runs, setting, table, splits)
            if forest:
                plot_forest(forest, table.title, plot_dir / f'{key}.png')
        body.append(f'### {table.title}\n\n{text}')
        if forest:
            body.append(f'![{key}]({link}/{key}.png)\n')
    if 'key' in keys:
        body.append('### Precision: the old small test split vs the large one\n\n'
                    + render_precision(runs, setting, (splits[0]['query'], splits[0]['gallery'])))
    return '\n'.join(body), summary


def chance_level(test_set: Any, group: int, draws: int = 10) -> Dict[str, float]:
    """mAP and Rank-1 of random ranking on ``test_set`` under the same protocol: the mean over ``draws``
    random embeddings (Gaussian, so every ranking of the gallery is equally likely)."""
    generator = torch.Generator().manual_seed(0)
    scores = [_metrics(torch.randn(len(test_set.query), 64, generator=generator),
                       torch.randn(len(test_set.gallery), 64, generator=generator), test_set, 'zero', group)
              for _ in range(draws)]
    return {k: statistics.mean(score[k] for score in scores) for k in ('mAP', 'rank1', 'mAP_groups')}


def split_facts(exp: StateExperiment, seed: int) -> Dict[str, Any]:
    """The sizes of seed ``seed``'s large test split and its chance level (``chance_level``)."""
    test_set = exp.test_split(seed)
    return dict(query=len(test_set.query), gallery=len(test_set.gallery),
                chance=chance_level(test_set, group_size(exp.s)))


def _saved_splits(out: Path, reuse: bool) -> Dict[int, Dict[str, Any]]:
    path = out / 'runs.json'
    if not (reuse and path.exists()):
        return {}
    return {int(seed): facts for seed, facts in json.loads(path.read_text()).get('splits', {}).items()}


def fewest_batches(train: Sequence[Any], setting: Setting) -> int:
    """The fewest mini-batches of any fine-tune epoch, i.e. between two state resets, as the trainer's
    sampler draws them (a P×K sampler drops an epoch's last identities when fewer than P remain)."""
    recipe = dict(setting.finetune_recipe)
    if recipe.get('sampler') != 'pk':
        return len(train) // setting.batch_size
    sampler = PKSampler(train, setting.batch_size, recipe['num_instances'], seed=0)
    counts = []
    for epoch in range(setting.epochs):
        sampler.set_epoch(epoch)
        counts.append(len(sampler.global_batches()))
    return min(counts)


def run_pilot(exp: StateExperiment, out: Path) -> Dict[str, Any]:
    """The gate before any table: pre-train backbone 0, fine-tune one plain seed, score it on the large
    split, and append the result (setting, compute, training losses, mAP, chance) to ``out/pilots.json``,
    which keeps every pilot, passed or not. The plain run is the study's plain seed 0."""
    s = exp.s
    init = exp.pretrained_init(0)
    target, test_set = exp.domain(SYNTH_DOMAINS[3], 0, s.num_ids), exp.test_split(0)
    exp.finetune('plain', 0, target, dict(init), None)
    exp.score('plain', 0, test_set)
    plain = exp.runs[exp.key('plain', 0)]
    pretrain = exp.runs.get(f'pretrain0@{exp.backbone_ids[0]}') or exp.previous.get(f'pretrain0@{exp.backbone_ids[0]}', {})
    train = build_dataset('market1501', target['root']).train
    pilot = dict(
        setting=asdict(s), when=time.strftime('%Y-%m-%d %H:%M'),
        pretrain=dict(images=len(build_dataset('market1501', exp.domain(SYNTH_DOMAINS[0], 0, s.pretrain_ids)['root']).train),
                      epochs=s.pretrain_epochs, seconds=pretrain.get('seconds'), train_loss=pretrain.get('train_loss'),
                      own_split=pretrain.get('eval')),
        finetune=dict(images=len(train), epochs=s.epochs, batches_per_epoch=fewest_batches(train, s),
                      seconds=plain['seconds'], train_loss=plain.get('train_loss')),
        split=dict(query=len(test_set.query), gallery=len(test_set.gallery)),
        mAP=plain['test']['zero']['mAP'], rank1=plain['test']['zero']['rank1'],
        chance=split_facts(exp, 0)['chance'], gate=s.pilot_gate,
        passed=plain['test']['zero']['mAP'] >= s.pilot_gate)
    path = out / PILOTS
    pilots = json.loads(path.read_text()) if path.exists() else []
    atomic_save_json(pilots + [pilot], path)
    return pilot


def gate_passed(setting: Setting, out: Path) -> bool:
    """Whether a recorded pilot of exactly this setting (seed counts aside) reached the gate."""
    if setting.pilot_gate <= 0:
        return True
    path = out / PILOTS
    mine = {k: v for k, v in json.loads(json.dumps(asdict(setting))).items() if k not in SEED_COUNTS}
    return any(p['passed'] and {k: v for k, v in p['setting'].items() if k not in SEED_COUNTS} == mine
               for p in (json.loads(path.read_text()) if path.exists() else []))


def render_pilots(out: Path) -> str:
    path = out / PILOTS
    rows = [[p['when'], f"{p['pretrain']['images']} images × {p['pretrain']['epochs']} epochs, final loss "
             f"{(p['pretrain']['train_loss'] or {}).get('loss', '–')}",
             f"{p['finetune']['images']} images × {p['finetune']['epochs']} epochs (≥ "
             f"{p['finetune']['batches_per_epoch']} batches each), final loss "
             f"{(p['finetune']['train_loss'] or {}).get('loss', '–')}",
             f"{(p['pretrain']['seconds'] or 0) / 60:.0f} + {p['finetune']['seconds'] / 60:.0f} min",
             f"{p['split']['query']} / {p['split']['gallery']}", f"{p['mAP']:.2f}", f"{p['rank1']:.2f}",
             f"{p['chance']['mAP']:.2f}", f"≥ {p['gate']:g}: {'passed' if p['passed'] else 'failed'}"]
            for p in (json.loads(path.read_text()) if path.exists() else [])]
    return markdown_table(['pilot', 'pre-training (source)', 'fine-tuning (target)',
                           'wall time, pre-training + fine-tuning (2 CPU cores)',
                           'queries / gallery', 'plain mAP %', 'Rank-1 %', 'chance mAP %', 'gate'], rows)


DEFAULT_TABLES = {'miniature': ['key', 'warm', 'post', 'small-batch', 'xbm', 'bot'],
                  'realistic': ['layers', 'bot-neck', 'mechanism']}
SECTIONS = {'miniature': ('state', 'Does the state matter? The miniature, powered'),
            'realistic': ('state-realistic', 'Does the state matter? The realistic setting')}


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--setting', choices=list(SETTINGS), default='miniature',
                        help='miniature: the small-scale record; realistic: converged pre-training, metric '
                             'learning, at least 50 mini-batches between state resets')
    parser.add_argument('--pilot', action='store_true',
                        help='run the gate: one plain seed on the large split, recorded in <out>/pilots.json')
    parser.add_argument('--tables', nargs='+', choices=list(tables(Setting())),
                        help="in the order given, each table for all its seeds before the next (default: the "
                             "setting's tables)")
    parser.add_argument('--key-seeds', type=int, help='seeds of the key tables (default 20)')
    parser.add_argument('--seeds', type=int, help='seeds of the other tables (default 10)')
    add_run_arguments(parser, 'state', reuse_help=(
        'keep the runs recorded in <out>/runs.json (same setting): a seed whose runs are all recorded needs no '
        'checkpoint; a missing run reuses its checkpoint in --work when made with the same values and inputs, else '
        'trains (tables or seeds added later)'))
    parser.add_argument('--no-train', action='store_true',
                        help='with --reuse: train nothing, only score the runs already there and write the tables')
    args = parser.parse_args(argv)

    full, quick = SETTINGS[args.setting]
    setting = quick if args.quick else full
    setting = replace(setting, key_seeds=args.key_seeds or setting.key_seeds, seeds=args.seeds or setting.seeds)
    if args.setting != 'miniature' and args.work == parser.get_default('work'):
        args.work = f'runs/state-{args.setting}-benchmark'
    section, title = SECTIONS[args.setting]
    work, out = run_folders(args, ROOT / 'benchmarks' / 'results' / section)
    previous = previous_runs(parser, args, out, setting, ignored=SEED_COUNTS)
    exp = StateExperiment(setting, work, progress=not args.quiet, previous=previous, train=not args.no_train)
    if args.pilot:
        pilot = run_pilot(exp, out)
        atomic_save_json(dict(setting=asdict(setting), runs={**previous, **exp.runs}), out / 'runs.json')
        if not args.quiet:
            print(render_pilots(out))
        return dict(setting=setting, pilot=pilot)
    if not gate_passed(setting, out):
        parser.error(f'the {args.setting} setting needs a plain pilot of at least {setting.pilot_gate:g} mAP on the '
                     f'large split first (none recorded in {out / "pilots.json"}): run with --pilot')
    keys = args.tables or DEFAULT_TABLES[args.setting]
    splits = _saved_splits(out, args.reuse)

    def save() -> None:
        atomic_save_json(dict(setting=asdict(setting), runs={**previous, **exp.runs}, splits=splits), out / 'runs.json')
    started = time.time()
    for key in keys:
        # backbone 0's seeds first: another backbone's pre-training (an hour) waits until they are done
        for seed in sorted(range(getattr(setting, tables(setting)[key].seeds)), key=exp.backbone_of):
            run_table(exp, key, seed)
            save()
            if not args.quiet:
                print(f'state benchmark: table {key} seed {seed} done ({(time.time() - started) / 60:.1f} min)')
    runs = {**previous, **exp.runs}  # tables not asked for this time keep their runs
    for seed in sorted({r['seed'] for r in runs.values() if r['name'] != 'pretrain'} - set(splits)):
        splits[seed] = split_facts(exp, seed)
    save()
    body, summary = render(runs, setting, keys, out, f'benchmarks/results/{section}', splits)
    compute = sum(r['seconds'] + r.get('eval_seconds', 0) for r in runs.values())
    body = (f'Setting: `{json.dumps(asdict(setting))}`  \nCompute: {compute / 3600:.1f} h of training and '
            f'evaluation over {len(runs)} runs.\n\n' + body)
    if (out / PILOTS).exists():  # the quick setting has no gate, but its pilots are shown all the same
        body = f'Pilots (the gate: plain must reach {setting.pilot_gate:g} mAP on the large split first):\n\n' + \
            render_pilots(out) + '\n' + body
    atomic_save_json(dict(summary, compute_hours=compute / 3600), out / 'summary.json')
    if not args.no_report:  # BENCHMARKS.md for the full setting, a scratch report for --quick
        write_section(section, title, body, command=f'python -m benchmarks.state --setting {args.setting} --reuse',
                      path=report_path(parser, args))
    if not args.quiet:
        print(body)
    return dict(setting=setting, runs=runs, body=body, summary=summary)


if __name__ == '__main__':
    main()
