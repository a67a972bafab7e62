"""List the ptl_timm models in the timm registry.

Every registered model with its default input size, embedding width, parameters and GMACs (one image at that
size), and its published pretrained tags.

Example: ptl-timm info --num-classes 702 --json models.json
"""
import argparse

import timm

from ptl_timm.models.complexity import count_macs
from ptl_timm.models.registry import list_models
from ptl_timm.utils import atomic_save_json
from .options import add_command, integer


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
    )


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = add_command(subparsers, __name__, __doc__)
    parser.add_argument('--num-classes', type=integer(0), default=751, help='identities of the classifier (751: Market-1501)')
    parser.add_argument('--json', metavar='FILE', help='also write the table as JSON')
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    rows = [model_summary(n, args.num_classes) for n in list_models()]
    print(f'{"model":<20} {"input":>9} {"embedding":>9} {"params":>12} {"GMACs":>7}  pretrained tags')
    for r in rows:
        size = 'x'.join(str(s) for s in r['input_size'][1:])
        print(f'{r["model"]:<20} {size:>9} {r["embedding"]:>9} {r["params"]:>12,} {r["gmacs"]:>7.2f}  '
              f'{", ".join(r["tags"])}')
    print('generic: ptl_net / reid_net (kwarg backbone=<any timm features_only model>)')
    if args.json:
        atomic_save_json(rows, args.json)
    return 0
