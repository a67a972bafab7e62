"""Build, grow, shrink, query and describe a persistent gallery index.

An index is a folder: embeddings in safetensors shards, metadata (path, identity, camera, time added) in SQLite,
and the model it was built with (preprocessing and a probe of its embeddings), so that adding and querying
with another model is refused. Adding embeds only images not yet in it, or whose file changed since; removing
is by path or identity (0042 and 42 are one identity);
every write leaves the index as before or after (a kill included), one writer at a time. Queries are exact
(streamed shard by shard, bounded memory) unless the index was built with --faiss and --backend faiss asks for
the approximate search; --rerank re-ranks each query's nearest candidates (k-reciprocal).

Example: ptl-timm index build --model runs/x/best --images gallery/ --index gallery.idx
"""
import argparse
import json
import time

from ptl_timm.errors import InputError
from ptl_timm.eval.retrieval import draw_rankings, write_rankings
from ptl_timm.index import BACKENDS, ROWS_PER_SHARD, ImageIndex
from ptl_timm.index.store import DTYPES
from ptl_timm.utils import atomic_save_json
from .options import (
    add_batch_size, add_command, add_device, add_model, add_quiet, add_ranking_outputs, add_workers, integer,
    output_file, ranking_picture)

BUILD = """Embed images into a new index.

Identities and cameras come from --identity/--camera, else from dataset-style file names
(0002_c1s1_000451_01.jpg), else stay unknown. An all-digit identity is its number: --identity 0002 and the
file above are the same person. A build that fails leaves no index behind; one that was killed before it
finished is taken over by the next build into the same folder.

Example: ptl-timm index build --model runs/x/best --images gallery/cam1 --camera cam1 --index gallery.idx
"""
ADD = """Embed and add the images not yet in an index, and again those whose file changed.

Images already in the index (same file) are skipped unless the file changed since it was added (its size or
modification time): then its entry is replaced. The model must be the one the index was built with.

Example: ptl-timm index add --model runs/x/best --images gallery/cam2 --camera cam2 --index gallery.idx
"""
REMOVE = """Remove images from an index by path or identity.

Identities match however their digits are padded (0042 and 42 are one identity).

Example: ptl-timm index remove --index gallery.idx --identities 0042
"""
QUERY = """Rank the index's images for query images (JSON/CSV + PNG).

The query image itself is never a result; --exclude-camera also skips the query's own camera. Results carry
path, score, identity, camera and time added, and are drawn like ptl-timm search draws them.

Example: ptl-timm index query --model runs/x/best --index gallery.idx --query me.jpg --output ranks.json
"""
INFO = """Describe an index: model, preprocessing, images, identities (with examples), cameras, shards.

Example: ptl-timm index info --index gallery.idx
"""


def _index_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--index', required=True, help='the index folder')


def _extraction(parser: argparse.ArgumentParser) -> None:
    add_model(parser, required=True, help='the model (checkpoint folder, hf-hub:ORG/NAME, local-dir:FOLDER)')
    add_batch_size(parser, 64)
    add_device(parser)
    add_workers(parser)
    add_quiet(parser)


