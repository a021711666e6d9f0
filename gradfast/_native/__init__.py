"""The one layer between gradfast's torch-facing API and the native core, gradfast._C.

Its concepts are its files:
  library   the core module and the codes it exports (dtype codes, norm kinds, sizes)
  backend   where kernels run: gradfast._C, or the simulator (a parameter, for tests)
  support   which tensors the kernels take, and their (device, dtype) groups
  group     one group as the kernels see it: pointers or device table, stream, workspaces
  op        each operation defined once as a torch.library op (torch.compile, CUDA graphs)
  step      the per-step inputs every optimizer's kernels share (lr, GradScaler, clipping)
  norm, adam, agc
            the calls: multi-tensor norms / scale / clamp, the fused Adam step, AGC

The data path is: public API -> support (qualify, group) -> a call on a group -> kernel.
"""
from .library import _C, CHUNK_ELEMS, CUDA_COMPILED, DTYPE_CODES, MATH_DTYPE, cuda_usable

__all__ = ["_C", "CHUNK_ELEMS", "CUDA_COMPILED", "DTYPE_CODES", "MATH_DTYPE", "cuda_usable"]
