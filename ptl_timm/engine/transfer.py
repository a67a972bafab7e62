"""Multi-step transfer (PTL paper §5.7, Table 5): fine-tune on a list of datasets in order, each step
from the previous step's weights, optionally followed by Student-Teacher Distillation, and tabulate
mAP / Rank-1 after every step on every requested test set (cross-domain evaluation).

Step *i* writes its checkpoints to ``<output>/step<i>-<dataset>/`` and starts from step *i-1*'s
``last/`` (the classifier is re-initialised for the new identities); the table goes to
``<output>/transfer.md`` and ``<output>/transfer.json``.
"""
import contextlib
import logging
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from ptl_timm.data.specs import load_dataset, located_spec, spec_label
from ptl_timm.errors import CheckpointError, ConfigError
from ptl_timm.hub import WEIGHTS_NAME
from ptl_timm.utils import atomic_save_json, atomic_write, readable_folder
from .config import TransferConfig
from .distill import run_distill
from .distributed import DistContext, setup_distributed
from .run_folder import remove_outputs, run_config, save_run_config
from .run_lock import run_lock
from .trainer import check_extras, fine_tune

__all__ = ['run_transfer', 'results_table']

TABLE_MD, TABLE_JSON = 'transfer.md', 'transfer.json'  # the transfer's table, as text and as data
_logger = logging.getLogger(__name__)


def _distinct_decimals(values: Sequence[float], fewest: int = 2, most: int = 6) -> int:
    """The fewest decimals (at least ``fewest``) at which values that differ also print differently, so two
    models never look identical in a table (48.4509 and 48.4543 are both "48.45" at two)."""
    distinct = set(values)
    return next((d for d in range(fewest, most) if len({f'{v:.{d}f}' for v in distinct}) == len(distinct)), most)


def results_table(rows: Sequence[Dict[str, Any]], test_sets: Sequence[str]) -> str:
    """Markdown table: one row per step, mAP / Rank-1 (%) per test set, each column with the decimals that
    tell its different values apart (:func:`_distinct_decimals`)."""
    header = ['step', 'model', 'fine-tuning list'] + [f'{name} mAP / R-1' for name in test_sets]
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
    decimals = {(name, key): _distinct_decimals([r['eval'][name][key] for r in rows if name in r['eval']])
                for name in test_sets for key in ('mAP', 'rank1')}
    for row in rows:
        cells = [str(row['step']), row['model'], row['route']]
        for name in test_sets:
            metrics = row['eval'].get(name)
            cells.append(f'{metrics["mAP"]:.{decimals[name, "mAP"]}f} / {metrics["rank1"]:.{decimals[name, "rank1"]}f}'
                         if metrics else '–')
        lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines) + '\n'


def _resumable(cfg: TransferConfig, step_output: Path) -> bool:
    """With ``resume``, finished and interrupted steps continue from their ``last/``; later ones start."""
    return cfg.resume and readable_folder(step_output / 'last').exists()


def _checkpoint_stamp(step_output: Path) -> Optional[int]:
    """When a step's ``last/`` was written (None: not yet): whether it trained in this invocation."""
    weights = readable_folder(step_output / 'last') / WEIGHTS_NAME
    return weights.stat().st_mtime_ns if weights.exists() else None


def _start_of(cfg: TransferConfig, output: Path, earlier_trained: bool) -> Dict[str, bool]:
    """How a step (or the distillation) of a resumed transfer starts: from its own ``last/``, unless an
    earlier step trained further in this invocation (more epochs): its start changed, so it starts again."""
    if earlier_trained and _resumable(cfg, output):
        _logger.warning('%s starts again: an earlier step trained further, so its starting weights changed', output)
        return dict(resume=False, overwrite=True)
    return dict(resume=_resumable(cfg, output))


def _row(step: Any, model: str, route: List[str], result: Dict[str, Any]) -> Dict[str, Any]:
    return dict(step=step, model=model, route=' → '.join(route), eval=(result['last'] or {}).get('eval', {}),
                output=result['output'])


