""" MGN (Multiple Granularity Network) and ``ptl_mgn``, MGN with the PTL side network.

Papers: `Learning Discriminative Features with Multiple Granularities for Person Re-Identification`
(Wang et al., ACM MM 2018), https://arxiv.org/abs/1804.01438, and `Progressive Transfer Learning for
Person Re-identification` (Yu et al., IJCAI-19), https://arxiv.org/abs/1908.02492, whose released
code (ZJULearning/PTL, ``mgn.py`` and ``mgn_ptl.py``) is the reference for both models here.

A ResNet-50 trunk (stem, layer1, layer2, layer3[0]) feeds three branches, each a copy of
layer3[1:] plus a conv5 stage: the global branch keeps conv5's stride 2, the two part branches
use it with stride 1 so their maps stay fine enough to cut into 2 and 3 horizontal stripes. Max
pooling gives 8 features (3 global, 5 stripes), each reduced to 256-d (1×1 conv, BN, ReLU) and
classified by its own linear layer. The retrieval feature is the 2048-d concatenation of the 8
reduced features; MGN trains with CE on all 8 and a triplet loss on the 3 reduced global ones.

``ptl_mgn`` adds the official MGN_PTL side network: two BConv-Cells on the image, fused with the
stem; cells fused with layer1, layer2 and layer3[0]; and one cell per branch whose output joins the
branch map before pooling. The cells are the core ``BConvCell``, so the latent state behaves exactly
as in ``ptl_resnet50``.

timm's single-tensor API:

* ``forward_features`` is one unpooled map: the three branch maps (with their cell outputs for
  ``ptl_mgn``) concatenated along channels on the part branches' grid (stride 16). The global
  branch's stride-32 map is repeated nearest-neighbour onto that grid, which leaves its global max,
  the only pooling MGN applies to it, unchanged; the stripes are cut from the part branches' own
  maps. So ``num_features`` is 3 × 2048 (3 × 2176 with cells) and ``pool_size`` is input / 16.
* ``forward_head`` is MGN's multi-granularity max pooling, the reductions and the classifiers;
  ``pre_logits=True`` gives the 2048-d retrieval feature (``head_hidden_size``).
* ``forward`` returns the **mean of the 8 classifiers' logits** (train and eval alike). Plain CE on
  it, which is all an unmodified timm training loop computes, optimises the cross-entropy of the
  averaged logits, i.e. of the classifiers' geometric-mean ensemble: every classifier, reduction and
  branch is trained, but there is no triplet term, and because log-sum-exp is convex it is a lower
  bound of the official objective's CE term (the mean of the 8 separate CEs), so no single classifier
  is pushed to be right on its own. The MGN objective needs ``forward_reid`` with
  ``ptl_timm.losses.ReIDLoss(triplet_weight=1., margin=1.2)``.
"""
import copy
import re
from collections import OrderedDict
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

import timm
from timm.layers import ConvNormAct, get_device_dtype, register_notrace_module
from timm.models import build_model_with_cfg, checkpoint, checkpoint_seq, generate_default_cfgs, register_model

from ptl_timm.errors import InputError
from ptl_timm.layers import BConvCell, ddp_ignore_latent_states
from .registry import fixed_args
from .reid_model import ReIDModelMixin, reid_cfg
from .reid_output import ReIDOutput

__all__ = ['MGN', 'MGNSideNetwork', 'filter_resnet_pretrained']

# stripes per branch: 1 is the global branch (global feature only, stride-2 conv5); the part
# branches give a global feature plus that many stripes
BRANCH_STRIPES = (1, 2, 3)
NUM_GLOBAL_FEATURES = len(BRANCH_STRIPES)
NUM_PART_FEATURES = NUM_GLOBAL_FEATURES + sum(n for n in BRANCH_STRIPES if n > 1)


