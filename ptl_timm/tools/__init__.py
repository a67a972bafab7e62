"""Applications of the toolkit, on top of training and evaluation: the synthetic end-to-end demo
(``ptl-timm demo``) and the runner of timm's own scripts with the ptl_timm models registered."""
