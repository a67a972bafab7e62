from .reid_output import ReIDOutput
from .reid_model import embed
from .ptl_net import PTLSideNetwork, ReIDClassifier, ReIDNet, create_ptl, create_reid, filter_backbone_pretrained
from .mgn import MGN, MGNSideNetwork
