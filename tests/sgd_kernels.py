"""The native SGD entry points called directly (below gradfast.optim.SGD): the CPU kernel
(_C.cpu_sgd_step) and the CUDA kernel through any module that has it (_C on a GPU build,
or cudasim's), with the device table built as sgd_cuda.h lays it out.

A state is [params, grads, momentum_buffers, first_flags]; a first flag is an int32 0-d
tensor, nonzero while the tensor has no momentum history.
"""
from __future__ import annotations

from typing import List, Optional

import torch

from gradfast._C import DTYPE_CODES  # noqa: F401  (re-exported for the tests)


def _ptr(t: Optional[torch.Tensor]) -> int:
    return 0 if t is None else t.data_ptr()


def hyper_and_flags(lib, momentum=0.0, dampening=0.0, weight_decay=0.0, l1=0.0,
                    nesterov=False, maximize=False, unscale=False):
    h = lib.SgdHyper(momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                     l1=l1, nesterov=nesterov, maximize=maximize)
    f = lib.SgdFlags(momentum=momentum != 0, nesterov=nesterov, wd=weight_decay != 0,
                     l1=l1 != 0, unscale=unscale)
    return h, f


def control(lib, lr=1e-2, lr_t=None, grad_scale=None, found_inf=None, total=None,
            clip=False, max_norm=0.0, max_norm_t=None, skip_nonfinite=False):
    code = lib.DTYPE_CODES
    return lib.StepControl(
        lr=lr, lr_ptr=_ptr(lr_t), lr_dtype=code[str(lr_t.dtype)[6:]] if lr_t is not None else 0,
        grad_scale=_ptr(grad_scale), found_inf=_ptr(found_inf), total_norm=_ptr(total),
        total_dtype=code[str(total.dtype)[6:]] if total is not None else 0, clip=clip,
        max_norm=max_norm, max_norm_ptr=_ptr(max_norm_t),
        max_norm_dtype=code[str(max_norm_t.dtype)[6:]] if max_norm_t is not None else 0,
        skip_nonfinite=skip_nonfinite)


def cpu_step(lib, state, hyper: dict, ctl: dict, skipped=None, threads=1) -> None:
    params, grads, bufs, firsts = state
    unscale = ctl.get("grad_scale") is not None
    h, f = hyper_and_flags(lib, unscale=unscale, **hyper)
    mom = f.momentum
    lib.cpu_sgd_step([p.data_ptr() for p in params], [g.data_ptr() for g in grads],
                     [b.data_ptr() for b in bufs] if mom else [],
                     [_ptr(x) for x in firsts] if mom else [],
                     [p.numel() for p in params], lib.DTYPE_CODES[str(params[0].dtype)[6:]],
                     h, f, control(lib, **ctl), _ptr(skipped), threads)


class SgdTable:
    """The int64 table of sgd_cuda.h for one list (kept alive as long as the call)."""

    def __init__(self, lib, state) -> None:
        params, grads, bufs, firsts = state
        tile, rows = lib.cuda_sgd_meta_layout()
        n = len(params)
        tiles = [max(1, -(-p.numel() // tile)) for p in params]
        first_tile = [0]
        for k in tiles:
            first_tile.append(first_tile[-1] + k)
        meta = [p.data_ptr() for p in params] + [g.data_ptr() for g in grads]
        meta += [b.data_ptr() for b in bufs] if bufs else [0] * n
        meta += [_ptr(x) for x in firsts] if firsts else [0] * n
        meta += [p.numel() for p in params] + first_tile
        assert len(meta) == (rows - 1) * n + n + 1
        self.meta = torch.tensor(meta, dtype=torch.int64)
        self.n, self.n_tiles = n, first_tile[-1]


def device_step(lib, state, hyper: dict, ctl: dict, workspace: torch.Tensor, skipped=None,
                device: int = 0) -> None:
    """One cuda_sgd_step on a state whose tensors the module can address (CPU tensors for
    cudasim). workspace: zeroed uint8, at least cuda_sgd_workspace_bytes(n)."""
    params = state[0]
    unscale = ctl.get("grad_scale") is not None
    h, f = hyper_and_flags(lib, unscale=unscale, **hyper)
    table = SgdTable(lib, state if f.momentum else [state[0], state[1], [], []])
    if table.meta.device != params[0].device:
        table.meta = table.meta.to(params[0].device)
    assert workspace.numel() >= lib.cuda_sgd_workspace_bytes(table.n)
    lib.cuda_sgd_step(table.meta.data_ptr(), table.n, table.n_tiles,
                      lib.DTYPE_CODES[str(params[0].dtype)[6:]], h, f, control(lib, **ctl),
                      _ptr(skipped), workspace.data_ptr(), device, 0)


def make_state(shapes, dtype, seed=0, momentum=True, device="cpu", first=True) -> List:
    gen = torch.Generator().manual_seed(seed)

    def rnd(s, scale=1.0):
        return (torch.randn(s, generator=gen, dtype=torch.float64) * scale).to(dtype).to(device)

    params = [rnd(s) for s in shapes]
    grads = [rnd(s, 0.1) for s in shapes]
    bufs = [torch.zeros_like(p) for p in params] if momentum else []
    firsts = [torch.tensor(1 if first else 0, dtype=torch.int32, device=device)
              for _ in params] if momentum else []
    return [params, grads, bufs, firsts]
