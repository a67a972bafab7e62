from .bconv_cell import (
    EVAL_STATES, STATE_MODES, BConvCell, ddp_ignore_latent_states, probe_latent_states, reset_latent_states,
    restore_latent_states, set_eval_state, snapshot_latent_states)
from .gem import GeneralizedMeanPool2d, create_global_pool
