"""Which of timm's registered models this package provides."""
from typing import List

import timm
from timm.models import model_entrypoint

__all__ = ['list_models', 'GENERIC_MODELS']

# Entrypoints that wrap a backbone chosen at call time (kwarg ``backbone``): no pretrained tag can name
# their weights.
GENERIC_MODELS = ('ptl_net', 'reid_net')


def list_models(include_generic: bool = False) -> List[str]:
    """Names of the models ``import ptl_timm`` added to timm's registry, sorted."""
    names = [n for n in timm.list_models() if model_entrypoint(n).__module__.startswith('ptl_timm.')]
    return [n for n in names if include_generic or n not in GENERIC_MODELS]
