"""Does PTL work? The paper's experiments in miniature on synthetic domain shift, several seeds each.

Stages, per seed (every fine-tune starts from a backbone pre-trained on the source domain, the
stand-in for ImageNet weights; cells, neck and head start fresh, as in the paper):

1. pre-train a plain network on the source domain and keep its backbone;
2. Table 1/2 analogue on the target domain: plain fine-tune, PTL (state modes batch, sample,
   none), and the PTL(batch) teacher distilled into the plain student (STD, λ=0.8);
3. Table 6 analogue: the STD λ sweep 0, 0.3, 0.5, 0.8, 1.0;
4. DenseNet-161* analogue: the plain model with a batch 4× larger (same epochs and lr);
5. Table 5 analogue: one-step transfer (union of two source domains, then the target) against
   two-step transfer in both orders (one source, the other, then the target);
6. probes of why PTL does (not) help: the state never reset (carried over epochs), the cells'
   learning rate ×10 (``side_lr_mult``), cells fused at layer3 only instead of at every stage, 3×
   the epochs (lr ÷10 for the last third), and 4× more target identities (4× more batches between
   two state resets), with state and stateless.

Every cell of every table is the mean ± std over seeds of mAP and Rank-1 on the target domain's
query/gallery. Raw per-run numbers are kept as JSON (``--out``), plots as PNG, tables in
BENCHMARKS.md. Nothing is tuned per seed: one setting for all.

    python -m benchmarks.transfer            # full setting (about an hour on 2 CPU cores)
    python -m benchmarks.transfer --quick    # CI-size: checks the pipeline produces every table
"""
import argparse
import contextlib
import hashlib
import io
import json
import shutil
import statistics
import time
from dataclasses import MISSING, asdict, dataclass, fields, replace
from functools import partial
from pathlib import Path
from typing import Any, Callable, ContextManager, Dict, List, Optional, Sequence, Tuple

import torch
from safetensors.torch import load_file, save_file

from ptl_timm.data.synth import SYNTH_DOMAINS, generate_synthetic, synth_params
from ptl_timm.engine import DistillConfig, TrainConfig, fine_tune, run_distill
from ptl_timm.engine.checkpoint import TRAIN_STATE_NAME
from ptl_timm.engine.config import RESUME_OVERRIDABLE, RUN_CONTROL, config_to_dict
from ptl_timm.utils import atomic_path, atomic_save_json
from benchmarks.report import ROOT, add_report_argument, markdown_table, report_path, write_section

RESULTS_DIR = ROOT / 'benchmarks' / 'results' / 'transfer'
LAMBDAS = (0.0, 0.3, 0.5, 0.8, 1.0)
STATE_MODES = ('batch', 'sample', 'none')
PROBE_MODES = ('batch', 'none')  # with and without the latent state, otherwise the same network
# cells paired with layer3 only (and the last stage), instead of the stem and every stage
DEEP_FUSE = dict(backbone_args=dict(out_indices=(3, 4)))


@dataclass(frozen=True)
class Miniature:
    """The miniature every transfer benchmark shares: a small backbone pre-trained on one synthetic
    domain and fine-tuned on another, at the same size, epochs and learning rate."""
    backbone: str = 'resnet18'
    embed_dim: int = 512
    img_size: Tuple[int, int] = (128, 64)
    num_ids: int = 50
    images_per_id: int = 8
    pretrain_ids: int = 100
    pretrain_epochs: int = 6
    epochs: int = 6
    batch_size: int = 32
    lr: float = 0.01
    seeds: int = 3


# CI size: checks the pipeline, not the outcome
QUICK_MINIATURE = dict(backbone='test_resnet', embed_dim=64, img_size=(64, 32), num_ids=8, images_per_id=4,
                       pretrain_ids=8, pretrain_epochs=1, epochs=1, batch_size=8, seeds=2)


@dataclass(frozen=True)
class Setting(Miniature):
    """One size for every run of a benchmark invocation."""
    distill_epochs: int = 4
    large_batch: int = 128


QUICK = Setting(**QUICK_MINIATURE, distill_epochs=1, large_batch=16)


def _train_state(last: Path) -> Optional[Dict[str, Any]]:
    """The training state a run saved in its ``last`` checkpoint (read alone: a killed run's folder may
    lack the rest), or None when it saved none."""
    path = last / TRAIN_STATE_NAME
    return torch.load(path, map_location='cpu', weights_only=True) if path.exists() else None


