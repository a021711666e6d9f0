"""Loads the native core, gradfast._C, and names its dtype and norm codes."""
from __future__ import annotations

import torch

try:
    from . import _C
except ImportError as exc:  # pragma: no cover - only when the extension was not built
    raise ImportError(
        "gradfast's native module gradfast._C is missing: install gradfast with "
        "`pip install .` (it builds the C++/CUDA core with CMake)"
    ) from exc

DTYPE_CODES = {torch.float32: 0, torch.float64: 1, torch.float16: 2, torch.bfloat16: 3}

# Kernels compute in fp32 for fp32/fp16/bf16 and in fp64 for fp64 (torch's opmath).
MATH_DTYPE = {
    torch.float32: torch.float32,
    torch.float64: torch.float64,
    torch.float16: torch.float32,
    torch.bfloat16: torch.float32,
}

CHUNK_ELEMS: int = _C.CHUNK_ELEMS
CUDA_COMPILED: bool = bool(_C.CUDA_COMPILED)


def cuda_usable() -> bool:
    """True when gradfast's CUDA kernels are compiled in and torch sees a CUDA device."""
    return CUDA_COMPILED and torch.cuda.is_available() and _C.cuda_device_count() > 0
