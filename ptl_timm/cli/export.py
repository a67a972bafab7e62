"""``ptl-timm export``: a model (checkpoint folder, hf-hub: id, tag or name) → ONNX, checked with onnxruntime."""
import argparse

from ptl_timm.export import OUTPUTS, export_onnx
from ptl_timm.hub import load_model


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        'export', help='export a model to ONNX (eval mode, dynamic batch axis)',
        description='Needs the onnx extra: pip install "ptl_timm[onnx]". The file is compared with PyTorch '
                    'with onnxruntime (max abs difference <= --atol).')
    parser.add_argument('model', help='checkpoint folder, hf-hub:ORG/NAME, local-dir:FOLDER or timm name[.tag]')
    parser.add_argument('--out', required=True, help='the .onnx file to write')
    parser.add_argument('--output', choices=OUTPUTS, default='embedding',
                        help='graph output: the retrieval embedding or the identity logits (default: %(default)s)')
    parser.add_argument('--input-size', type=int, nargs=2, metavar=('H', 'W'),
                        help="image size (default: the model's, e.g. 256 128)")
    parser.add_argument('--opset', type=int, help="ONNX opset (default: the exporter's)")
    parser.add_argument('--atol', type=float, default=1e-4, help='largest accepted difference (default: %(default)s)')
    parser.add_argument('--no-verify', dest='verify', action='store_false', help='skip the onnxruntime comparison')
    parser.add_argument('--quiet', action='store_true', help="no exporter messages")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    # the embedding needs no classifier: drop it so the file is smaller
    model = load_model(args.model, **({'num_classes': 0} if args.output == 'embedding' else {}))
    input_size = (model.pretrained_cfg['input_size'][0], *args.input_size) if args.input_size else None
    result = export_onnx(model, args.out, args.output, input_size, args.opset, args.verify, args.atol,
                         verbose=not args.quiet)
    check = ('not compared (onnxruntime not installed)' if result.max_abs_diff is None
             else f'max abs difference vs PyTorch {result.max_abs_diff:.1e}')
    size = 'x'.join(str(s) for s in result.input_size)
    print(f'wrote {result.path} ({result.output}, input Nx{size}); {check}')
    return 0