def run_transfer(cfg: TransferConfig) -> Dict[str, Any]:
    """Run every step of ``cfg.steps`` (then ``cfg.distill``); returns the rows and the table.
    The transfer folder is locked meanwhile and holds the resolved ``config.yaml``."""
    cfg = run_config(cfg)
    if not cfg.steps:
        raise ConfigError('a transfer needs at least one step: set steps to a list of {dataset: ...} mappings')
    earlier = sorted(Path(cfg.output).glob('*/last'))
    if earlier and not (cfg.resume or cfg.overwrite):
        raise CheckpointError(f'{cfg.output} already holds the steps of a transfer ({earlier[0].parent}); pass '
                              f'--resume to continue it, --overwrite to replace it, or choose another output')
    check_extras(cfg)
    ctx = setup_distributed(cfg.device)  # one process group for every step (they join it)
    try:
        for step in cfg.steps:  # every step's data is there before anything is written (or overwritten)
            load_dataset(step['dataset'], step.get('data_root', cfg.data_root),
                         step.get('dataset_args', cfg.dataset_args))
        with run_lock(cfg.output) if ctx.is_main else contextlib.nullcontext():
            if ctx.is_main:
                if cfg.overwrite and not cfg.resume:
                    _remove_earlier_transfer(Path(cfg.output))
                save_run_config(cfg)
            return _run_steps(cfg, ctx)
    finally:
        ctx.close()


def _remove_earlier_transfer(output: Path) -> None:
    """An overwritten transfer's outputs go before the new one writes: a step or a distillation the new
    transfer does not have must not sit beside its table. Its table goes first, its steps after."""
    remove_outputs([output / TABLE_MD, output / TABLE_JSON, output / 'distill', *sorted(output.glob('step*-*'))])


def _run_steps(cfg: TransferConfig, ctx: DistContext) -> Dict[str, Any]:
    output = Path(cfg.output)
    located = [located_spec(s['dataset'], s.get('data_root', cfg.data_root)) for s in cfg.steps]
    test_specs = [located_spec(s, cfg.data_root) for s in cfg.test_datasets] or list(
        {spec_label(spec): spec for spec in located}.values())
    test_sets = [spec_label(s, cfg.data_root) for s in test_specs]
    rows, route, previous, trained = [], [], cfg.init_checkpoint, False
    for i, step in enumerate(cfg.steps, 1):
        label = spec_label(step['dataset'], step.get('data_root', cfg.data_root))
        route.append(label)
        step_output = output / f'step{i}-{label}'
        step_cfg = step.config(cfg, test_datasets=test_specs, init_checkpoint=previous, output=str(step_output),
                               **_start_of(cfg, step_output, trained))
        stamp = _checkpoint_stamp(step_output)
        result = fine_tune(step_cfg)
        trained = trained or _checkpoint_stamp(step_output) != stamp
        rows.append(_row(i, step_cfg.model, route, result))
        previous = str(Path(result['output']) / 'last')
    if cfg.distill is not None:
        last_step = {k: cfg.steps[-1][k] for k in ('dataset', 'data_root', 'dataset_args') if k in cfg.steps[-1]}
        distill_cfg = cfg.distill.config(
            cfg, **last_step, test_datasets=test_specs, output=str(output / 'distill'), teacher=previous,
            **_start_of(cfg, output / 'distill', trained))
        result = run_distill(distill_cfg)
        rows.append(_row('STD', distill_cfg.model, route, result))
    table = results_table(rows, test_sets)
    if ctx.is_main:
        with atomic_write(output / TABLE_MD, 'w') as f:
            f.write(table)
        atomic_save_json(dict(test_sets=test_sets, rows=rows), output / TABLE_JSON)
    return dict(rows=rows, table=table, test_sets=test_sets, main_process=ctx.is_main)
