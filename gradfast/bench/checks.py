"""Correctness checks: does gradfast compute what torch computes, on the same inputs?

Before a pipeline is timed, each side runs once from identical inputs, and its outputs (the
total norm and the clipped gradients; the norm, parameters and Adam moments after one step)
are compared with a float64 reference of torch's own algorithm on the same inputs (torch's
ops run in float64, see pipelines.py). torch itself is not exact: its fp32 norm of a
5M-element tensor is typically off by 1e-4 relative, and its bf16 norm is rounded to bf16
before the clip coefficient is formed. So, as in gradfast's test suite, gradfast passes
when, element by element,

    |gradfast - ref| <= max(2 * |torch - ref|,  atol + rtol * |ref|)

that is: no further from the exact result than twice torch's own error, or within a few
units in the last place of the dtype (rtol, TOLERANCES) where torch happens to be exact.
The JSON keeps, per quantity, the largest error of each side against the reference.
A speedup is only reported for a pipeline whose check passed.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional

import torch

# Per dtype: rtol (a few ulps; for fp32 a few 1e-5, because torch's own implementations
# differ by that much: its fused CUDA Adam rounds 1 - beta2 to fp32, which puts its
# exp_avg_sq 1.3e-5 relative off the foreach Adam's), atol_scale (atol as a fraction of the
# largest reference magnitude of the tensor) and atol_lr (atol of parameters after an Adam step, as a fraction
# of the learning rate: an update is about lr per element, so a missing or wrong update is
# far outside it).
TOLERANCES = {
    torch.float32: dict(rtol=5e-5, atol_scale=1e-9, atol_lr=1e-5),
    torch.float64: dict(rtol=1e-13, atol_scale=1e-16, atol_lr=1e-12),
    torch.float16: dict(rtol=2e-3, atol_scale=1e-6, atol_lr=1e-2),
    torch.bfloat16: dict(rtol=1.6e-2, atol_scale=1e-5, atol_lr=1e-2),
}

CHUNK = 1 << 24  # elements compared at a time


@dataclass
class Comparison:
    """One quantity compared over all tensors of a workload.

    worst: the largest |gradfast - ref| / max(2|torch - ref|, atol + rtol|ref|); passes if
    <= 1. gradfast_max_err / torch_max_err: largest absolute error of each side against ref.
    The maxima are kept on the device and read once, in finish(): no synchronisation per
    tensor (2,000-tensor workloads).
    """

    name: str
    dtype: torch.dtype
    atol: Optional[float] = None  # fixed atol; else atol_scale * max|ref| per tensor
    note: str = ""
    _acc: Optional[torch.Tensor] = None  # [worst, gradfast err, torch err, max |ref|]
    _values: Optional[List[float]] = None

    @property
    def rtol(self) -> float:
        return TOLERANCES[self.dtype]["rtol"]

    def _stat(self, i: int) -> float:
        if self._values is None:
            self.finish()
        return self._values[i]  # type: ignore[index]

    worst = property(lambda self: self._stat(0))
    gradfast_max_err = property(lambda self: self._stat(1))
    torch_max_err = property(lambda self: self._stat(2))
    ref_max_abs = property(lambda self: self._stat(3))

    @property
    def passed(self) -> bool:
        return not self.note and self.worst <= 1.0

    def finish(self) -> None:
        if self.note:
            self._values = [float("inf"), float("inf"), float("nan"), float("nan")]
        elif self._acc is None:
            self._values = [0.0, 0.0, 0.0, 0.0]
        else:
            self._values = [float(v) for v in self._acc.tolist()]

    @torch.no_grad()
    def add(self, gradfast_out: torch.Tensor, torch_out: torch.Tensor, ref: torch.Tensor) -> None:
        """Accumulate one tensor: gradfast's and torch's outputs and the float64 reference."""
        if self.note:
            return
        if gradfast_out.shape != ref.shape or torch_out.shape != ref.shape:
            self.note = (f"shapes {tuple(gradfast_out.shape)} / {tuple(torch_out.shape)} "
                         f"against {tuple(ref.shape)}")
            return
        if ref.numel() == 0:
            return
        self._values = None
        ref = ref.detach().reshape(-1)
        finite_ref = torch.where(torch.isfinite(ref), ref, torch.zeros_like(ref))
        ref_max = finite_ref.abs().max().to(torch.float64)
        atol = (torch.tensor(self.atol, dtype=torch.float64, device=ref.device)
                if self.atol is not None else TOLERANCES[self.dtype]["atol_scale"] * ref_max)
        del finite_ref
        a_all = gradfast_out.detach().reshape(-1)
        b_all = torch_out.detach().reshape(-1)
        # In chunks, so the float64 temporaries stay small next to a 1B-parameter model.
        for start in range(0, ref.numel(), CHUNK):
            sl = slice(start, start + CHUNK)
            self._add_chunk(a_all[sl], b_all[sl], ref[sl], atol, ref_max)

    def _add_chunk(self, a: torch.Tensor, b: torch.Tensor, ref: torch.Tensor,
                   atol: torch.Tensor, ref_max: torch.Tensor) -> None:
        ref = ref.to(torch.float64)
        a = a.to(device=ref.device, dtype=torch.float64)
        b = b.to(device=ref.device, dtype=torch.float64)
        finite = torch.isfinite(ref)
        # Where the reference is inf or NaN, gradfast must produce exactly the same.
        same = (a == ref) | (torch.isnan(a) & torch.isnan(ref))
        zero = torch.zeros((), dtype=torch.float64, device=ref.device)
        inf = torch.full((), float("inf"), dtype=torch.float64, device=ref.device)
        err_a = torch.where(finite, (a - ref).abs(), zero)
        err_b = torch.where(finite, (b - ref).abs(), zero)
        bound = torch.fmax(2.0 * err_b, atol + self.rtol * ref.abs())  # fmax: NaN-proof
        ratio = err_a / bound.clamp_min(1e-300)
        ratio = torch.where(torch.isnan(err_a) | (~finite & ~same), inf, ratio)
        err_a = torch.where(torch.isnan(err_a), inf, err_a)
        chunk = torch.stack([ratio.max(), err_a.max(), err_b.max(), ref_max])
        self._acc = chunk if self._acc is None else torch.maximum(self._acc, chunk)

    def as_dict(self) -> Dict[str, object]:
        return dict(name=self.name, passed=self.passed, worst_ratio=self.worst,
                    gradfast_max_abs_err=self.gradfast_max_err,
                    torch_max_abs_err=self.torch_max_err, ref_max_abs=self.ref_max_abs,
                    rtol=self.rtol,
                    atol=self.atol if self.atol is not None else
                    f"{TOLERANCES[self.dtype]['atol_scale']} * max|ref| per tensor",
                    note=self.note)


@dataclass
class CheckResult:
    comparisons: List[Comparison] = field(default_factory=list)
    error: Optional[str] = None

    @property
    def passed(self) -> bool:
        return self.error is None and bool(self.comparisons) and all(
            c.passed for c in self.comparisons)

    def summary(self) -> str:
        """One line: each quantity's largest error against float64, gradfast / torch."""
        if self.error is not None:
            return f"error: {self.error}"
        parts = []
        for c in self.comparisons:
            part = f"{c.name} {c.gradfast_max_err:.1e}/{c.torch_max_err:.1e}"
            if not c.passed:
                part += f" MISMATCH ({c.note or f'{c.worst:.3g}x the tolerance'})"
            parts.append(part)
        return "max error vs float64, gradfast/torch: " + ", ".join(parts)

    def as_dict(self) -> Dict[str, object]:
        return dict(passed=self.passed, error=self.error,
                    reference="torch's algorithm in float64 on the same inputs",
                    rule="|gradfast - ref| <= max(2 |torch - ref|, atol + rtol |ref|)",
                    comparisons=[c.as_dict() for c in self.comparisons])
