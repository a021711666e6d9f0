"""Gradient health: per-tensor norms, exploding/vanishing detection, adaptive clipping.

* ``grad_norms``: the global gradient norm and every tensor's norm from one native pass.
* ``GradMonitor``: per-layer norms recorded on the device, read back every N steps, with
  exploding/vanishing detection, a summary table, CSV, TensorBoard and a PNG plot.
* ``AutoClip``: clipping at a percentile of the norm history, kept on the device.
* ``adaptive_clip_grad_``: unit-wise adaptive gradient clipping (AGC).
"""
import logging

from .agc import adaptive_clip_grad_
from .autoclip import AutoClip
from .monitor import GradEvent, GradientHealthWarning, GradMonitor
from .norms import grad_norms

# A library logger stays silent unless the application configures logging.
logging.getLogger("gradfast.health").addHandler(logging.NullHandler())

__all__ = ["grad_norms", "GradMonitor", "GradEvent", "GradientHealthWarning", "AutoClip",
           "adaptive_clip_grad_"]
