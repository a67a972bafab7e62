"""The command line's one vocabulary: every flag that means the same thing in several sub-commands is
defined here once, with one spelling, one default and one help text.

``--output`` (what a command writes), ``--data-root`` (a dataset's own folder), ``--model``,
``--img-size H W``, ``--device``, ``--workers``, ``--batch-size`` and ``--quiet``; the model and dataset
groups of extract, eval and search, and the extractor and dataset they describe.

Every value is checked as it is parsed, so a bad one is a one-line error (exit 2) before anything is
read or written: numbers by :func:`integer` / :func:`number` (the range of every numeric flag of every
command, a test makes sure), ``--model`` by the model reader's checks, ``--device`` by the device
resolver, outputs by whether they can be written.
"""
import argparse
import math
import textwrap
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

from ptl_timm.data.datasets import DATASETS, ReIDDataset, build_dataset
from ptl_timm.errors import InputError, PTLError
from ptl_timm.eval.extract import FeatureExtractor
from ptl_timm.eval.retrieval import RANKING_FORMATS
from ptl_timm.hub import check_model_source
from ptl_timm.utils import DEVICE_HELP, check_output_path, default_workers, parse_device, resolve_device

__all__ = [
    'ArgumentParser', 'HelpFormatter', 'Number', 'integer', 'number', 'device', 'device_name', 'model_source',
    'output_file', 'output_folder',
    'add_command', 'add_output', 'add_data_root', 'add_dataset', 'add_model', 'add_img_size',
    'add_device', 'add_workers', 'add_batch_size', 'add_quiet', 'add_debug', 'add_random_weights', 'add_model_args',
    'add_dataset_args', 'add_ranking_outputs', 'ranking_picture', 'extractor_from_args', 'dataset_from_args',
]


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser, its errors one line like every other user error (the usage is in ``--help``)."""

    def error(self, message: str) -> None:
        self.exit(2, f'{self.prog}: error: {message} (see {self.prog} --help)\n')


class Number:
    """An argparse type: a finite integer or number within a range, which a bad value's error states."""

    def __init__(self, kind: type, minimum: Optional[float] = None, maximum: Optional[float] = None) -> None:
        self.kind, self.minimum, self.maximum = kind, minimum, maximum
        self.__name__ = 'an integer' if kind is int else 'a number'  # argparse's word for the type

    def describe(self) -> str:
        bounds = [f'>= {self.minimum:g}' if self.minimum is not None else '',
                  f'<= {self.maximum:g}' if self.maximum is not None else '']
        return ' and '.join([self.__name__, *filter(None, bounds)]).replace(' and ', ' ', 1)

    def __call__(self, text: str) -> Union[int, float]:
        try:
            value = self.kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f'must be {self.describe()}, got {text!r}') from None
        if (not math.isfinite(value) or (self.minimum is not None and value < self.minimum)
                or (self.maximum is not None and value > self.maximum)):
            raise argparse.ArgumentTypeError(f'must be {self.describe()}, got {text}')
        return value


def integer(minimum: Optional[int] = None) -> Number:
    """An integer flag's type: ``integer(1)`` for counts and sizes, ``integer(0)`` for what may be none."""
    return Number(int, minimum)


def number(minimum: Optional[float] = None, maximum: Optional[float] = None) -> Number:
    """A real-valued flag's type: finite and within ``[minimum, maximum]``."""
    return Number(float, minimum, maximum)


def _checked(check: Callable[[str], Any], name: str) -> Callable[[str], str]:
    """An argparse type that keeps the text when ``check(text)`` passes and turns its user error into
    argparse's one-line error."""
    def parse(text: str) -> str:
        try:
            check(text)
        except PTLError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
        return text
    parse.__name__ = name
    return parse


model_source = _checked(check_model_source, 'model')  # a Hub id without path characters, a registered name
device = _checked(resolve_device, 'device')  # a device this machine has (the text is kept: configs store it)
device_name = _checked(parse_device, 'device')  # any device torch reads: a run checks it is here when it starts
output_file = _checked(check_output_path, 'output file')  # not an existing folder
output_folder = _checked(lambda text: check_output_path(text, folder=True), 'output folder')  # not an existing file


