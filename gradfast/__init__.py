"""gradfast: fused gradient clipping and Adam/AdamW for PyTorch, on CPU and CUDA.

Drop-in replacements for torch.nn.utils.clip_grad_norm_ (and its siblings) and for
torch.optim.Adam/AdamW, backed by a torch-free C++/CUDA core.
"""
from ._native import _C
from .clip import (
    clip_grad_norm,
    clip_grad_norm_,
    clip_grad_value_,
    clip_grads_with_norm_,
    get_total_norm,
)
from .config import show_config
from .health import AutoClip, GradMonitor, adaptive_clip_grad_, grad_norms
from . import optim  # noqa: E402  (gradfast.optim.Adam / AdamW)

__version__ = _C.__version__

__all__ = [
    "clip_grad_norm_",
    "clip_grad_norm",
    "clip_grad_value_",
    "clip_grads_with_norm_",
    "get_total_norm",
    "show_config",
    "grad_norms",
    "GradMonitor",
    "AutoClip",
    "adaptive_clip_grad_",
    "optim",
    "__version__",
]