def _labels(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--images', nargs='+', required=True, help='image files or folders (searched recursively)')
    parser.add_argument('--identity', help='identity of every image given (default: from file names, else unknown)')
    parser.add_argument('--camera', help='camera of every image given (default: from file names, else unknown)')


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = add_command(subparsers, __name__, __doc__)
    actions = parser.add_subparsers(dest='action', metavar='ACTION', required=True)
    build = add_command(actions, f'{__name__}.build', BUILD)
    _index_arg(build)
    _labels(build)
    _extraction(build)
    build.add_argument('--flip', action='store_true',
                       help='flip test-time augmentation (every later add and query too)')
    build.add_argument('--dtype', choices=sorted(DTYPES), default='float32',
                       help='stored embeddings: float32 is exact and fastest to score on CPU, float16 halves the disk')
    build.add_argument('--rows-per-shard', type=integer(1), default=ROWS_PER_SHARD, help='embeddings per shard file')
    build.add_argument('--faiss', action='store_true',
                       help='also keep a faiss index (needs faiss-cpu) for --backend faiss')
    add = add_command(actions, f'{__name__}.add', ADD)
    _index_arg(add)
    _labels(add)
    _extraction(add)
    remove = add_command(actions, f'{__name__}.remove', REMOVE)
    _index_arg(remove)
    remove.add_argument('--paths', nargs='+', default=[], help='image paths to remove')
    remove.add_argument('--identities', nargs='+', default=[], help='identities whose images are removed')
    query = add_command(actions, f'{__name__}.query', QUERY)
    _index_arg(query)
    _extraction(query)
    query.add_argument('--query', nargs='+', required=True, help='query image files or folders')
    query.add_argument('--top-k', type=integer(1), default=10, help='results per query')
    query.add_argument('--backend', choices=BACKENDS, default='exact',
                       help='exact, or faiss (index built with --faiss)')
    query.add_argument('--nprobe', type=integer(1),
                       help='faiss: inverted lists visited per query (default: the one tuned to recall@10 >= 0.95 '
                            'when the faiss index was trained)')
    query.add_argument('--rerank', action='store_true', help='k-reciprocal re-ranking of each query\'s candidates')
    query.add_argument('--candidates', type=integer(1), default=100,
                       help='re-ranking: nearest items re-ranked per query (at least --top-k)')
    query.add_argument('--exclude-camera', action='store_true', help='skip results from the query\'s own camera')
    query.add_argument('--camera', help='camera of the query images (default: their record in the index or file name)')
    add_ranking_outputs(query)
    info = add_command(actions, f'{__name__}.info', INFO)
    _index_arg(info)
    info.add_argument('--verify', action='store_true', help='read every shard (a damaged one is reported)')
    info.add_argument('--json', metavar='FILE', type=output_file, help='also write the description as JSON')
    parser.set_defaults(func=run)
    return parser


def _extract(args: argparse.Namespace) -> dict:
    return dict(batch_size=args.batch_size, device=args.device, num_workers=args.workers, progress=not args.quiet)


def _summary(info: dict) -> str:
    cameras = ', '.join(f'{c} {n}' for c, n in sorted(info['cameras'].items()))
    examples = f' (e.g. {", ".join(info["identity_examples"])})' if info['identity_examples'] else ''
    return (f'{info["images"]} images, {info["identities"]} identities{examples}, cameras: {cameras or "none"}; '
            f'{info["shards"]} shard{"s" if info["shards"] != 1 else ""} of {info["dtype"]}')


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    if args.action == 'build':
        index = ImageIndex.build(args.index, args.model, args.images, identity=args.identity, camera=args.camera,
                                 flip=args.flip, dtype=args.dtype, rows_per_shard=args.rows_per_shard,
                                 faiss=args.faiss, **_extract(args))
        print(f'built {args.index}: {_summary(index.info())} ({time.perf_counter() - started:.1f} s)')
    elif args.action == 'add':
        index = ImageIndex(args.index)
        counts = index.add(args.model, args.images, identity=args.identity, camera=args.camera, **_extract(args))
        print(f'added {counts["added"]} images, updated {counts["updated"]} whose file changed ({counts["skipped"]} '
              f'already in the index); {args.index} holds {_summary(index.info())}')
    elif args.action == 'remove':
        if not args.paths and not args.identities:
            raise InputError('name what to remove: --paths and/or --identities')
        index = ImageIndex(args.index)
        removed = index.remove(paths=args.paths, identities=args.identities)
        print(f'removed {removed} images; {args.index} holds {_summary(index.info())}')
    elif args.action == 'query':
        picture = ranking_picture(args)  # before the index or the model is read
        if args.rerank and args.candidates < args.top_k:
            raise InputError(f'--candidates {args.candidates} is below --top-k {args.top_k}: re-ranking picks the '
                             f'top-k among the candidates; raise --candidates or lower --top-k')
        index = ImageIndex(args.index)
        result = index.query(args.model, args.query, top_k=args.top_k, backend=args.backend, rerank=args.rerank,
                             candidates=args.candidates, exclude_camera=args.exclude_camera, camera=args.camera,
                             nprobe=args.nprobe, **_extract(args))
        out = write_rankings(result['rankings'], args.output)
        title = f'{args.index} ({args.backend}{", re-ranked" if args.rerank else ""}): top {args.top_k} of each query'
        picture = draw_rankings(result['rankings'], picture, max_queries=args.max_rows, title=title)
        print(f'wrote {out} ({len(result["rankings"])} queries, top {args.top_k}, {args.backend}) and {picture}')
        print(f'protocol: {result["protocol"]}')
    else:
        info = ImageIndex(args.index).info(verify=args.verify)
        print(json.dumps(info, indent=2))
        if args.json:
            atomic_save_json(info, args.json)
    return 0