class HelpFormatter(argparse.HelpFormatter):
    """Wraps each line of a description or epilog on its own (so the example stays on its line) and
    appends every meaningful default to its flag's help (``None`` and switches say nothing: a
    ``store_false`` switch's default True would read as if the switch were on)."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        lines = []
        for line in text.splitlines():
            lead = indent + line[:len(line) - len(line.lstrip())]
            more = '    ' if line[:1].isspace() else ''  # a wrapped command line is indented further
            lines.append(textwrap.fill(line.strip(), width, initial_indent=lead, subsequent_indent=lead + more)
                         if line.strip() else '')
        return '\n'.join(lines)

    def _get_help_string(self, action: argparse.Action) -> str:
        text, default = action.help or '', action.default
        if (default is None or default is False or default == [] or default == argparse.SUPPRESS
                or action.nargs == 0 or 'default' in text or not action.option_strings):  # a switch says what it does
            return text
        shown = ' '.join(map(str, default)) if isinstance(default, (list, tuple)) else str(default)
        return f'{text} (default: {shown.replace("%", "%%")})'.lstrip()


def add_command(subparsers, module: str, doc: str) -> argparse.ArgumentParser:
    """The parser of the sub-command defined in ``module`` (``ptl_timm.cli.export_imagefolder`` →
    ``export-imagefolder``), its help texts taken from the module docstring ``doc``, so the code's
    reader and ``--help`` read one text: the first line is the one-line help, a last paragraph
    ``Example: ...`` the epilog's example, the paragraphs between the description."""
    paragraphs = [' '.join(p.split()) for p in doc.strip().split('\n\n')]
    summary, example = paragraphs[0].rstrip('.'), paragraphs[-1]
    if len(paragraphs) < 2 or not example.startswith('Example: '):
        raise ValueError(f'{module}: the docstring needs a summary line and a last "Example: ..." paragraph')
    if summary[1:2].islower():  # 'Export a model' -> 'export a model'; 'ONNX ...' stays
        summary = summary[0].lower() + summary[1:]
    parser = subparsers.add_parser(
        module.rsplit('.', 1)[-1].replace('_', '-'), help=summary, description='\n\n'.join(paragraphs[1:-1]),
        formatter_class=HelpFormatter, epilog=f'example:\n  {example[len("Example: "):]}')
    add_debug(parser)
    return parser


def _output_file_ending(suffixes: Sequence[str]) -> Callable[[str], str]:
    """An output file's type that also checks its suffix (the format it selects), so that a wrong one is
    refused as the command line is read, not after the work."""
    def check(text: str) -> None:
        if Path(text).suffix not in suffixes:
            raise InputError(f'{text} must end in {" or ".join(suffixes)}')
        check_output_path(text)
    return _checked(check, 'output file')


def add_output(parser: argparse.ArgumentParser, help: str, folder: bool = False, required: bool = False,
               default: Optional[str] = None, dest: str = 'output', suffixes: Sequence[str] = ()) -> argparse.Action:
    """``--output``: the file (or with ``folder`` the folder) a command writes; a file output naming an
    existing folder is refused, and the other way round; ``suffixes``: the endings a file may have."""
    kind = output_folder if folder else _output_file_ending(suffixes) if suffixes else output_file
    return parser.add_argument('--output', dest=dest, required=required, default=default, help=help, type=kind)


def add_ranking_outputs(parser: argparse.ArgumentParser) -> None:
    """What a command that ranks writes (``search``, ``index query``): the ranked lists (``--output``), their
    picture (``--png``, default beside them: :func:`ranking_picture`) and how many queries it draws."""
    add_output(parser, 'ranked lists: a .json or .csv file', required=True, suffixes=RANKING_FORMATS)
    parser.add_argument('--png', type=output_file, help='ranked-list picture (default: next to --output, .png)')
    parser.add_argument('--max-rows', type=integer(1), default=20, help='queries drawn in the picture')


def ranking_picture(args: argparse.Namespace) -> Path:
    """Where the ranked-list picture goes: ``--png``, else beside ``--output``; checked before any work."""
    return check_output_path(args.png or Path(args.output).with_suffix('.png'))


def add_data_root(parser: argparse.ArgumentParser, help: str = "the dataset's own folder",
                  required: bool = False, dest: str = 'data_root') -> argparse.Action:
    """``--data-root``: the folder that holds one dataset's files."""
    return parser.add_argument('--data-root', dest=dest, required=required, help=help)


def add_dataset(parser: argparse.ArgumentParser, choices: Optional[Sequence[str]] = None,
                required: bool = False, dest: str = 'dataset') -> argparse.Action:
    """``--dataset``: the layout of ``--data-root`` (market1501, dukemtmc, msmt17, cuhk03_np, folder)."""
    return parser.add_argument('--dataset', dest=dest, choices=choices, required=required,
                               help='dataset layout of --data-root')


def add_model(parser: argparse.ArgumentParser, required: bool = False, dest: str = 'model',
              help: str = 'checkpoint folder, hf-hub:ORG/NAME, local-dir:FOLDER or timm NAME.TAG '
                          '(a bare NAME needs --random-weights)') -> argparse.Action:
    """``--model``: a flag everywhere, never positional, checked as it is parsed (``check_model_source``)."""
    return parser.add_argument('--model', dest=dest, required=required, type=model_source, help=help)


