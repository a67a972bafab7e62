"""List the ptl_timm models in the timm registry.

Every registered model with its default input size, embedding width, parameters and GMACs (one image at that
size), its pretrained tags and what it is (its entrypoint's docstring), as a Markdown table: README's models
table is this output.

Example: ptl-timm info --num-classes 702 --json models.json
"""
import argparse
from typing import List, Sequence

import timm
from timm.models import model_entrypoint

from ptl_timm.models.complexity import count_macs
from ptl_timm.models.registry import GENERIC_MODELS, list_models
from ptl_timm.utils import atomic_save_json
from .options import add_command, integer


def describe(name: str) -> str:
    """The first paragraph of the model's entrypoint docstring, on one line, in Markdown."""
    doc = (model_entrypoint(name).__doc__ or '').strip().split('\n\n')[0]
    return ' '.join(doc.split()).replace('``', '`')


def model_summary(name: str, num_classes: int) -> dict:
    """Build ``name`` on the meta device (no memory, no weights) and describe it."""
    model = timm.create_model(name, num_classes=num_classes, device='meta')
    cfg = model.pretrained_cfg
    return dict(
        model=name,
        input_size=list(cfg['input_size']),
        embedding=model.head_hidden_size,  # what forward_head(pre_logits=True) returns
        params=sum(p.numel() for p in model.parameters()),
        gmacs=round(count_macs(model) / 1e9, 3),  # at the default input size
        tags=[t for t in timm.list_pretrained(f'{name}.*')],
        description=describe(name),
    )


def markdown_table(rows: Sequence[dict], num_classes: int) -> List[str]:
    """The models table, its columns padded so that it also reads as a table in a terminal."""
    header = ['model', 'input', 'embedding', f'params ({num_classes} classes)', 'GMACs', 'pretrained tags',
              'what it is']
    cells = [[f'`{r["model"]}`', '×'.join(str(s) for s in r['input_size'][1:]), str(r['embedding']),
              f'{r["params"]:,}', f'{r["gmacs"]:.2f}', ', '.join(f'`{t.split(".", 1)[1]}`' for t in r['tags']),
              r['description']] for r in rows]
    cells += [[f'`{name}`', "backbone's", "backbone's", '–', '–', '', describe(name)] for name in GENERIC_MODELS]
    widths = [max(len(line[i]) for line in [header, *cells]) for i in range(len(header) - 1)] + [3]

    def padded(line: Sequence[str]) -> str:
        return '| ' + ' | '.join(c.ljust(w) for c, w in zip(line, widths)) + ' |'
    return [padded(header), padded(['-' * w for w in widths]), *map(padded, cells)]


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = add_command(subparsers, __name__, __doc__)
    parser.add_argument('--num-classes', type=integer(0), default=751, help='identities of the classifier (751: Market-1501)')
    parser.add_argument('--json', metavar='FILE', help='also write the table as JSON')
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    rows = [model_summary(n, args.num_classes) for n in list_models()]
    print('\n'.join(markdown_table(rows, args.num_classes)))
    if args.json:
        atomic_save_json(rows, args.json)
    return 0