RUN_INPUTS = 'inputs.json'  # in a benchmark's run folder, beside config.yaml: what the run trained from


def run_inputs(config: TrainConfig) -> Dict[str, Any]:
    """What a run trains from besides its config's values, which name these only by path: the generated
    data (a folder regenerated at other sizes keeps its path) and the starting weights (a backbone
    pre-trained again keeps its file name)."""
    specs = config.dataset if isinstance(config.dataset, (list, tuple)) else [config.dataset]
    files = [config.model_args.get('pretrained_cfg_overlay', {}).get('file')]
    files += [str(Path(folder) / 'model.safetensors') for folder in (config.init_checkpoint,
                                                                     getattr(config, 'teacher', None)) if folder]
    return dict(data=[synth_params(spec['root']) for spec in specs],
                weights={file: hashlib.sha256(Path(file).read_bytes()).hexdigest() for file in files if file})


def matching_state(output: Path, config: TrainConfig) -> Optional[Dict[str, Any]]:
    """The training state of the run in ``output`` (finished or not) when it was started with ``config``'s
    values on the same inputs, else None: what reusing or resuming it needs (runs.json vouches for its
    records, not for the work folder)."""
    state, inputs = _train_state(output / 'last'), output / RUN_INPUTS
    if state is None or not inputs.is_file() or json.loads(inputs.read_text()) != run_inputs(config):
        return None
    ignored = set(RUN_CONTROL) | set(RESUME_OVERRIDABLE) - {'epochs'}  # these do not change what is trained
    wanted = {k: v for k, v in config_to_dict(config).items() if k not in ignored}
    return state if wanted == {k: v for k, v in state['config'].items() if k not in ignored} else None


def folder_result(last: Path) -> Dict[str, Any]:
    """What ``fine_tune`` returned for the finished run that saved ``last``, read back from its training
    state: for a run an earlier invocation trained but stopped before recording."""
    history = _train_state(last)['history']
    return dict(output=str(last.parent), history=history,
                last=next(record for record in reversed(history) if 'eval' in record))


