"""Checks shared by the tests of both ReID networks (``ReIDNet`` in test_ptl_net, ``MGN`` in test_mgn)."""
from typing import Dict, List

import torch

from ptl_timm.layers import snapshot_latent_states


def cell_states(model: torch.nn.Module) -> List[torch.Tensor]:
    """Every BConv-Cell's latent state, in module order (empty: a zero state)."""
    return list(snapshot_latent_states(model).values())


def eval_outputs_around_training(model: torch.nn.Module, images: torch.Tensor, steps: int) -> Dict[str, object]:
    """Eval outputs for ``images[:1]`` alone, in the batch, and again after ``steps`` training batches
    filled the cells' state. What training legitimately changes (BatchNorm running statistics) is undone
    through the state dict; the latent state is not in it, so it stays as training left it. Returns the
    three outputs and the cell states right after training (``trained_states``) and at the end (``final_states``)."""
    model.eval()
    alone, batched = model(images[:1]), model(images)
    weights_and_bn_stats = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    for _ in range(steps):
        model(torch.randn_like(images))
    trained_states = cell_states(model)
    model.eval()
    model.load_state_dict(weights_and_bn_stats)
    after_training = model(images[:1])
    return dict(alone=alone, batched=batched, after_training=after_training, trained_states=trained_states,
                final_states=cell_states(model))