@register_notrace_module  # shape-dependent branch: FX keeps it a leaf
class UpsampleToGrid(nn.Module):
    """Nearest-neighbour repeat of a coarser map onto a reference grid (every source pixel is kept, so
    its max over the whole map is unchanged)."""

    def forward(self, x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != ref.shape[-2:]:
            x = F.interpolate(x, size=ref.shape[-2:], mode='nearest')
        return x


class MGNSideNetwork(nn.Module):
    """The BConv-Cell side network of the official MGN_PTL, layer by layer.

    Each cell's stride makes its output meet the next trunk stage's map: two stride-2 cells take the
    image to the stem's stride 4; after each fuse, a cell with the next stage's stride; the branch
    cells follow their branch's conv5 stride. It only reads the trunk; its outputs join the branch
    maps before pooling.

    Args:
        in_chans: Image channels.
        trunk_chs: Channels of the stem, layer1, layer2 and layer3[0] outputs.
        trunk_reductions: Their strides.
        branch_strides: Stride of each branch's conv5 stage.
        image_cell_chs: Widths of the two cells on the image.
        fuse_chs: Widths of the 1×1 fuse convs, one per trunk output.
        cell_chs: Widths of the cells between the fuses.
        branch_cell_chs: Width of each branch cell.
        state_mode: Latent state mode of every cell ('batch', 'sample' or 'none').
    """

    def __init__(
            self,
            in_chans: int = 3,
            trunk_chs: Sequence[int] = (64, 256, 512, 1024),
            trunk_reductions: Sequence[int] = (4, 4, 8, 16),
            branch_strides: Sequence[int] = (2, 1, 1),
            image_cell_chs: Tuple[int, int] = (16, 32),
            fuse_chs: Sequence[int] = (64, 128, 256, 512),
            cell_chs: Sequence[int] = (64, 256, 512),
            branch_cell_chs: int = 128,
            state_mode: str = 'batch',
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        self.image_cells = nn.Sequential(
            BConvCell(in_chans, image_cell_chs[0], 3, 2, state_mode=state_mode, **dd),
            BConvCell(image_cell_chs[0], image_cell_chs[1], 3, 2, state_mode=state_mode, **dd),
        )
        # fuse convs keep the official conv bias (redundant before BN, kept for weight compatibility)
        self.image_fuse = ConvNormAct(image_cell_chs[1] + trunk_chs[0], fuse_chs[0], 1, bias=True, **dd)
        self.cells = nn.ModuleList()
        self.fuses = nn.ModuleList()
        for i in range(len(trunk_chs) - 1):
            stride = trunk_reductions[i + 1] // trunk_reductions[i]
            self.cells.append(BConvCell(fuse_chs[i], cell_chs[i], 3, stride, state_mode=state_mode, **dd))
            self.fuses.append(ConvNormAct(trunk_chs[i + 1] + cell_chs[i], fuse_chs[i + 1], 1, bias=True, **dd))
        self.branch_cells = nn.ModuleList([
            BConvCell(fuse_chs[-1], branch_cell_chs, 3, stride, state_mode=state_mode, **dd)
            for stride in branch_strides])
        self.out_chs = branch_cell_chs

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for m in self.modules():
            if isinstance(m, BConvCell):
                m.grad_checkpointing = enable

    def forward(self, x: torch.Tensor, trunk_features: List[torch.Tensor]) -> List[torch.Tensor]:
        """``trunk_features``: stem, layer1, layer2, layer3[0] outputs; returns one map per branch."""
        y = self.image_fuse(torch.cat([self.image_cells(x), trunk_features[0]], 1))
        for i, (cell, fuse) in enumerate(zip(self.cells, self.fuses)):
            y = fuse(torch.cat([trunk_features[i + 1], cell(y)], 1))
        outputs: List[torch.Tensor] = []
        for cell in self.branch_cells:
            outputs.append(cell(y))
        return outputs


def _conv5_without_stride(stage: nn.Sequential) -> nn.Sequential:
    """A copy of ResNet's conv5 stage (layer4) with stride 1 (MGN's part branches)."""
    stage = copy.deepcopy(stage)
    first_block = stage[0]
    first_block.conv2.stride = (1, 1)
    first_block.downsample[0].stride = (1, 1)
    return stage


class MGN(ReIDModelMixin, nn.Module):
    """Multiple Granularity Network on ResNet-50, optionally with the PTL side network.

    Args:
        num_classes: Training identities (one classifier per feature); 0 gives the 2048-d embedding.
        in_chans: Image channels.
        global_pool: 'max' (MGN's pooling) or '' (``forward_head`` returns the unpooled map).
        reduction_dim: Width of each reduced feature (256: the retrieval feature is 8 × 256).
        shared_reduction: One 1×1 reduction for all 8 features (the reproduction the PTL paper
            reports as MGN, 66.7m parameters) instead of one per feature (the MGN paper as
            seathiefwang/MGN-pytorch reads it, 70.4m).
        reduction_bias: Bias in the reduction conv (the official MGN_PTL has one).
        ptl: Add the BConv-Cell side network (``ptl_mgn``).
        last_stride: None keeps MGN's stride-2 conv5 in the global branch; 1 gives it stride 1 like the
            part branches (BoT's last stride 1; its branch cell follows). The other BoT options do not apply:
            MGN max-pools stripes, and its reductions already end in BatchNorm.
        state_mode: Latent state mode of every cell ('batch', 'sample', 'none').
        drop_rate: Dropout before the classifiers.
        drop_path_rate: Stochastic depth of the ResNet blocks.
        layers: Blocks of the four ResNet stages (ResNet-50's by default; fewer give the same widths and
            maps at a fraction of the cost). layer3 needs two or more: its first block is in the trunk,
            the others are copied into each branch.
    """

    def __init__(
            self,
            num_classes: int = 751,
            in_chans: int = 3,
            global_pool: str = 'max',
            reduction_dim: int = 256,
            shared_reduction: bool = True,
            reduction_bias: bool = False,
            ptl: bool = False,
            last_stride: Optional[int] = None,
            state_mode: str = 'batch',
            drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            layers: Sequence[int] = (3, 4, 6, 3),
            device=None,
            dtype=None,
    ):
        super().__init__()
        if len(layers) != 4 or min(layers) < 1 or layers[2] < 2:
            raise InputError(f'layers must be four block counts >= 1, layer3 (the third) >= 2, got {tuple(layers)}')
        if last_stride not in (None, 1):
            raise InputError(f'last_stride must be None (MGN\'s stride-2 global branch) or 1, got {last_stride!r}')
        dd = {'device': device, 'dtype': dtype}
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.global_pool = _check_pool(global_pool)
        self.reduction_dim = reduction_dim
        self.grad_checkpointing = False

        resnet = timm.create_model('resnet50', pretrained=False, num_classes=0, in_chans=in_chans,
                                   drop_path_rate=drop_path_rate, layers=tuple(layers), **dd)
        self.stem = nn.Sequential(OrderedDict([
            ('conv1', resnet.conv1), ('bn1', resnet.bn1), ('act1', resnet.act1), ('maxpool', resnet.maxpool)]))
        # Sequential slices keep the original indices: trunk.layer3.0 and branches.*.layer3.1-5
        self.trunk = nn.Sequential(OrderedDict([
            ('layer1', resnet.layer1), ('layer2', resnet.layer2), ('layer3', resnet.layer3[:1])]))
        self.branches = nn.ModuleList([
            nn.Sequential(OrderedDict([
                ('layer3', copy.deepcopy(resnet.layer3[1:])),
                ('layer4', copy.deepcopy(resnet.layer4) if stripes == 1 and last_stride is None
                 else _conv5_without_stride(resnet.layer4)),
            ]))
            for stripes in BRANCH_STRIPES])
        self.branch_stripes: List[int] = list(BRANCH_STRIPES)

        trunk_chs = [resnet.conv1.out_channels] + [stage[-1].conv3.out_channels for stage in self.trunk]
        trunk_reductions = [4, 4, 8, 16]
        if ptl:
            self.side = MGNSideNetwork(
                in_chans, trunk_chs, trunk_reductions,
                [2 if n == 1 and last_stride is None else 1 for n in BRANCH_STRIPES],
                state_mode=state_mode, **dd)
            ddp_ignore_latent_states(self)
        else:
            self.side = None
        self.branch_chs = resnet.num_features + (self.side.out_chs if self.side is not None else 0)
        self.grid = UpsampleToGrid()
        self.num_features = self.branch_chs * len(BRANCH_STRIPES)
        self.head_hidden_size = reduction_dim * NUM_PART_FEATURES

        self.reductions = nn.ModuleList([
            ConvNormAct(self.branch_chs, reduction_dim, 1, bias=reduction_bias, **dd)
            for _ in range(1 if shared_reduction else NUM_PART_FEATURES)])
        self.head_drop = nn.Dropout(drop_rate)
        self.classifiers = self._create_classifiers(num_classes, **dd)

        self.feature_info = [
            dict(num_chs=c, reduction=r, module=m)
            for c, r, m in zip(trunk_chs, trunk_reductions, ['stem', 'trunk.layer1', 'trunk.layer2', 'trunk.layer3'])
        ] + [dict(num_chs=self.num_features, reduction=16, module='branches')]
        self._init_weights()

    def _create_classifiers(self, num_classes: int, device=None, dtype=None) -> nn.ModuleList:
        classifiers = nn.ModuleList([
            nn.Linear(self.reduction_dim, num_classes, device=device, dtype=dtype)
            for _ in range(NUM_PART_FEATURES if num_classes > 0 else 0)])
        for fc in classifiers:
            nn.init.kaiming_normal_(fc.weight, mode='fan_out')
            nn.init.zeros_(fc.bias)
        return classifiers

    def _init_weights(self) -> None:
        """The official initialisation of everything outside the ResNet copies (which keep timm's)."""
        for reduction in self.reductions:
            nn.init.kaiming_normal_(reduction.conv.weight, mode='fan_in')
            nn.init.normal_(reduction.bn.weight, 1.0, 0.02)
            nn.init.zeros_(reduction.bn.bias)
        if self.side is not None:
            for m in self.side.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode='fan_in')

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return dict(
            stem=r'^stem\.',
            blocks=[(r'^trunk\.layer(\d+)\.', None), (r'^branches\.', (4,)), (r'^side\.', (5,))],
        )

    @torch.jit.ignore
    def freeze_backbone(self, frozen: bool = True) -> None:
        """Stop (or resume) training the ResNet-50 copies (stem, trunk, branches), which ImageNet weights
        initialise, so the cells, reductions and classifiers train first; only ``requires_grad`` changes."""
        for part in (self.stem, self.trunk, self.branches):
            part.requires_grad_(not frozen)

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.classifiers

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """New identity classifiers (``num_classes=0``: embeddings); ``global_pool=None`` keeps the
        pooling, '' makes ``forward_head`` return the unpooled map."""
        self.num_classes = num_classes
        if global_pool is not None:
            self.global_pool = _check_pool(global_pool)
        self.classifiers = self._create_classifiers(num_classes, **get_device_dtype(self)).train(self.training)

    def _forward_trunk(self, x: torch.Tensor) -> List[torch.Tensor]:
        """Outputs of the stem, layer1, layer2 and layer3[0]."""
        x = self.stem(x)
        features = [x]
        for stage in self.trunk:
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = checkpoint(stage, x)
            else:
                x = stage(x)
            features.append(x)
        return features

    def _forward_branches(self, x: torch.Tensor, trunk_features: List[torch.Tensor]) -> torch.Tensor:
        maps: List[torch.Tensor] = []
        for branch in self.branches:
            if self.grad_checkpointing and not torch.jit.is_scripting():
                maps.append(checkpoint_seq(branch, trunk_features[-1]))
            else:
                maps.append(branch(trunk_features[-1]))
        if self.side is not None:
            cell_maps = self.side(x, trunk_features)
            for i, cell_map in enumerate(cell_maps):
                maps[i] = torch.cat([maps[i], cell_map], 1)
        grid = maps[-1]
        return torch.cat([self.grid(m, grid) for m in maps], 1)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self._forward_branches(x, self._forward_trunk(x))

    def _pool_parts(self, x: torch.Tensor) -> List[torch.Tensor]:
        """The 8 max-pooled [B, C, 1, 1] features: the 3 branch globals, then each part branch's
        stripes from top to bottom (the official order). Stripe i of n covers rows
        [floor(i·H/n), ceil((i+1)·H/n)) (adaptive pooling): the official 12- and 8-row windows at
        384×128, one row of overlap where n does not divide H."""
        global_features: List[torch.Tensor] = []
        stripe_features: List[torch.Tensor] = []
        for i, num_stripes in enumerate(self.branch_stripes):
            branch_map = x[:, i * self.branch_chs:(i + 1) * self.branch_chs]
            global_features.append(F.adaptive_max_pool2d(branch_map, 1))
            if num_stripes > 1:
                stripes = F.adaptive_max_pool2d(branch_map, (num_stripes, 1))
                for s in range(num_stripes):
                    stripe_features.append(stripes[:, :, s:s + 1])
        return global_features + stripe_features

    def _reduce(self, pooled: List[torch.Tensor]) -> List[torch.Tensor]:
        """[B, reduction_dim] per feature; a shared reduction serves every feature."""
        per_reduction = len(pooled) // len(self.reductions)
        reduced: List[torch.Tensor] = []
        for i, reduction in enumerate(self.reductions):
            for feature in pooled[i * per_reduction:(i + 1) * per_reduction]:
                reduced.append(reduction(feature).flatten(1))
        return reduced

    def _classify(self, reduced: List[torch.Tensor]) -> List[torch.Tensor]:
        logits: List[torch.Tensor] = []
        for i, classifier in enumerate(self.classifiers):
            logits.append(classifier(self.head_drop(reduced[i])))
        return logits

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == '':
            return x
        reduced = self._reduce(self._pool_parts(x))
        if pre_logits or self.num_classes == 0:
            return torch.cat(reduced, 1)
        return torch.stack(self._classify(reduced)).mean(0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    @torch.jit.ignore
    def forward_reid(self, x: torch.Tensor) -> ReIDOutput:
        """The 2048-d retrieval feature, the 8 logits (empty with ``num_classes=0``) and the 3 reduced
        global features for the triplet loss; always MGN's pooling, whatever ``global_pool`` says."""
        reduced = self._reduce(self._pool_parts(self.forward_features(x)))
        logits = self._classify(reduced) if self.num_classes > 0 else []
        return ReIDOutput(torch.cat(reduced, 1), logits, reduced[:NUM_GLOBAL_FEATURES])

    @torch.jit.ignore
    def _levels(self, x: torch.Tensor) -> List[torch.Tensor]:
        """Trunk stage outputs, then the concatenated branch map."""
        trunk_features = self._forward_trunk(x)
        return trunk_features + [self._forward_branches(x, trunk_features)]


def _check_pool(global_pool: str) -> str:
    if global_pool not in ('max', ''):
        raise ValueError(
            f"MGN pools with max over the whole map and its stripes: global_pool must be 'max' or '' "
            f"(unpooled map), got {global_pool!r}")
    return global_pool


_BACKBONE_PREFIX = re.compile(r'^(stem|trunk|branches\.\d+)\.')


def filter_resnet_pretrained(state_dict: Dict[str, torch.Tensor], model: MGN) -> Dict[str, torch.Tensor]:
    """Map a plain ResNet-50 state dict (timm or torchvision names, e.g. ImageNet weights) into ``model``.

    The trunk takes the stem, layer1, layer2 and layer3.0; every branch takes its own copy of
    layer3.1-5 and layer4 (the part branches' stride-1 conv5 has the same tensors). The reductions,
    classifiers and cells keep their initialisation. MGN checkpoints (keys under ``stem.``) pass
    through unchanged; a missing or misshaped ResNet tensor raises ``KeyError`` naming it.
    """
    if any(_BACKBONE_PREFIX.match(k) for k in state_dict):
        return state_dict
    out = dict(model.state_dict())
    missing = []
    for key, current in out.items():
        match = _BACKBONE_PREFIX.match(key)
        if match is None:
            continue
        value = state_dict.get(key[match.end():])
        if value is not None and value.shape == current.shape:
            out[key] = value
        elif not key.endswith('num_batches_tracked'):  # a counter some exports leave out
            missing.append(key)
    if missing:
        raise KeyError(
            f'{len(missing)} ResNet-50 tensors of {model.__class__.__name__} are not in the pretrained state dict '
            f'(or have another shape), e.g. {missing[:5]}; is it a ResNet-50 state dict?')
    return out


def _create_mgn(variant: str, pretrained: bool = False, **kwargs) -> MGN:
    return build_model_with_cfg(
        MGN,
        variant,
        pretrained,
        pretrained_filter_fn=filter_resnet_pretrained,
        feature_cfg=dict(feature_cls='getter'),
        **kwargs,
    )


def _cfg(url: str = '', **kwargs) -> Dict[str, Any]:
    family = dict(
        input_size=(3, 384, 128),
        pool_size=(24, 8),
        interpolation='bicubic',
        first_conv='stem.conv1',
        classifier=tuple(f'classifiers.{i}' for i in range(NUM_PART_FEATURES)),
        paper_ids='arXiv:1804.01438',
        paper_name='Learning Discriminative Features with Multiple Granularities for Person Re-Identification',
    )
    return reid_cfg(url, **{**family, **kwargs})


# Untagged defaults start from timm's ResNet-50 ImageNet weights, mapped into the trunk and every
# branch by ``filter_resnet_pretrained``; reductions, classifiers and cells stay initialised.
default_cfgs = generate_default_cfgs({
    'mgn_resnet50.tv_in1k': _cfg(hf_hub_id='timm/resnet50.tv_in1k'),
    'ptl_mgn.tv_in1k': _cfg(
        hf_hub_id='timm/resnet50.tv_in1k',
        first_conv=('stem.conv1', 'side.image_cells.0.gates'),
        paper_ids='arXiv:1908.02492',
        paper_name='Progressive Transfer Learning for Person Re-identification',
    ),
})


@register_model
@fixed_args(ptl=False)
def mgn_resnet50(pretrained: bool = False, **kwargs) -> MGN:
    """MGN on ResNet-50, 384×128 input: one shared reduction as the PTL paper's reproduction (66.7m
    parameters at 751 classes); ``shared_reduction=False`` gives eight (70.4m)."""
    return _create_mgn('mgn_resnet50', pretrained, **kwargs)


@register_model
@fixed_args(ptl=True, reduction_bias=True)
def ptl_mgn(pretrained: bool = False, **kwargs) -> MGN:
    """MGN + PTL as the official MGN_PTL, 384×128 input: 80.9m parameters at 751 classes."""
    return _create_mgn('ptl_mgn', pretrained, **kwargs)