def add_random_weights(parser: argparse.ArgumentParser) -> argparse.Action:
    """``--random-weights``: what lets a reader build a bare model name (``--model reid_resnet50``), which
    :func:`ptl_timm.hub.load_model` otherwise refuses so that random weights are never scored by accident."""
    return parser.add_argument('--random-weights', action='store_true',
                               help='build the architecture --model names with random weights instead of loading '
                                    'trained ones (for benchmarking speed: the results mean nothing)')


def add_img_size(parser: argparse.ArgumentParser, default: Optional[Sequence[int]] = None,
                 help: str = "input height and width (default: the model's pretrained_cfg)",
                 dest: str = 'img_size') -> argparse.Action:
    """``--img-size H W``."""
    return parser.add_argument('--img-size', dest=dest, type=integer(1), nargs=2, metavar=('H', 'W'),
                               default=None if default is None else list(default), help=help)


def add_device(parser: argparse.ArgumentParser, default: Optional[str] = 'auto',
               dest: str = 'device', here: bool = True) -> argparse.Action:
    """``--device``: 'auto' (CUDA when available), 'cpu', 'cuda', 'cuda:1', ..., one this machine has; with
    ``here=False`` (a training config, which ``--print-config`` may write for another machine) any device torch
    reads, the run checking that it is here before it reads or writes anything."""
    return parser.add_argument('--device', dest=dest, default=default, type=device if here else device_name,
                               help=DEVICE_HELP)


def add_workers(parser: argparse.ArgumentParser, dest: str = 'workers', from_config: bool = False) -> argparse.Action:
    """``--workers``: data-loader processes, by default :func:`ptl_timm.utils.default_workers` (``from_config``:
    no default here, the config's ``num_workers`` has the same one)."""
    return parser.add_argument('--workers', dest=dest, type=integer(0), default=None if from_config else default_workers(),
                               help='data-loader worker processes decoding images (default: min(4, CPU cores))')


def add_batch_size(parser: argparse.ArgumentParser, default: Optional[int], dest: str = 'batch_size',
                   help: str = 'images per batch') -> argparse.Action:
    """``--batch-size``."""
    return parser.add_argument('--batch-size', dest=dest, type=integer(1), default=default, help=help)


def add_quiet(parser: argparse.ArgumentParser) -> argparse.Action:
    """``--quiet``: no progress bars or summaries (scripts, CI)."""
    return parser.add_argument('--quiet', action='store_true', help='no progress bars')


def add_debug(parser: argparse.ArgumentParser) -> argparse.Action:
    """``--debug``: tracebacks for user errors too (also ``PTL_TIMM_DEBUG=1``)."""
    return parser.add_argument('--debug', action='store_true', default=argparse.SUPPRESS,
                               help='show the traceback of user errors too (or set PTL_TIMM_DEBUG=1)')


def add_model_args(parser: argparse.ArgumentParser, required: bool = True) -> None:
    """The model options of extract, eval and search."""
    group = parser.add_argument_group('model')
    add_model(group, required=required)
    add_random_weights(group)
    add_img_size(group, help="input height and width (default: the one the model's config.json records, i.e. its "
                             'training size; another size warns)')
    add_batch_size(group, 64)
    group.add_argument('--flip', action='store_true', help='flip test-time augmentation (sum with the mirror image)')
    add_device(group)
    add_workers(group)
    group.add_argument('--channels-last', action='store_true', help='channels-last memory format')


def add_dataset_args(parser: argparse.ArgumentParser) -> None:
    """The dataset options of extract, eval and search."""
    group = parser.add_argument_group('dataset')
    add_dataset(group, choices=sorted(DATASETS))
    add_data_root(group)
    group.add_argument('--variant', choices=('detected', 'labeled'), help='cuhk03_np boxes')


def extractor_from_args(args: argparse.Namespace) -> FeatureExtractor:
    """The ``FeatureExtractor`` the options of :func:`add_model_args` describe."""
    return FeatureExtractor(args.model, device=args.device, batch_size=args.batch_size, img_size=args.img_size,
                            flip=args.flip, num_workers=args.workers, channels_last=args.channels_last,
                            progress=not args.quiet, random_weights=args.random_weights)


def dataset_from_args(args: argparse.Namespace) -> Optional[ReIDDataset]:
    """The dataset named by --dataset/--data-root (:func:`add_dataset_args`), or None when neither is given."""
    if not args.dataset and not args.data_root:
        return None
    if not (args.dataset and args.data_root):
        raise InputError('--dataset and --data-root go together (the layout and the folder holding it)')
    return build_dataset(args.dataset, args.data_root, **({'variant': args.variant} if args.variant else {}))
