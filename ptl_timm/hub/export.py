"""ONNX export of ReID models for deployment (extra ``onnx``: onnx, onnxscript, onnxruntime).

In eval mode a BConv-Cell treats its latent state as zero and never touches it, so every model of
the package, PTL models included, is then a plain stateless function of the image batch and exports
like any CNN. The graph has a dynamic batch axis and a fixed image size (by default the one the
weights were trained at, from ``pretrained_cfg``); its output is the retrieval embedding,
L2-normalised by default so that it equals what ``ptl-timm extract`` / ``FeatureExtractor`` give
for the same preprocessed image (compare with the inner product), or the identity logits.
``export_onnx`` checks the file against PyTorch with onnxruntime whenever it is installed, before the
file takes the place of ``path``: a file that fails the check is never left there.
"""
import dataclasses
import importlib.util
import math
from pathlib import Path
from typing import Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ptl_timm.errors import InputError, MissingExtraError, NonFiniteError
from ptl_timm.models import embed
from ptl_timm.utils import PathLike, atomic_path

__all__ = ['OUTPUTS', 'MissingExtraError', 'ExportResult', 'ReIDExportWrapper', 'export_onnx', 'compare_onnx']

OUTPUTS = ('embedding', 'logits')
INPUT_NAME = 'images'
_EXPORT_MODULES = ('onnx', 'onnxscript')


@dataclasses.dataclass
class ExportResult:
    path: Path
    output: str
    input_size: Tuple[int, int, int]
    normalized: bool  # the embedding is L2-normalised (always False for logits)
    max_abs_diff: Optional[float]  # vs PyTorch on a random batch; None when onnxruntime is missing


class ReIDExportWrapper(nn.Module):
    """The part of a ReID model a deployment runs: images → embedding (L2-normalised unless not
    ``normalize``, as :func:`ptl_timm.eval.extract.extract_features` gives it) or logits, eval mode."""

    def __init__(self, model: nn.Module, output: str = 'embedding', normalize: bool = True):
        super().__init__()
        if output not in OUTPUTS:
            raise InputError(f'export output must be one of {OUTPUTS}, got {output!r}')
        if output == 'logits' and getattr(model, 'num_classes', 0) <= 0:
            raise InputError('the model has no classifier (num_classes=0), so it has no logits to export')
        self.model = model
        self.output = output
        self.normalize = normalize

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.output == 'logits':
            return self.model(images)
        embedding = embed(self.model, images)
        return F.normalize(embedding, dim=1) if self.normalize else embedding


def _require(modules: Sequence[str], purpose: str) -> None:
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise MissingExtraError(
            f'{purpose} needs {", ".join(missing)}, which is not installed: pip install "ptl_timm[onnx]"')


def _random_images(batch_size: int, input_size: Sequence[int], seed: int) -> torch.Tensor:
    return torch.randn((batch_size, *input_size), generator=torch.Generator().manual_seed(seed))


def _reference(wrapper: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """PyTorch's output of ``images``, which must be finite: a model that gives NaN or Inf (weights of a
    diverged run) has nothing to export, and would compare as "not different" (NaN > atol is false)."""
    with torch.inference_mode():
        expected = wrapper(images)
    if not torch.isfinite(expected).all():
        raise NonFiniteError(f'the model gives NaN/Inf {wrapper.output}s for a random batch in PyTorch: its weights '
                             f'hold NaN/Inf (a diverged run?); export an earlier checkpoint')
    return expected


def compare_onnx(path: PathLike, wrapper: nn.Module, images: torch.Tensor) -> float:
    """Max absolute difference between the ONNX file (onnxruntime, CPU) and ``wrapper`` on ``images``
    (``inf`` when the file gives NaN or Inf where PyTorch does not)."""
    _require(('onnxruntime',), 'checking an ONNX export')
    import onnxruntime

    expected = _reference(wrapper, images)
    session = onnxruntime.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    (actual,) = session.run(None, {INPUT_NAME: images.numpy()})
    difference = (torch.from_numpy(actual) - expected).abs()
    return float(difference.max()) if torch.isfinite(difference).all() else math.inf


def export_onnx(
        model: nn.Module,
        path: PathLike,
        output: str = 'embedding',
        input_size: Optional[Sequence[int]] = None,
        normalize: bool = True,
        opset: Optional[int] = None,
        verify: bool = True,
        atol: float = 1e-4,
        verbose: bool = False,
) -> ExportResult:
    """Export ``model`` in eval mode to the ONNX file ``path`` (written atomically), batch axis dynamic.

    Args:
        model: Any ReID model of the package (``forward_reid``), e.g. from ``ptl_timm.hub.load_model``.
        path: The ``.onnx`` file; weights are stored inside it.
        output: 'embedding' (retrieval feature) or 'logits' (identity classifier).
        input_size: (C, H, W); default the model's ``pretrained_cfg['input_size']``.
        normalize: L2-normalise the embedding (the default, as ``ptl-timm extract``); False gives the
            raw ``forward_reid(x).embedding``.
        opset: ONNX opset; default the exporter's.
        verify: Check that PyTorch's output of a random batch is finite (else ``NonFiniteError``) and
            compare the file with it on a batch of another size than the traced one (needs onnxruntime;
            skipped if it is missing), raising ``RuntimeError`` above ``atol``. A file that fails is
            removed; an earlier file at ``path`` stays as it was.
        atol: Largest accepted absolute difference.
        verbose: Show the exporter's progress messages.
    """
    _require(_EXPORT_MODULES, 'ONNX export')
    path = Path(path)
    input_size = tuple(input_size or model.pretrained_cfg['input_size'])
    was_training = model.training
    wrapper = ReIDExportWrapper(model, output, normalize).eval()
    if not atol >= 0:
        raise InputError(f'atol must be a number >= 0, got {atol}')
    check = _random_images(3, input_size, seed=1)
    if verify:
        _reference(wrapper, check)
    try:
        batch = torch.export.Dim('batch', min=1)
        max_abs_diff = None
        with atomic_path(path) as tmp:  # checked before it takes the place of path
            torch.onnx.export(
                wrapper, (_random_images(2, input_size, seed=0),), str(tmp), input_names=[INPUT_NAME],
                output_names=[output], dynamic_shapes={'images': {0: batch}}, opset_version=opset, dynamo=True,
                external_data=False, verbose=verbose)
            if verify and importlib.util.find_spec('onnxruntime') is not None:
                max_abs_diff = compare_onnx(tmp, wrapper, check)
                if not max_abs_diff <= atol:
                    raise RuntimeError(f'the ONNX export of {path} differs from PyTorch by {max_abs_diff:.3g} '
                                       f'(> {atol:g}): an exporter or onnxruntime fault, or an atol below float32 '
                                       f'precision; nothing was written')
    finally:
        model.train(was_training)
    return ExportResult(path, output, input_size, output == 'embedding' and normalize, max_abs_diff)
