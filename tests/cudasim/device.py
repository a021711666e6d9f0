"""gradfast's CUDA entry points run on CPU memory through cudasim, called the way
gradfast._kernels calls them on a GPU: the same device tables (gradfast._tensor_lists), the
same argument tuples (_kernels._adam_scalars), workspaces zeroed once and then reused.

Tensors are CPU tensors; the simulated kernels read and write them through raw pointers.
"""
from __future__ import annotations

from typing import Dict, List, Optional

import torch

from gradfast._kernels import _adam_scalars, _ptr
from gradfast._native import DTYPE_CODES, MATH_DTYPE
from gradfast._tensor_lists import AdamDeviceList, AgcDeviceList, device_list

_CPU = torch.device("cpu")


class SimDevice:
    """One simulated GPU (cudasim's device `index`) and its workspaces, one per kind as
    gradfast keeps one per (device, stream); every launch must leave them as it found them."""

    def __init__(self, sim, index: int) -> None:
        self.sim, self.index = sim, index
        self.workspaces: Dict[str, torch.Tensor] = {}
        self.launches = 0  # kernels the last call launched

    def _call(self, entry, *args):
        before = self.sim.launches()
        out = entry(*args)
        self.launches = self.sim.launches() - before
        return out

    def workspace(self, kind: str, need: int) -> torch.Tensor:
        ws = self.workspaces.get(kind)
        if ws is None or ws.numel() < need:
            # 16-byte aligned, as torch's CUDA allocator guarantees.
            buf = torch.zeros(max(need, 1) + 16, dtype=torch.uint8)
            off = (-buf.data_ptr()) % 16
            ws = self.workspaces[kind] = buf[off:off + max(need, 1)]
        return ws

    # ---- clipping: multi_norm, multi_scale, multi_clamp --------------------------------
    def norm(self, tensors: List[torch.Tensor], kind: int, p: float, max_norm: float = 1.0,
             per_tensor: bool = True):
        """(total, per-tensor norms or None, clip coefficient) as _kernels.group_norm."""
        dtype = tensors[0].dtype
        math_dtype = MATH_DTYPE[dtype]
        dl = device_list(tensors)
        ws = self.workspace("norm", self.sim.cuda_norm_workspace_bytes(
            dl.n, dl.n_chunks, DTYPE_CODES[dtype]))
        per = torch.full((len(tensors),), float("nan"), dtype=math_dtype) if per_tensor else None
        total = torch.full((), float("nan"), dtype=dtype)
        coef = torch.full((), float("nan"), dtype=math_dtype)
        self._call(self.sim.cuda_multi_norm, *dl.args(), DTYPE_CODES[dtype], kind, p,
                   ws.data_ptr(), _ptr(per), total.data_ptr(), coef.data_ptr(), max_norm,
                   self.index, 0)
        return total, per, coef

    # (The table must outlive the call: keep `dl`, never pass a temporary's pointer; the
    # list cache holds it too.)
    def scale_(self, tensors: List[torch.Tensor], coef: torch.Tensor) -> None:
        dl = device_list(tensors)
        self._call(self.sim.cuda_multi_scale, *dl.args(), DTYPE_CODES[tensors[0].dtype],
                   coef.data_ptr(), self.index, 0)

    def clamp_(self, tensors: List[torch.Tensor], lo: float, hi: float) -> None:
        dl = device_list(tensors)
        self._call(self.sim.cuda_multi_clamp, *dl.args(), DTYPE_CODES[tensors[0].dtype], lo,
                   hi, self.index, 0)

    # ---- Adam: adam_step and the one-launch clip_adam_step -----------------------------
    def _adam_table(self, lists, amsgrad: bool) -> AdamDeviceList:
        params, grads, exp_avgs, exp_avg_sqs, max_sqs, steps = lists
        rows = [[t.data_ptr() for t in lst] for lst in (params, grads, exp_avgs, exp_avg_sqs)]
        rows.append([t.data_ptr() for t in max_sqs] if amsgrad else [0] * len(params))
        rows.append([t.data_ptr() for t in steps])
        tile = self.sim.cuda_adam_meta_layout()[0]
        return AdamDeviceList(rows, [t.numel() for t in params], _CPU, tile)

    def adam(self, lists, amsgrad: bool, skipped: Optional[torch.Tensor] = None,
             total: Optional[torch.Tensor] = None, **hyper) -> None:
        """One group_adam step (hyper: _adam_scalars' keywords other than the pointers)."""
        dtype = lists[0][0].dtype
        h, f, c = _adam_scalars(
            amsgrad=amsgrad, total_ptr=_ptr(total),
            total_code=DTYPE_CODES[total.dtype] if total is not None else 0, lib=self.sim,
            **hyper)
        dl = self._adam_table(lists, amsgrad)
        ws = self.workspace("adam", self.sim.cuda_adam_workspace_bytes(dl.n))
        self._call(self.sim.cuda_adam_step, *dl.args(), DTYPE_CODES[dtype], h, f, c,
                   _ptr(skipped), ws.data_ptr(), self.index, 0)

    def clip_adam(self, lists, amsgrad: bool, kind: int, p: float, cooperative: bool = True,
                  skipped: Optional[torch.Tensor] = None, **hyper):
        """group_clip_adam: (total, launches that ran)."""
        dtype = lists[0][0].dtype
        code = DTYPE_CODES[dtype]
        total = torch.full((), float("nan"), dtype=dtype)
        h, f, c = _adam_scalars(amsgrad=amsgrad, total_ptr=0, total_code=code, lib=self.sim,
                                **hyper)
        gl = device_list(lists[1])
        dl = self._adam_table(lists, amsgrad)
        norm_ws = self.workspace("norm", self.sim.cuda_norm_workspace_bytes(
            gl.n, gl.n_chunks, code))
        adam_ws = self.workspace("adam", self.sim.cuda_adam_workspace_bytes(dl.n))
        launches = self._call(
            self.sim.cuda_clip_adam_step, *gl.args(), *dl.args(), code, kind, p,
            norm_ws.data_ptr(), total.data_ptr(), 0, h, f, c, _ptr(skipped), adam_ws.data_ptr(),
            cooperative, self.index, 0)
        return total, launches

    # ---- adaptive gradient clipping ----------------------------------------------------
    def agc_(self, params: List[torch.Tensor], grads: List[torch.Tensor], units: List[int],
             kind: int, p: float, clip_factor: float, eps: float) -> int:
        """group_agc_cuda: the number of clipped units."""
        dtype = grads[0].dtype
        dl = AgcDeviceList([t.data_ptr() for t in params], [t.data_ptr() for t in grads],
                           [t.numel() for t in grads], list(units), _CPU)
        ws = self.workspace("agc", self.sim.cuda_agc_workspace_bytes(
            dl.n_big_units, dl.n_big_items, DTYPE_CODES[dtype]))
        clipped = torch.full((), -1, dtype=torch.int64)
        self._call(self.sim.cuda_agc, *dl.args(), DTYPE_CODES[dtype], kind, p, clip_factor,
                   eps, ws.data_ptr(), clipped.data_ptr(), self.index, 0)
        return int(clipped)
