"""gradfast.show_config(): what this installation was built with and can use now."""
from __future__ import annotations

from typing import Any, Dict

import torch

from ._native import _C, CUDA_COMPILED, cuda_usable


def show_config() -> Dict[str, Any]:
    """A dict describing the build and the running machine (printed by `python -m gradfast info`)."""
    usable = cuda_usable()
    return {
        "gradfast_version": _C.__version__,
        "torch_version": torch.__version__,
        "cuda_kernels_compiled": CUDA_COMPILED,
        "cuda_archs": _C.cuda_archs() if CUDA_COMPILED else "",
        "cuda_device_usable": usable,
        "cuda_device_name": torch.cuda.get_device_name() if usable else None,
        "cpu_simd": _C.cpu_isa(),
        "cpu_threads": torch.get_num_threads(),
        # "openmp": the CPU kernels run on the process's OpenMP team (torch's intra-op
        # threads); "pool": on gradfast's own threads (no OpenMP runtime loaded, or
        # GRADFAST_CPU_BACKEND=pool).
        "cpu_backend": _C.cpu_backend(),
    }
