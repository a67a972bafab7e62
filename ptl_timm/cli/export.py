"""Export a model to ONNX (eval mode, dynamic batch axis).

Needs the onnx extra: pip install "ptl_timm[onnx]". The model is a checkpoint folder, an hf-hub: id, a tag or
a name. The graph takes preprocessed images at the size the model was trained at and, by default, returns the
L2-normalised embedding: the same vector ptl-timm extract saves for the image (compare with the inner
product). The file is compared with PyTorch with onnxruntime (max abs difference <= --atol).

Example: ptl-timm export --model runs/x/best --output reid.onnx
"""
import argparse

from ptl_timm.eval.extract import eval_data_config
from ptl_timm.hub.export import OUTPUTS, export_onnx
from ptl_timm.hub import load_model
from .options import add_command, add_img_size, add_model, add_output, add_quiet, add_random_weights, integer, number


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = add_command(subparsers, __name__, __doc__)
    add_model(parser, required=True)
    add_random_weights(parser)
    add_output(parser, 'the .onnx file to write', folder=False, required=True)
    parser.add_argument('--graph-output', choices=OUTPUTS, default='embedding',
                        help='what the graph returns: the retrieval embedding, L2-normalised like the features of '
                             'ptl-timm extract, or the identity logits')
    parser.add_argument('--raw-embedding', dest='normalize', action='store_false',
                        help='return the embedding before L2 normalisation')
    add_img_size(parser, help="input height and width (default: the one the model's config.json records, i.e. its "
                              'training size; another size warns)')
    parser.add_argument('--opset', type=integer(1), help="ONNX opset (default: the exporter's)")
    parser.add_argument('--atol', type=number(0), default=1e-4, help='largest accepted difference')
    parser.add_argument('--no-verify', dest='verify', action='store_false', help='skip the onnxruntime comparison')
    add_quiet(parser)
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    # the embedding needs no classifier: drop it so the file is smaller
    model = load_model(args.model, random_weights=args.random_weights,
                       **({'num_classes': 0} if args.graph_output == 'embedding' else {}))
    # the trained size by default; another one warns, naming both
    input_size = eval_data_config(model.pretrained_cfg, args.img_size)['input_size']
    result = export_onnx(model, args.output, args.graph_output, input_size, normalize=args.normalize,
                         opset=args.opset, verify=args.verify, atol=args.atol, verbose=not args.quiet)
    check = ('not compared (onnxruntime not installed)' if result.max_abs_diff is None
             else f'max abs difference vs PyTorch {result.max_abs_diff:.1e}')
    size = 'x'.join(str(s) for s in result.input_size)
    output = f'{"L2-normalised " if result.normalized else ""}{result.output}'
    print(f'wrote {result.path} ({output}, input Nx{size}); {check}')
    return 0
