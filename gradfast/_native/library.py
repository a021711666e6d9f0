"""The native core, gradfast._C, and the codes it exports (never mirrored by hand)."""
from __future__ import annotations

import torch

try:
    from .. import _C
except ImportError as exc:  # pragma: no cover - only when the extension was not built
    raise ImportError(
        "gradfast's native module gradfast._C is missing: install gradfast with "
        "`pip install .` (it builds the C++/CUDA core with CMake)"
    ) from exc

# torch dtype -> the core's DType code.
DTYPE_CODES = {getattr(torch, name): code for name, code in _C.DTYPE_CODES.items()}

# Kernels compute in fp32 for fp32/fp16/bf16 and in fp64 for fp64 (torch's opmath).
MATH_DTYPE = {dt: (torch.float64 if dt is torch.float64 else torch.float32)
              for dt in DTYPE_CODES}

CHUNK_ELEMS: int = _C.CHUNK_ELEMS
CUDA_COMPILED: bool = bool(_C.CUDA_COMPILED)


def cuda_usable() -> bool:
    """True when gradfast's CUDA kernels are compiled in and torch sees a CUDA device."""
    return CUDA_COMPILED and torch.cuda.is_available() and _C.cuda_device_count() > 0