class Experiment:
    """Runs fine-tunes and distillations under one output folder; with ``previous`` (the runs of an
    earlier invocation with the same setting) a run whose checkpoint is still there is reused."""

    def __init__(self, setting: Setting, work: Path, progress: bool,
                 previous: Optional[Dict[str, Dict[str, Any]]] = None, train: bool = True):
        self.s = setting
        self.work = work
        self.progress = progress
        self.previous = previous or {}
        self.train = train  # False: keep the runs there are, train none (a run that would train is None)
        self.runs: Dict[str, Dict[str, Any]] = {}

    def key(self, name: str, seed: int) -> str:
        """The name of a run in ``runs`` (and runs.json)."""
        return f'{name}/seed{seed}'

    def folder(self, name: str, seed: int) -> Path:
        """The run folder of run ``name`` of ``seed`` in the work folder."""
        return self.work / f'seed{seed}' / name

    def runnable(self, name: str, seed: int) -> bool:
        """Whether run ``name`` of ``seed`` can be trained, or kept from its folder (training off)."""
        return self.train or (self.folder(name, seed) / 'last').is_dir()

    def _run(self, name: str, seed: int, config: TrainConfig, train: Callable[[Any], Dict[str, Any]],
             recorded_only: bool = True) -> Optional[Path]:
        """``last`` of the run ``config`` describes: kept when an earlier invocation finished it (one recorded
        in runs.json, ``previous``; with ``recorded_only=False`` any, e.g. a pre-trained backbone), else
        resumed or trained by ``train`` (fine_tune or run_distill); None when it would train and training is
        off."""
        key, output = self.key(name, seed), Path(config.output)
        state = matching_state(output, config)
        if state is not None and state['epoch'] >= config.epochs and (key in self.previous or not recorded_only):
            if key in self.previous:
                self.runs[key] = self.previous[key]
            return output / 'last'
        if not self.train:
            return None
        started = time.time()
        with self._quietly():
            result = train(self._continuing(config, state))
        self._record(name, seed, started, config.model, result)
        return output / 'last'

    @staticmethod
    def _continuing(config: TrainConfig, state: Optional[Dict[str, Any]]) -> TrainConfig:
        """``config``, resuming the run an earlier invocation left in its output with these very values on
        these very inputs (``state``: its training state; a study runs across sessions, its pre-training
        alone is an hour), else starting afresh in an emptied folder: nothing of an earlier run (its
        features, its best epoch) may pass for this one's."""
        output = Path(config.output)
        if state is not None:
            return replace(config, resume=True, overwrite=False)
        shutil.rmtree(output, ignore_errors=True)
        output.mkdir(parents=True)
        atomic_save_json(run_inputs(config), output / RUN_INPUTS)
        return config

    def domain(self, domain: str, seed: int, num_ids: int, folder: str = 'data') -> Dict[str, str]:
        root = generate_synthetic(
            self.work / f'{folder}-seed{seed}', domain, layout='market1501', num_ids=num_ids,
            images_per_id=self.s.images_per_id, img_size=self.s.img_size, seed=seed)
        return dict(name='market1501', root=str(root), label=domain)

    def _common(self, seed: int, **overrides) -> Dict[str, Any]:
        return {**dict(
            img_size=self.s.img_size, batch_size=self.s.batch_size, lr=self.s.lr, epochs=self.s.epochs,
            lr_step=self.s.epochs, eval_every=0, eval_batch_size=128, num_workers=0, seed=seed,
            progress=self.progress, overwrite=True), **overrides}

    def _quietly(self) -> ContextManager:
        """Without progress (``--quiet``) a run's epoch lines are not printed either: a study trains hundreds."""
        return contextlib.nullcontext() if self.progress else contextlib.redirect_stdout(io.StringIO())

    def _model_args(self, state_mode: Optional[str]) -> Dict[str, Any]:
        args = dict(backbone=self.s.backbone, embed_dim=self.s.embed_dim)
        return args if state_mode is None else dict(args, state_mode=state_mode)

    def _describe(self, name: str, seed: int, model: str, result: Dict[str, Any],
                  started: Optional[float] = None) -> Dict[str, Any]:
        """The record of a finished run. Its ``seconds``: this invocation's wall time, or the epochs' own
        times where an earlier invocation trained some of them (a resumed run; without ``started``, a run
        recorded from its folder)."""
        weights = load_file(str(Path(result['output']) / 'last' / 'model.safetensors'))
        wall = time.time() - started if started is not None else 0.0
        epochs = sum(record.get('time_s', 0.0) for record in result['history'])
        return dict(name=name, seed=seed, seconds=round(max(wall, epochs), 1), model=model,
                    params=sum(t.numel() for t in weights.values()), eval=result['last']['eval'])

    def _record(self, name: str, seed: int, started: float, model: str, result: Dict[str, Any]) -> None:
        self.runs[self.key(name, seed)] = self._describe(name, seed, model, result, started)

    def finetune(self, name: str, seed: int, dataset: Any, init: Dict[str, Any], state_mode: Optional[str],
                 test: Sequence[Dict[str, str]] = (), model_args: Optional[Dict[str, Any]] = None,
                 recorded_only: bool = True, **overrides) -> Optional[Path]:
        """Fine-tune plain (state_mode None) or PTL; ``init`` = pretrained-backbone or checkpoint kwargs."""
        model = 'reid_net' if state_mode is None else 'ptl_net'
        args = self._model_args(state_mode)
        args.update(init.pop('model_args', {}), **(model_args or {}))
        config = TrainConfig(**self._common(seed, **overrides), model=model, model_args=args, dataset=dataset,
                             test_datasets=list(test), output=str(self.folder(name, seed)), **init)
        return self._run(name, seed, config, fine_tune, recorded_only)

    def distill(self, name: str, seed: int, dataset: Dict[str, str], teacher: Path, student: Path,
                lam: float) -> Optional[Path]:
        config = DistillConfig(
            **self._common(seed, epochs=self.s.distill_epochs, lr_step=self.s.distill_epochs),
            model='reid_net', model_args=self._model_args(None), dataset=dataset, teacher=str(teacher),
            init_checkpoint=str(student), lam=lam, output=str(self.folder(name, seed)))
        return self._run(name, seed, config, run_distill)

    def backbone_init(self, checkpoint: Path) -> Dict[str, Any]:
        """The pre-trained backbone as a plain timm state dict file, loaded like ImageNet weights."""
        target = checkpoint.parent.parent / 'backbone.safetensors'
        weights = load_file(str(checkpoint / 'model.safetensors'))
        plain = {k[len('backbone.'):]: v for k, v in weights.items() if k.startswith('backbone.')}
        # written from the checkpoint every time: a backbone pre-trained again must not leave the old file
        with atomic_path(target) as tmp:
            save_file(plain, str(tmp))
        return dict(pretrained=True, model_args=dict(pretrained_cfg_overlay=dict(file=str(target))))


