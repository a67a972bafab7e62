"""Write (and with --push upload) the Hugging Face Hub folder of a checkpoint.

Checks the weights (strict load, NaN/Inf), writes config.json (with the preprocessing the weights were trained
with) + model.safetensors + README.md (from MODEL_CARD.md, with the run's data, initialisation and metrics),
loads the folder back and compares eval embeddings, and prints the ptl_timm/weights_manifest.json entry.
Nothing is uploaded without --push.

Example: ptl-timm publish --model runs/x/best --output hub/ptl_resnet50.market1501 --tag market1501
"""
import argparse
import json

from ptl_timm.hub.publish import publish
from ptl_timm.utils import atomic_save_json
from .options import add_command, add_model, add_output, add_quiet


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = add_command(subparsers, __name__, __doc__)
    add_model(parser, required=True, help='checkpoint folder (config.json + model.safetensors [+ train_state.pt])')
    add_output(parser, 'the Hub folder to write (outside the run folder of --model)', folder=True, required=True)
    parser.add_argument('--tag', help='pretrained tag, e.g. market1501 (default: the dataset the weights record)')
    parser.add_argument('--repo-id', help='Hub repository ORG/NAME (default: ptl-timm/<model>.<tag>)')
    parser.add_argument('--push', action='store_true', help='upload after verification (needs a Hub login)')
    parser.add_argument('--dry-run', dest='push', action='store_false', help='write and verify only (the default)')
    parser.add_argument('--model-card', help="card template (default: the package's copy of MODEL_CARD.md)")
    parser.add_argument('--license', default='apache-2.0', help='licence of the weights')
    parser.add_argument('--overwrite', action='store_true', help='replace a non-empty --output')
    parser.add_argument('--entry', metavar='FILE', help='also write the manifest entry to FILE (JSON)')
    add_quiet(parser)
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    result = publish(
        args.model, args.output, tag=args.tag, repo_id=args.repo_id, push=args.push, model_card=args.model_card,
        license=args.license, overwrite=args.overwrite, progress=not args.quiet)
    print(f'wrote {result.folder} (loads back with eval embeddings {result.max_embedding_diff:.1e} away)')
    print(f'uploaded to https://huggingface.co/{result.repo_id}' if result.pushed
          else f'dry run: nothing uploaded; --push sends it to {result.repo_id}')
    if result.manifest_entry is None:
        print(f'no manifest entry ({result.no_entry_reason}): it loads via hf-hub:{result.repo_id} only')
        return 0
    entry = json.dumps(result.manifest_entry, indent=2)
    print(f'manifest entry for ptl_timm/weights_manifest.json:\n{entry}')
    if args.entry:
        atomic_save_json(result.manifest_entry, args.entry)
    return 0
