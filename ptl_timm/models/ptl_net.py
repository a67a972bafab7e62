""" PTL network: BConv-Cells paired with the stages of any timm backbone, plus the ReID head.

Paper: `Progressive Transfer Learning for Person Re-identification` (Yu et al., IJCAI-19),
https://arxiv.org/abs/1908.02492 — §3 and Figure 1.

The side network never feeds back into the backbone (as in the paper's figure and the official
MGN_PTL code): one cell reads the image, and the cell paired with stage i reads
cat(x_i, y_{i-1}) through a 1×1 conv. Its stride is the ratio of the next stage's reduction to this
one's, so y_i meets x_{i+1}. The head fuses cat(last stage, last cell) with a 1×1 conv into the
feature map that ``forward_features`` returns; global pooling of it is the ReID embedding, and a
classifier of three fully connected layers sits on top for training.

``ReIDNet(..., ptl=False)`` is the same network without the side network: the paper's baselines
and the Student-Teacher Distillation students (``reid_*``), whose embedding has the teacher's
width so the distillation L1 loss needs no adapter.

The strong baseline of the field is an option set of the same class (``bot_*``; paper: `Bag of
Tricks and A Strong Baseline for Deep Person Re-identification`, Luo et al., CVPR-W 2019,
https://arxiv.org/abs/1903.07071): ``last_stride=1`` (the last stage keeps its input resolution;
the cell strides follow the taps' reductions, so the side network still meets every stage),
``neck='bnneck'`` (BatchNorm without shift after pooling: the triplet feature is the pooled one, the
classifier and the retrieval embedding the normalised one), ``classifier_dims=()`` (one linear
classifier), ``embed_dim=0`` (no 1×1 conv: the last stage is the feature map) and
``global_pool='gem'`` (generalised-mean pooling with a learnable exponent).
"""
import re
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.modules.utils import _pair

import timm
from timm.layers import Conv2dSame, ConvNormAct, get_device_dtype, register_notrace_module
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

from ptl_timm.errors import InputError
from ptl_timm.layers import BConvCell, create_global_pool, ddp_ignore_latent_states
from .registry import check_model_name, fixed_args
from .reid_model import ReIDModelMixin, reid_cfg
from .reid_output import ReIDOutput

__all__ = ['ReIDNet', 'PTLSideNetwork', 'ConvSideBlock', 'SIDE_BLOCKS', 'ReIDClassifier', 'BNNeck', 'NECKS', 'create_ptl', 'create_reid']

NECKS = ('', 'bnneck')  # what follows the pooling: nothing, or BoT's BatchNorm neck
DEFAULT_BACKBONE = 'resnet50'  # the paper's