def run_seed(exp: Experiment, seed: int, tables: Sequence[str]) -> None:
    s = exp.s
    source, first, second, target = SYNTH_DOMAINS[:4]
    target_set = exp.domain(target, seed, s.num_ids)
    pretrained = exp.finetune('pretrain', seed, exp.domain(source, seed, s.pretrain_ids), dict(pretrained=False),
                              None, epochs=s.pretrain_epochs, lr_step=s.pretrain_epochs)
    init = partial(exp.backbone_init, pretrained)  # a fresh kwargs dict per run
    plain = exp.finetune('plain', seed, target_set, init(), None)
    if 'ptl' in tables or 'lambda' in tables:
        teacher = None
        for mode in STATE_MODES:
            last = exp.finetune(f'ptl-{mode}', seed, target_set, init(), mode)
            teacher = last if mode == 'batch' else teacher
        for lam in (LAMBDAS if 'lambda' in tables else (0.8,)):
            exp.distill(f'std-lambda{lam}', seed, target_set, teacher, plain, lam)
    if 'batch' in tables:
        exp.finetune('plain-large-batch', seed, target_set, init(), None, batch_size=s.large_batch)
    if 'steps' in tables:
        sources = [exp.domain(d, seed, s.num_ids) for d in (first, second)]
        union = exp.finetune('one-step-union', seed, [sources[0], sources[1]], init(), None)
        exp.finetune('one-step', seed, target_set, dict(init_checkpoint=str(union)), None)
        for order in ((0, 1), (1, 0)):
            label = '-'.join(sources[i]['label'] for i in order)
            step = init()
            for i in order:
                step = dict(init_checkpoint=str(exp.finetune(f'two-step-{label}-{i}', seed, sources[i], step, None)))
            exp.finetune(f'two-step-{label}', seed, target_set, step, None)
    if 'probe' in tables:
        exp.finetune('ptl-batch-no-reset', seed, target_set, init(), 'batch', state_reset='never')
        for mode in PROBE_MODES:
            exp.finetune(f'ptl-{mode}-side-lr10', seed, target_set, init(), mode, side_lr_mult=10.0)
            exp.finetune(f'ptl-{mode}-deep-fuse', seed, target_set, init(), mode, model_args=DEEP_FUSE)
        long = dict(epochs=3 * s.epochs, lr_step=2 * s.epochs)  # 3× the steps, lr ÷10 for the last third
        exp.finetune('plain-3x-epochs', seed, target_set, init(), None, **long)
        for mode in PROBE_MODES:
            exp.finetune(f'ptl-{mode}-3x-epochs', seed, target_set, init(), mode, **long)
        larger = exp.domain(target, seed, 4 * s.num_ids, folder='data-4x')
        exp.finetune('plain-4x-ids', seed, larger, init(), None)
        for mode in PROBE_MODES:
            exp.finetune(f'ptl-{mode}-4x-ids', seed, larger, init(), mode)


def _fmt(xs: List[float], signed: bool = False) -> str:
    sign = '+' if signed else ''
    return f'{statistics.mean(xs):{sign}.1f} ± {statistics.stdev(xs):.1f}' if len(xs) > 1 else f'{xs[0]:{sign}.1f}'


def _map_by_seed(runs: Dict[str, Dict[str, Any]], name: str, target: str) -> Dict[int, float]:
    return {r['seed']: r['eval'][target]['mAP'] for r in runs.values() if r['name'] == name}  # percent


def summarize(runs: Dict[str, Dict[str, Any]], name: str, reference: str, target: str) -> Dict[str, Any]:
    """Mean ± std over seeds of mAP and Rank-1, and the mAP difference to ``reference`` paired by
    seed (both runs share the seed's pre-trained backbone and data, so the pairing removes most of
    the seed-to-seed spread)."""
    rows = [r for r in runs.values() if r['name'] == name]
    maps = [r['eval'][target]['mAP'] for r in rows]
    r1s = [r['eval'][target]['rank1'] for r in rows]
    mine, ref = _map_by_seed(runs, name, target), _map_by_seed(runs, reference, target)
    deltas = [mine[seed] - ref[seed] for seed in sorted(mine) if seed in ref]
    return dict(map_text=_fmt(maps), rank1_text=_fmt(r1s), map_values=maps, rank1_values=r1s, seeds=len(rows),
                delta_text='–' if name == reference else _fmt(deltas, signed=True))


