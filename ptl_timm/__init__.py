"""ptl_timm: Progressive Transfer Learning (PTL, IJCAI-19) for person re-identification on timm.

``import ptl_timm`` registers every model in timm's registry, so ``timm.create_model('ptl_resnet50')``
works afterwards, with the published ReID tags and the offline check layered on by ``ptl_timm.hub``
(loading, saving, published weights). ``ptl_timm.calibrate`` / ``ptl_timm.verify`` give a model its
same-person thresholds and use them. ``ptl_timm.hub``, ``ptl_timm.index`` (the persistent gallery index,
``ImageIndex``) and ``ptl_timm.errors`` are available as attributes after it.
"""
from .version import __version__
from .layers import BConvCell, reset_latent_states
from .models import MGN, ReIDNet, ReIDOutput, create_ptl, create_reid
from .eval import FeatureExtractor, calibrate, evaluate_rank, re_ranking, verify
from . import errors, hub, index
