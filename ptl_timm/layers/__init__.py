from .bconv_cell import STATE_MODES, BConvCell, ddp_ignore_latent_states, reset_latent_states