# title, cells: (run name, label[, reference run for the paired Δ; default: the table's first row])
TABLES: Dict[str, Tuple[str, List[Tuple[str, ...]]]] = {
    'ptl': ('Fine-tuning: plain vs PTL vs PTL+STD (Table 1/2 analogue)', [
        ('plain', 'plain fine-tune'), ('ptl-batch', "PTL, state 'batch'"), ('ptl-sample', "PTL, state 'sample'"),
        ('ptl-none', "PTL, state 'none' (stateless)"), ('std-lambda0.8', 'PTL+STD student (λ=0.8)')]),
    'lambda': ('STD λ sweep (Table 6 analogue)', [(f'std-lambda{lam}', f'λ = {lam}') for lam in LAMBDAS]),
    'batch': ('Small vs large batch, plain model (DenseNet-161* analogue)', [
        ('plain', 'plain, batch {batch_size}'), ('plain-large-batch', 'plain, batch {large_batch}')]),
    'steps': ('One-step vs two-step transfer (Table 5 analogue)', [
        ('one-step', 'union({first}+{second}) → {target}'),
        ('two-step-{first}-{second}', '{first} → {second} → {target}'),
        ('two-step-{second}-{first}', '{second} → {first} → {target}')]),
    'probe': ('Probes: no reset, cells\' lr ×10, fusion at layer3, 3× epochs, 4× identities (own query/gallery)', [
        ('plain', 'plain (reference)'), ('ptl-batch-no-reset', "PTL 'batch', state never reset"),
        ('ptl-batch-side-lr10', "PTL 'batch', side lr ×10"),
        ('ptl-none-side-lr10', "PTL 'none', side lr ×10"),
        ('ptl-batch-deep-fuse', "PTL 'batch', cells fused at layer3 only"),
        ('ptl-none-deep-fuse', "PTL 'none', cells fused at layer3 only"),
        ('plain-3x-epochs', 'plain, 3× epochs (reference)', 'plain-3x-epochs'),
        ('ptl-batch-3x-epochs', "PTL 'batch', 3× epochs", 'plain-3x-epochs'),
        ('ptl-none-3x-epochs', "PTL 'none', 3× epochs", 'plain-3x-epochs'),
        ('plain-4x-ids', 'plain, 4× identities (reference)', 'plain-4x-ids'),
        ('ptl-batch-4x-ids', "PTL 'batch', 4× identities", 'plain-4x-ids'),
        ('ptl-none-4x-ids', "PTL 'none', 4× identities", 'plain-4x-ids')]),
}


def render(runs: Dict[str, Dict[str, Any]], setting: Setting, tables: Sequence[str], plot_dir: Path) -> str:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    source, first, second, target = SYNTH_DOMAINS[:4]
    names = dict(first=first, second=second, target=target, **asdict(setting))
    params = {r['name']: r['params'] for r in runs.values()}
    body = []
    for key in tables:
        title, cells = TABLES[key]
        rows, bars = [], []
        reference = cells[0][0].format(**names)
        for run_name, label, *ref in cells:
            run_name, label = run_name.format(**names), label.format(**names)
            cell = summarize(runs, run_name, ref[0].format(**names) if ref else reference, target)
            count = params.get(run_name)
            rows.append([label, cell['map_text'], cell['rank1_text'], cell['delta_text'], cell['seeds'],
                         f'{count / 1e6:.2f}M' if count else '–'])
            bars.append((label, cell['map_values'], cell['rank1_values']))
        body.append(f'### {title}\n\n' + markdown_table(
            ['setting', 'mAP % (mean ± std)', 'Rank-1 % (mean ± std)', 'Δ mAP vs reference (paired by seed)',
             'seeds', 'params'], rows)
            + f'\n![{key}](benchmarks/results/transfer/{key}.png)\n')
        fig, ax = plt.subplots(figsize=(7, 3.2))
        xs = range(len(bars))
        for offset, index, metric in ((-0.2, 1, 'mAP'), (0.2, 2, 'Rank-1')):
            values = [b[index] for b in bars]
            ax.bar([x + offset for x in xs], [statistics.mean(v) for v in values], 0.4, label=metric,
                   yerr=[statistics.stdev(v) if len(v) > 1 else 0 for v in values], capsize=2)
        ax.set_xticks(list(xs), [b[0] for b in bars], rotation=20, ha='right', fontsize=7)
        ax.set_ylabel('% on target (mean ± std)', fontsize=8)
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7, loc='upper left')
        fig.tight_layout()
        with atomic_path(plot_dir / f'{key}.png') as tmp:
            fig.savefig(tmp, format='png', dpi=110)
        plt.close(fig)
    return '\n'.join(body)