@register_notrace_module  # shape-dependent branch: FX keeps it a leaf
class MatchSize(nn.Module):
    """Pool a cell output onto a stage's grid where the backbone rounds sizes differently (a no-op
    for the usual stride-2 stages)."""

    def forward(self, x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != ref.shape[-2:]:
            x = F.adaptive_avg_pool2d(x, ref.shape[-2:])
        return x


class ConvSideBlock(nn.Module):
    """The BConv-Cell's convolution without its gates and state: the capacity control for PTL.

    The same gate convolution (``4 * out_chs`` channels, same kernel and stride), whose four groups pass
    a ReLU and are averaged: the side network keeps PTL's parameters and multiply-adds exactly, with no
    sigmoid/tanh gating and nothing carried between mini-batches. A plain network with it
    (``side_block='conv'``) separates what PTL's extra capacity does from what its cells do.
    """

    def __init__(
            self,
            in_chs: int,
            out_chs: int,
            kernel_size: int = 3,
            stride: int = 1,
            bias: bool = False,
            device=None,
            dtype=None,
    ):
        super().__init__()
        self.out_chs = out_chs
        self.gates = nn.Conv2d(
            in_chs, 4 * out_chs, kernel_size, stride=stride, padding=kernel_size // 2, bias=bias,
            device=device, dtype=dtype,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.gates(x)).unflatten(1, (4, self.out_chs)).mean(1)


SIDE_BLOCKS = ('bconv', 'conv')  # the side network's blocks: BConv-Cells (PTL) or their gate-free, stateless control


def _cell_kernel(stride: int) -> int:
    """3×3 for stride 1 and 2; wider for larger strides so no input pixel is skipped."""
    return 3 if stride <= 2 else 2 * stride - 1


class PTLSideNetwork(nn.Module):
    """The BConv-Cell side network of PTL (paper Eq. 3, Figure 1).

    Args:
        in_chans: Image channels.
        feature_chs: Channels of the backbone stages it pairs with (all taps but the last).
        feature_reductions: Their reductions, plus the last tap's (one more entry).
        cell_chs: Output channels of each cell: the image cell first, then one per paired stage.
        fuse_chs: Output channels of the 1×1 fuse conv before each paired cell.
        state_mode: Latent state mode of every cell ('batch', 'sample' or 'none').
        cell_bias: Gate biases in the cells.
        block: 'bconv' (BConv-Cells, PTL) or 'conv' (``ConvSideBlock``: the same convolutions without gates
            or state, the capacity-matched control).
    """

    def __init__(
            self,
            in_chans: int,
            feature_chs: Sequence[int],
            feature_reductions: Sequence[int],
            cell_chs: Sequence[int],
            fuse_chs: Sequence[int],
            state_mode: str = 'batch',
            cell_bias: bool = False,
            block: str = 'bconv',
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        if block not in SIDE_BLOCKS:
            raise InputError(f'side_block must be one of {SIDE_BLOCKS}, got {block!r}')

        def cell(in_chs: int, out_chs: int, stride: int) -> nn.Module:
            if block == 'conv':
                return ConvSideBlock(in_chs, out_chs, _cell_kernel(stride), stride, cell_bias, **dd)
            return BConvCell(in_chs, out_chs, _cell_kernel(stride), stride, cell_bias, state_mode, **dd)
        num_paired = len(feature_chs)
        if len(cell_chs) != num_paired + 1 or len(fuse_chs) != num_paired:
            raise ValueError(
                f'PTL side network pairs {num_paired} backbone stages, so it needs {num_paired + 1} cell widths '
                f'(image cell + one per stage) and {num_paired} fuse widths; got cell_chs={tuple(cell_chs)}, '
                f'fuse_chs={tuple(fuse_chs)}')
        strides = [feature_reductions[0]] + [
            max(1, feature_reductions[i + 1] // feature_reductions[i]) for i in range(num_paired)]
        self.stem_cell = cell(in_chans, cell_chs[0], strides[0])
        self.fuses = nn.ModuleList()
        self.cells = nn.ModuleList()
        for i in range(num_paired):
            self.fuses.append(ConvNormAct(feature_chs[i] + cell_chs[i], fuse_chs[i], 1, **dd))
            self.cells.append(cell(fuse_chs[i], cell_chs[i + 1], strides[i + 1]))
        self.match_size = MatchSize()
        self.out_chs = cell_chs[-1]

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for m in self.modules():
            if isinstance(m, BConvCell):
                m.grad_checkpointing = enable

    def forward(self, x: torch.Tensor, features: List[torch.Tensor]) -> torch.Tensor:
        """``features``: the paired stage outputs followed by the last stage's; returns the last cell
        output on the last stage's grid."""
        y = self.stem_cell(x)
        for i, (fuse, cell) in enumerate(zip(self.fuses, self.cells)):
            y = cell(fuse(torch.cat([features[i], self.match_size(y, features[i])], 1)))
        return self.match_size(y, features[-1])


class ReIDClassifier(nn.Module):
    """Hidden fully connected layers (Linear → BN → ReLU, dropout between them), then the identity
    classifier ``fc``. The paper's head (§3.2) has two: fc1 → BN → ReLU → dropout → fc2 → BN → ReLU → fc;
    BoT's has none, and its ``fc`` has no bias and starts from N(0, 0.001²) weights.

    Only ``fc`` depends on the dataset; a change of ``num_classes`` (a new target dataset)
    re-initialises it and keeps the hidden layers.
    """

    def __init__(
            self,
            in_features: int,
            num_classes: int,
            hidden_dims: Sequence[int] = (256, 128),
            drop_rate: float = 0.,
            bias: bool = True,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        layers: List[nn.Module] = []
        for i, width in enumerate(hidden_dims):
            if i:
                layers.append(nn.Dropout(drop_rate))
            layers += [nn.Linear(in_features, width, **dd), nn.BatchNorm1d(width, **dd), nn.ReLU(inplace=True)]
            in_features = width
        self.hidden = nn.Sequential(*layers) if layers else nn.Identity()
        self.fc = nn.Linear(in_features, num_classes, bias=bias, **dd)
        if not bias:
            nn.init.normal_(self.fc.weight, std=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.hidden(x))


@register_notrace_module  # a leaf for FX like the torch BatchNorm it extends (its input check branches on dim())
class BNNeck(nn.BatchNorm1d):
    """BoT's BNNeck: BatchNorm of the pooled feature with a scale and no shift (BoT freezes the shift at
    zero; leaving the parameter out is the same function, and every parameter then has a gradient)."""

    def __init__(self, num_features: int, device=None, dtype=None):
        super().__init__(num_features, device=device, dtype=dtype)
        self.register_parameter('bias', None)

    def reset_parameters(self) -> None:
        self.reset_running_stats()
        nn.init.ones_(self.weight)


def _strided_layers(backbone: nn.Module) -> List[Tuple[str, nn.Module]]:
    """Convolutions and poolings with a stride above 1 in the last stage: the modules after the
    second-to-last feature tap, up to the end of the last one (in the feature wrapper's module order)."""
    *_, before, last = [_normalized_name(n) for n in backbone.feature_info.module_name()]
    modules = list(backbone.named_modules())

    def end_of(tap: str) -> int:
        found = [i for i, (n, _) in enumerate(modules) if _normalized_name(n) == tap or
                 _normalized_name(n).startswith(tap + '.')]
        return found[-1] if found else -1

    start, end = end_of(before), end_of(last)
    return [
        (name, m) for name, m in modules[start + 1:end + 1] if start >= 0
        and isinstance(m, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)) and max(_pair(m.stride)) > 1]


def _keep_last_stage_resolution(backbone: nn.Module, backbone_name: str) -> None:
    """``last_stride=1``: every strided layer of the last stage runs at stride 1 without dilation, as in BoT.

    A padded convolution or pooling ('same' geometry) keeps the map's size at stride 1; a pooling whose
    window equals its stride only downsamples and becomes an identity (DenseNet transitions, ResNet-D
    shortcuts). A patchify convolution (kernel = stride, e.g. ConvNeXt) has no stride-1 equivalent and is
    refused. The last tap's reduction becomes the previous one's, which sets the cell strides.
    """
    layers = _strided_layers(backbone)
    for name, module in layers:
        kernel, padding = _pair(module.kernel_size), _pair(module.padding)
        dilation = _pair(getattr(module, 'dilation', 1))
        same = isinstance(module, Conv2dSame) or all(2 * p == d * (k - 1) for p, d, k in zip(padding, dilation, kernel))
        if same:
            module.stride = (1, 1) if isinstance(module, nn.Conv2d) else 1
        elif not isinstance(module, nn.Conv2d) and kernel == _pair(module.stride) and padding == (0, 0):
            parent, _, child = name.rpartition('.')
            setattr(backbone.get_submodule(parent) if parent else backbone, child, nn.Identity())
        else:
            raise InputError(
                f'last_stride=1 needs a last stage that downsamples with padded convolutions or poolings; '
                f'{backbone_name} downsamples with {name} ({module}), which has no stride-1 form that keeps the '
                f'map size; drop last_stride for this backbone')
    if not layers:
        raise InputError(
            f'last_stride=1: found no strided convolution or pooling in the last stage of {backbone_name} '
            f'(between feature taps {backbone.feature_info.module_name()[-2:]}); drop last_stride for this backbone')
    info = backbone.feature_info.info
    info[-1]['reduction'] = info[-2]['reduction']


class ReIDNet(ReIDModelMixin, nn.Module):
    """A timm backbone with (``ptl=True``) or without the PTL side network, and the ReID head.

    Args:
        backbone: Any timm model name with ``features_only`` support (CNNs and NHWC models alike).
        num_classes: Training identities; 0 gives the embedding (the timm way).
        in_chans: Image channels.
        global_pool: Pooling of the fused feature map ('avg', 'max', 'avgmax', 'catavgmax', 'gem', '').
        embed_dim: Channels of the fused feature map, i.e. the ReID embedding width; 0 (only without
            cells) drops the 1×1 conv, so the last stage's map is the feature (BoT).
        classifier_dims: Widths of the hidden fully connected layers ((): one linear classifier, BoT).
        neck: '' or 'bnneck' (BatchNorm after pooling: the triplet feature is the pooled one, the
            classifier and the embedding the normalised one; the classifier then has no bias if it has
            no hidden layers, as in BoT).
        last_stride: None keeps the backbone's; 1 runs its last stage at stride 1 (BoT).
        ptl: Add the BConv-Cell side network.
        cell_chs: Cell widths: the image cell, then one per paired stage.
        fuse_chs: 1×1 fuse conv widths, one per paired stage.
        state_mode: Latent state mode of every cell ('batch', 'sample', 'none').
        cell_bias: Gate biases in the cells.
        side_block: 'bconv' (PTL) or 'conv': the side network with gate-free, stateless convolutions of the
            same parameters and multiply-adds (the capacity-matched control of PTL).
        drop_rate: Dropout in the classifier.
        drop_path_rate: Stochastic depth of the backbone (passed on only when non-zero).
        backbone_args: Extra keyword arguments for ``timm.create_model(backbone, ...)``.
    """

    def __init__(
            self,
            backbone: str = DEFAULT_BACKBONE,
            num_classes: int = 751,
            in_chans: int = 3,
            global_pool: str = 'avg',
            embed_dim: int = 2048,
            classifier_dims: Sequence[int] = (256, 128),
            neck: str = '',
            last_stride: Optional[int] = None,
            ptl: bool = True,
            cell_chs: Optional[Sequence[int]] = None,
            fuse_chs: Optional[Sequence[int]] = None,
            state_mode: str = 'batch',
            cell_bias: bool = False,
            side_block: str = 'bconv',
            drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            backbone_args: Optional[Dict[str, Any]] = None,
            device=None,
            dtype=None,
    ):
        super().__init__()
        if neck not in NECKS:
            raise InputError(f'neck must be one of {NECKS}, got {neck!r}')
        if last_stride not in (None, 1):
            raise InputError(f'last_stride must be None (the backbone\'s) or 1, got {last_stride!r}')
        if not embed_dim and ptl:
            raise InputError(
                'embed_dim=0 (no 1×1 conv) needs ptl=False: the 1×1 conv fuses the last stage with the side '
                'network\'s output; give embed_dim (e.g. 2048)')
        check_model_name(backbone, what='backbone')
        dd = {'device': device, 'dtype': dtype}
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.classifier_dims = tuple(classifier_dims)
        self.grad_checkpointing = False

        backbone_args = dict(backbone_args or {})
        if drop_path_rate:
            backbone_args['drop_path_rate'] = drop_path_rate
        self.backbone = timm.create_model(
            backbone, pretrained=False, features_only=True, in_chans=in_chans, **backbone_args, **dd)
        if last_stride == 1:
            _keep_last_stage_resolution(self.backbone, backbone)
        taps = self.backbone.feature_info
        tap_chs, tap_reductions = taps.channels(), taps.reduction()
        self.backbone_nhwc = getattr(self.backbone, 'output_fmt', 'NCHW') == 'NHWC'

        neck_in = tap_chs[-1]
        if ptl:
            cell_chs, fuse_chs = _default_widths(tap_chs, cell_chs, fuse_chs)
            self.side = PTLSideNetwork(
                in_chans, tap_chs[:-1], tap_reductions, cell_chs, fuse_chs, state_mode, cell_bias, side_block, **dd)
            neck_in += self.side.out_chs
            ddp_ignore_latent_states(self)
        else:
            self.side = None
        if not embed_dim:
            self.neck = nn.Identity()
            embed_dim = neck_in
        else:  # the paper's "1x1 Conv-layer" whose output is the discriminative feature
            self.neck = ConvNormAct(neck_in, embed_dim, 1, **dd)
        self.num_features = embed_dim
        self.global_pool = create_global_pool(global_pool, **dd)
        self.head_hidden_size = embed_dim * self.global_pool.feat_mult()
        self.bnneck = BNNeck(self.head_hidden_size, **dd) if neck == 'bnneck' else nn.Identity()
        self.head = self._create_head(num_classes, **dd)

        self.feature_info = [
            dict(num_chs=c, reduction=r, module=f'backbone.{m}')
            for c, r, m in zip(tap_chs[:-1], tap_reductions[:-1], taps.module_name()[:-1])
        ] + [dict(num_chs=embed_dim, reduction=tap_reductions[-1], module='neck')]

    def _create_head(self, num_classes: int, device=None, dtype=None) -> nn.Module:
        if num_classes <= 0:
            return nn.Identity()
        bias = bool(self.classifier_dims) or not isinstance(self.bnneck, BNNeck)
        return ReIDClassifier(
            self.head_hidden_size, num_classes, self.classifier_dims, self.drop_rate, bias, device=device, dtype=dtype)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        names = [n for n, _ in self.backbone.named_children()]
        return dict(
            stem=rf'^backbone\.{re.escape(names[0])}\.',
            blocks=[(rf'^backbone\.{re.escape(n)}\.', (i,)) for i, n in enumerate(names[1:], 1)]
            + [(r'^side\.', (len(names),))],
        )

    @torch.jit.ignore
    def freeze_backbone(self, frozen: bool = True) -> None:
        """Stop (or resume) training the backbone, the part ImageNet weights initialise, so the new layers
        (cells, fuses, 1×1 conv, BNNeck, classifier) train first (the official code's ``--freeze``). Only
        ``requires_grad`` changes: its BatchNorm statistics still follow the data in train mode."""
        self.backbone.requires_grad_(not frozen)

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        super().set_grad_checkpointing(enable)
        self.backbone.set_grad_checkpointing(enable)

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """New identity classifier (``num_classes=0``: embeddings); ``global_pool=None`` or the current
        type keeps the pooling (and a learnt GeM exponent), '' returns the unpooled map (only meaningful
        with ``num_classes=0``). A BNNeck is rebuilt only if the pooled width changes."""
        self.num_classes = num_classes
        dd = get_device_dtype(self)
        if global_pool is not None and global_pool != self.global_pool.pool_type:
            self.global_pool = create_global_pool(global_pool, **dd)
            self.head_hidden_size = self.num_features * self.global_pool.feat_mult()
            if isinstance(self.bnneck, BNNeck) and self.bnneck.num_features != self.head_hidden_size:
                self.bnneck = BNNeck(self.head_hidden_size, **dd).train(self.training)
        self.head = self._create_head(num_classes, **dd).train(self.training)

    def _backbone_features(self, x: torch.Tensor) -> List[torch.Tensor]:
        features = self.backbone(x)
        if self.backbone_nhwc:
            features = [f.permute(0, 3, 1, 2) for f in features]
        return features

    def _fuse(self, x: torch.Tensor, features: List[torch.Tensor]) -> torch.Tensor:
        last = features[-1]
        if self.side is not None:
            last = torch.cat([last, self.side(x, features)], 1)
        return self.neck(last)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self._fuse(x, self._backbone_features(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x)
        if not self.global_pool.is_identity():  # '' pooling passes the map through, past the BNNeck too
            x = self.bnneck(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    @torch.jit.ignore
    def forward_reid(self, x: torch.Tensor) -> ReIDOutput:
        """One pass giving the embedding, the logits and the triplet feature: the pooled feature, which
        is the embedding itself unless a BNNeck normalises the embedding after it."""
        pooled = self.global_pool(self.forward_features(x))
        embedding = self.bnneck(pooled)
        logits = [self.head(embedding)] if self.num_classes > 0 else []
        return ReIDOutput(embedding, logits, [pooled])

    @torch.jit.ignore
    def _levels(self, x: torch.Tensor) -> List[torch.Tensor]:
        """Backbone stage outputs (the side network feeds nothing back into them), then the fused map."""
        features = self._backbone_features(x)
        return features[:-1] + [self._fuse(x, features)]


def _default_widths(
        tap_chs: Sequence[int],
        cell_chs: Optional[Sequence[int]],
        fuse_chs: Optional[Sequence[int]],
) -> Tuple[Tuple[int, ...], Tuple[int, ...]]:
    """Fill unspecified widths: narrow cells at high resolution (where they cost compute), wide
    ones at the bottom (where they cost parameters but little time): image cell 16, then 32, 64, …
    doubling, the last cell 256; fuse convs 32, 64, … and 512 before the last cell. On ResNet-50
    this adds 6.7m parameters for about a fifth more compute (paper Table 1: 28m -> 35m).
    Backbones whose last paired stage is narrower than 1024 channels get proportionally narrower
    widths (multiples of 8, at least 8)."""
    num_paired = len(tap_chs) - 1
    scale = min(1.0, tap_chs[-2] / 1024)

    def scaled(width: int) -> int:
        return max(8, int(round(width * scale / 8)) * 8)

    if cell_chs is None:
        cell_chs = [scaled(16)] + [scaled(32 * 2 ** i) for i in range(num_paired - 1)] + [scaled(256)]
    if fuse_chs is None:
        fuse_chs = [scaled(32 * 2 ** i) for i in range(num_paired - 1)] + [scaled(512)]
    return tuple(cell_chs), tuple(fuse_chs)


def _normalized_name(name: str) -> str:
    # timm's features_only wrappers flatten nested Sequentials by joining names with '_'
    return name.replace('_', '.')


def filter_backbone_pretrained(state_dict: Dict[str, torch.Tensor], model: ReIDNet) -> Dict[str, torch.Tensor]:
    """Map a plain timm backbone state dict (e.g. ImageNet weights) into ``model``.

    ReID checkpoints of this model (keys under ``backbone.``) pass through, less the head layers an
    embedding model (``num_classes=0``) lacks. Otherwise every
    backbone tensor must be found in ``state_dict`` (else a ``KeyError`` names the missing ones), the
    backbone's own classifier is dropped, and the cells, fuse convs, neck and head keep their
    initialisation.
    """
    if any(k.startswith('backbone.') for k in state_dict):
        # an embedding model (num_classes=0) has no head: drop the checkpoint's hidden layers with its fc
        own = model.state_dict()
        return {k: v for k, v in state_dict.items() if not k.startswith('head.') or k in own}
    source = {_normalized_name(k): v for k, v in state_dict.items()}
    out = dict(model.state_dict())
    missing = []
    for key in out:
        if not key.startswith('backbone.'):
            continue
        value = source.get(_normalized_name(key[len('backbone.'):]))
        if value is None or value.shape != out[key].shape:
            missing.append(key)
        else:
            out[key] = value
    if missing:
        raise KeyError(
            f'{len(missing)} backbone tensors of {model.__class__.__name__} are not in the pretrained state dict '
            f'(or have another shape), e.g. {missing[:5]}; is it a state dict of the same timm backbone?')
    return out


def _with_fixed_input_size(variant: str, kwargs: Dict[str, Any]) -> Dict[str, Any]:
    """A backbone built for one input size (ViT, Swin: ``fixed_input_size`` in timm's cfg) is built for
    the ReID input size this model reports (its cfg's, or a ``pretrained_cfg_overlay``'s), unless
    ``backbone_args`` sets ``img_size``."""
    backbone_cfg = timm.models.get_pretrained_cfg(kwargs.get('backbone', DEFAULT_BACKBONE))
    backbone_args = dict(kwargs.get('backbone_args') or {})
    if backbone_cfg is None or not backbone_cfg.fixed_input_size or 'img_size' in backbone_args:
        return kwargs
    input_size = (kwargs.get('pretrained_cfg_overlay') or {}).get('input_size') \
        or timm.models.get_pretrained_cfg(variant).input_size
    return dict(kwargs, backbone_args=dict(backbone_args, img_size=tuple(input_size[-2:])))


def _create_reid_net(variant: str, pretrained: bool = False, **kwargs) -> ReIDNet:
    kwargs = _with_fixed_input_size(variant, kwargs)
    return build_model_with_cfg(
        ReIDNet,
        variant,
        pretrained,
        pretrained_filter_fn=filter_backbone_pretrained,
        feature_cfg=dict(feature_cls='getter'),
        **kwargs,
    )


_WEIGHT_SOURCE_KEYS = ('url', 'file', 'hf_hub_id', 'hf_hub_filename')


def create_ptl(backbone: str = DEFAULT_BACKBONE, pretrained: bool = False, ptl: bool = True, **kwargs) -> ReIDNet:
    """Build the PTL network on any timm backbone, e.g. ``create_ptl('convnext_tiny', num_classes=751)``.

    This is ``timm.create_model('ptl_net', backbone=...)``: the architecture saved in ``config.json``
    is the registered ``ptl_net`` and the backbone a plain string argument, so Hub round trips work.
    ``pretrained=True`` loads the backbone's default timm ImageNet weights into the backbone and
    leaves the cells and head initialised.
    """
    check_model_name(backbone, what='backbone')
    if pretrained and 'pretrained_cfg_overlay' not in kwargs:
        source = timm.models.get_pretrained_cfg(backbone)
        if source is None or not source.has_weights:
            raise InputError(f'timm has no pretrained weights for backbone {backbone!r}; use pretrained=False '
                             f'(`--no-pretrained`)')
        kwargs['pretrained_cfg_overlay'] = {k: getattr(source, k) for k in _WEIGHT_SOURCE_KEYS if getattr(source, k)}
    return timm.create_model('ptl_net' if ptl else 'reid_net', pretrained=pretrained, backbone=backbone, **kwargs)


def create_reid(backbone: str, pretrained: bool = False, **kwargs) -> ReIDNet:
    """The same network without cells: the baseline and the distillation student for ``backbone``."""
    return create_ptl(backbone, pretrained=pretrained, ptl=False, **kwargs)


def _cfg(url: str = '', **kwargs) -> Dict[str, Any]:
    family = dict(
        input_size=(3, 256, 128),
        pool_size=(8, 4),
        interpolation='bilinear',
        classifier='head.fc',
        paper_ids='arXiv:1908.02492',
        paper_name='Progressive Transfer Learning for Person Re-identification',
    )
    return reid_cfg(url, **{**family, **kwargs})


def _bot_cfg(**kwargs) -> Dict[str, Any]:
    """BoT: stride 16 at 256×128 (last stride 1); the paper of the baseline, and of PTL for ``ptl_bot_*``."""
    return _cfg(
        pool_size=(16, 8),
        paper_ids='arXiv:1903.07071',
        paper_name='Bag of Tricks and A Strong Baseline for Deep Person Re-identification',
        origin_url='https://github.com/michuanhaohao/reid-strong-baseline',
        **kwargs,
    )


# Untagged defaults start from timm's ImageNet weights of the backbone (the paper's starting point),
# mapped into the backbone by ``filter_backbone_pretrained``; cells and head stay initialised.
default_cfgs = generate_default_cfgs({
    'ptl_resnet50.tv_in1k': _cfg(
        hf_hub_id='timm/resnet50.tv_in1k', first_conv=('backbone.conv1', 'side.stem_cell.gates')),
    'ptl_densenet161.tv_in1k': _cfg(
        hf_hub_id='timm/densenet161.tv_in1k', first_conv=('backbone.features_conv0', 'side.stem_cell.gates')),
    'reid_resnet50.tv_in1k': _cfg(hf_hub_id='timm/resnet50.tv_in1k', first_conv='backbone.conv1'),
    'reid_densenet161.tv_in1k': _cfg(hf_hub_id='timm/densenet161.tv_in1k', first_conv='backbone.features_conv0'),
    'ptl_net': _cfg(first_conv=('backbone.conv1', 'side.stem_cell.gates')),
    'reid_net': _cfg(first_conv='backbone.conv1'),
    'bot_resnet50.tv_in1k': _bot_cfg(hf_hub_id='timm/resnet50.tv_in1k', first_conv='backbone.conv1'),
    'ptl_bot_resnet50.tv_in1k': _bot_cfg(
        hf_hub_id='timm/resnet50.tv_in1k', first_conv=('backbone.conv1', 'side.stem_cell.gates')),
})


@register_model
@fixed_args(ptl=True)
def ptl_net(pretrained: bool = False, **kwargs) -> ReIDNet:
    """PTL on any timm backbone: ``timm.create_model('ptl_net', backbone='convnext_tiny')``."""
    return _create_reid_net('ptl_net', pretrained, **kwargs)


@register_model
@fixed_args(ptl=False)
def reid_net(pretrained: bool = False, **kwargs) -> ReIDNet:
    """Any timm backbone with the ReID head and no cells (baseline / distillation student)."""
    return _create_reid_net('reid_net', pretrained, **kwargs)


@register_model
@fixed_args(backbone='resnet50', ptl=True)
def ptl_resnet50(pretrained: bool = False, **kwargs) -> ReIDNet:
    """ResNet-50 + PTL (paper Table 1), 256×128 input."""
    return _create_reid_net('ptl_resnet50', pretrained, **kwargs)


@register_model
@fixed_args(backbone='densenet161', ptl=True, cell_chs=(16, 32, 64, 256, 384))
def ptl_densenet161(pretrained: bool = False, **kwargs) -> ReIDNet:
    """DenseNet-161 + PTL (paper Tables 1, 2, 5, 6), 256×128 input.

    The two bottom cells are wider than the default so the count matches the paper's 32m -> 42m.
    """
    return _create_reid_net('ptl_densenet161', pretrained, **kwargs)


@register_model
@fixed_args(backbone='resnet50', ptl=False)
def reid_resnet50(pretrained: bool = False, **kwargs) -> ReIDNet:
    """ResNet-50 baseline and distillation student: the PTL head without cells."""
    return _create_reid_net('reid_resnet50', pretrained, **kwargs)


@register_model
@fixed_args(backbone='densenet161', ptl=False)
def reid_densenet161(pretrained: bool = False, **kwargs) -> ReIDNet:
    """DenseNet-161 baseline and distillation student (paper's DenseNet-161+PTL+STD)."""
    return _create_reid_net('reid_densenet161', pretrained, **kwargs)


# BoT (Luo et al., CVPR-W 2019): last stride 1, BNNeck, one bias-free linear classifier on the BNNeck
_BOT_ARGS = dict(last_stride=1, neck='bnneck', classifier_dims=())


@register_model
@fixed_args(backbone='resnet50', ptl=False, embed_dim=0, **_BOT_ARGS)
def bot_resnet50(pretrained: bool = False, **kwargs) -> ReIDNet:
    """The BoT strong baseline: ResNet-50, last stride 1, BNNeck, a linear classifier, 256×128 input."""
    return _create_reid_net('bot_resnet50', pretrained, **kwargs)


@register_model
@fixed_args(backbone='resnet50', ptl=True, **_BOT_ARGS)
def ptl_bot_resnet50(pretrained: bool = False, **kwargs) -> ReIDNet:
    """BoT + PTL: ``bot_resnet50`` with the BConv-Cell side network, fused with the last stage by the 1×1 conv."""
    return _create_reid_net('ptl_bot_resnet50', pretrained, **kwargs)
