"""gradfast on torch.distributed: global norms and clipping of DTensor gradients (FSDP2,
HSDP, tensor parallel, mixed meshes) and across pipeline stages, in one all-reduce.

gradfast.clip_grad_norm_ and its siblings come here by themselves when a gradient is a
DTensor or pp_mesh= is given (gradfast/distributed/clip.py); plain replicated gradients
(DDP) need no collective and stay on the single-process path.
"""
from .per_tensor import local_norms, reduce_per_tensor_norms

__all__ = ["local_norms", "reduce_per_tensor_norms"]