REUSE_HELP = ('keep the runs in <out>/runs.json (same setting) whose checkpoints are still in --work, made with the '
              'same values and inputs; run only the missing ones (a table or seeds added later)')


def add_run_arguments(parser: argparse.ArgumentParser, name: str, reuse_help: str = REUSE_HELP) -> None:
    """The flags every miniature benchmark shares: CI size, scratch and result folders, reuse, reports."""
    parser.add_argument('--quick', action='store_true',
                        help='CI-size: checks the pipeline, not the outcome; writes only under --work')
    parser.add_argument('--work', default=f'runs/{name}-benchmark', help='scratch folder for data and checkpoints')
    parser.add_argument('--out', help=f'folder for runs.json and plots (default: benchmarks/results/{name}; '
                                      'quick: <work>/results)')
    parser.add_argument('--reuse', action='store_true', help=reuse_help)
    parser.add_argument('--no-report', action='store_true', help='write no report at all')
    add_report_argument(parser)
    parser.add_argument('--quiet', action='store_true',
                        help='no progress bars and no epoch lines of the runs (their warnings stay)')


def run_folders(args: argparse.Namespace, results_dir: Path) -> Tuple[Path, Path]:
    """``(work, out)``: the scratch folder, and the (created) folder of runs.json and plots."""
    work = Path(args.work)
    out = Path(args.out) if args.out else (work / 'results' if args.quick else results_dir)
    out.mkdir(parents=True, exist_ok=True)
    return work, out


def previous_runs(parser: argparse.ArgumentParser, args: argparse.Namespace, out: Path, setting: Miniature,
                  ignored: Sequence[str] = ()) -> Dict[str, Dict[str, Any]]:
    """With ``--reuse``, the runs of ``out/runs.json``, refused when its setting differs from ``setting``
    in any field but ``ignored`` (seed counts that may grow between invocations)."""
    if not (args.reuse and (out / 'runs.json').exists()):
        return {}
    saved = json.loads((out / 'runs.json').read_text())
    current = json.loads(json.dumps(asdict(setting)))  # tuples as JSON gives them back
    # a field added to the setting after the runs were recorded had its default then
    defaults = json.loads(json.dumps({f.name: f.default for f in fields(setting) if f.default is not MISSING}))
    saved['setting'] = {**{k: v for k, v in defaults.items() if k not in saved['setting']}, **saved['setting']}

    def compared(fields: Dict[str, Any]) -> Dict[str, Any]:
        return {k: v for k, v in fields.items() if k not in ignored}
    if compared(saved['setting']) != compared(current):
        parser.error(f'--reuse: {out / "runs.json"} was made with another setting: {saved["setting"]}')
    return saved['runs']


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--seeds', type=int, help='number of seeds (default: 3, quick: 2)')
    parser.add_argument('--tables', nargs='+', choices=list(TABLES), default=list(TABLES))
    add_run_arguments(parser, 'transfer')
    args = parser.parse_args(argv)

    setting = QUICK if args.quick else Setting()
    if args.seeds:
        setting = replace(setting, seeds=args.seeds)
    work, out = run_folders(args, RESULTS_DIR)
    previous = previous_runs(parser, args, out, setting)
    exp = Experiment(setting, work, progress=not args.quiet, previous=previous)
    for seed in range(setting.seeds):
        run_seed(exp, seed, args.tables)
        atomic_save_json(dict(setting=asdict(setting), runs=exp.runs), out / 'runs.json')
    body = render(exp.runs, setting, args.tables, out)
    if not args.no_report:
        write_section('transfer', 'Does PTL work? Miniature of the paper\'s experiments on synthetic domain shift',
                      f'Setting: `{json.dumps(asdict(setting))}`\n\n' + body, path=report_path(parser, args))
    if not args.quiet:
        print(body)
    return dict(setting=setting, runs=exp.runs, body=body)


if __name__ == '__main__':
    main()
