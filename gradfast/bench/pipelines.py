"""Pipelines: what a training step does after the backward pass, gradfast against stock torch.

Each pipeline pairs a gradfast side with its stock-torch counterpart, computing the same
thing from the same inputs:

  clip          gradfast.clip_grad_norm_(params, 1.0)  vs  torch.nn.utils.clip_grad_norm_
  adam/<v>      gradfast.optim.Adam(max_grad_norm=1.0).step()
                  vs  torch clip_grad_norm_(params, 1.0) + torch.optim.Adam(<v>).step()
  adamw/<v>     likewise with AdamW (weight_decay=1e-2, torch's default)
  sgd/<v>       gradfast.optim.SGD(momentum=0.9, max_grad_norm=1.0).step()
                  vs  torch clip_grad_norm_(params, 1.0) + torch.optim.SGD(momentum=0.9, <v>)

where <v> is torch's default implementation (for-loop on CPU, foreach on CUDA), foreach=True
or fused=True. gradfast's Adam clips the update with the global norm without writing the
clipped gradients back; torch's clip scales them in place, so the bench restores the
gradients before every step (outside the timed region).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from . import checks

MAX_NORM = 1.0
LR = 1e-3
MOMENTUM = 0.9  # the sgd pipelines' (SGD with momentum: the RNN recipe)

VARIANTS = {
    "default": {},
    "foreach": {"foreach": True},
    "fused": {"fused": True},
}


def gradfast_optimizers() -> Tuple[Optional[Dict[str, type]], Optional[str]]:
    """({'adam': Adam, 'adamw': AdamW, 'sgd': SGD}, None), or (None, why they cannot be
    used)."""
    try:
        from gradfast.optim import SGD, Adam, AdamW  # noqa: F401
    except ImportError as exc:
        return None, (f"gradfast.optim.Adam/AdamW/SGD are not importable in this build yet "
                      f"({type(exc).__name__})")
    return {"adam": Adam, "adamw": AdamW, "sgd": SGD}, None


def torch_default_impl(family: str, params: Sequence[torch.Tensor]) -> str:
    """What torch.optim.Adam() picks for these params: 'for-loop', 'foreach' or 'fused'."""
    try:
        from torch.optim.optimizer import _default_to_fused_or_foreach

        fused, foreach = _default_to_fused_or_foreach(list(params), False, False)
    except Exception:  # private API: only a label depends on it
        return "default"
    return "fused" if fused else "foreach" if foreach else "for-loop"


class Side:
    """One side of a pipeline, bound to its own parameters and gradients."""

    def __init__(self, params: List[torch.nn.Parameter], params0: List[torch.Tensor],
                 grads0: List[torch.Tensor]) -> None:
        self.params = params
        self.params0 = params0
        self.grads0 = grads0
        self.last_norm: Optional[torch.Tensor] = None
        self.optimizer: Optional[torch.optim.Optimizer] = None

    def restore_grads(self) -> None:
        grads = [p.grad for p in self.params]
        if hasattr(torch, "_foreach_copy_"):
            torch._foreach_copy_(grads, self.grads0)
        else:  # pragma: no cover - torch < 2.1
            for g, g0 in zip(grads, self.grads0):
                g.copy_(g0)

    def step(self) -> None:  # replaced per pipeline
        raise NotImplementedError

    def close(self) -> None:
        """Drop the optimizer and the step closure (which refers back to this side), so
        reference counting frees their memory at once, without a garbage collection."""
        self.__dict__.pop("step", None)
        self.optimizer = None
        self.last_norm = None


@dataclass(frozen=True)
class Pipeline:
    key: str          # "clip", "adam/fused", ...
    family: str       # "clip", "adam", "adamw"
    variant: str      # torch variant: "", "default", "foreach", "fused"
    label: str        # short label for tables
    torch_desc: str   # what the torch side runs
    gf_bytes: str     # bytes-model key of the gradfast side (roofline.BYTES_PER_FP32_ELEM)
    torch_bytes: str  # bytes-model key of the torch side

    # ---- availability -------------------------------------------------------------------
    def unavailable_reason(self) -> Optional[str]:
        if self.family == "clip":
            return None
        _, why = gradfast_optimizers()
        return why

    # ---- building the two sides ---------------------------------------------------------
    def build(self, side: str, params0: List[torch.Tensor], grads0: List[torch.Tensor],
              buffers: Optional["Buffers"] = None) -> Side:
        """The gradfast or torch side, on fresh copies of params0 with gradients grads0
        (in `buffers`' memory for this side when given)."""
        params = make_params(params0, grads0, buffers.get(side) if buffers else None)
        s = Side(params, params0, grads0)
        if self.family == "clip":
            if side == "gradfast":
                import gradfast

                clip = gradfast.clip_grad_norm_
            else:
                clip = torch.nn.utils.clip_grad_norm_

            def step() -> None:
                s.last_norm = clip(params, MAX_NORM)
        elif side == "gradfast":
            optimizers, why = gradfast_optimizers()
            if optimizers is None:
                raise RuntimeError(why)
            extra = {"momentum": MOMENTUM} if self.family == "sgd" else {}
            opt = optimizers[self.family](params, lr=LR, max_grad_norm=MAX_NORM, **extra)
            s.optimizer = opt

            def step() -> None:
                opt.step()
                s.last_norm = getattr(opt, "grad_norm", None)
        else:
            cls, extra = _TORCH_CLASSES[self.family]
            opt = cls(params, lr=LR, **extra, **VARIANTS[self.variant])
            s.optimizer = opt
            torch_clip = torch.nn.utils.clip_grad_norm_

            def step() -> None:
                s.last_norm = torch_clip(params, MAX_NORM)
                opt.step()
        s.step = step  # type: ignore[method-assign]
        return s

    # ---- correctness ---------------------------------------------------------------------
    @torch.no_grad()
    def check(self, gf: Side, tv: Side, dtype: torch.dtype) -> checks.CheckResult:
        """Compare the two sides, after each ran once from the inputs params0/grads0 of
        `gf`, with torch's algorithm run in float64 on those inputs (see checks.py)."""
        result = checks.CheckResult()
        grads0, params0 = gf.grads0, gf.params0
        norm64 = torch.sqrt(sum(g.to(torch.float64).square().sum() for g in grads0))
        coef64 = torch.clamp(MAX_NORM / (norm64 + 1e-6), max=1.0)
        if gf.last_norm is None or tv.last_norm is None:
            if self.family == "clip":
                result.error = "a side returned no norm"
                return result
        else:
            c = checks.Comparison("norm", dtype)
            c.add(gf.last_norm.reshape(()), tv.last_norm.reshape(()), norm64)
            result.comparisons.append(c)
        if self.family == "clip":
            c = checks.Comparison("grads", dtype)
            for a, b, g0 in zip(gf.params, tv.params, grads0):
                c.add(a.grad, b.grad, g0.to(torch.float64) * coef64)
            result.comparisons.append(c)
            return result
        if self.family == "sgd":
            return self._check_sgd(gf, tv, dtype, coef64, result)
        cp = checks.Comparison("params", dtype, atol=checks.TOLERANCES[dtype]["atol_lr"] * LR)
        cm = checks.Comparison("exp_avg", dtype)
        cv = checks.Comparison("exp_avg_sq", dtype)
        cls = torch.optim.Adam if self.family == "adam" else torch.optim.AdamW
        for a, b, p0, g0 in zip(gf.params, tv.params, params0, grads0):
            try:
                sa = gf.optimizer.state[a]
                ma, va = sa["exp_avg"], sa["exp_avg_sq"]
            except (KeyError, TypeError) as exc:
                result.error = (f"gradfast's optimizer state has no exp_avg/exp_avg_sq per "
                                f"parameter as torch's ({exc!r})")
                return result
            sb = tv.optimizer.state[b]
            # float64 reference: torch's for-loop Adam/AdamW on the clipped gradient.
            ref = torch.nn.Parameter(p0.to(torch.float64))
            ref.grad = g0.to(torch.float64) * coef64
            opt = cls([ref], lr=LR, foreach=False)
            opt.step()
            cp.add(a, b, ref)
            cm.add(ma, sb["exp_avg"], opt.state[ref]["exp_avg"])
            cv.add(va, sb["exp_avg_sq"], opt.state[ref]["exp_avg_sq"])
            del ref, opt
        result.comparisons += [cp, cm, cv]
        return result

    @staticmethod
    def _check_sgd(gf: Side, tv: Side, dtype: torch.dtype, coef64: torch.Tensor,
                   result: checks.CheckResult) -> checks.CheckResult:
        """Params and momentum buffers against torch's for-loop SGD in float64 on the clipped
        gradients (its first step: buf = grad)."""
        cp = checks.Comparison("params", dtype, atol=checks.TOLERANCES[dtype]["atol_lr"] * LR)
        cb = checks.Comparison("momentum_buffer", dtype)
        for a, b, p0, g0 in zip(gf.params, tv.params, gf.params0, gf.grads0):
            try:
                buf_a = gf.optimizer.state[a]["momentum_buffer"]
            except (KeyError, TypeError) as exc:
                result.error = (f"gradfast's optimizer state has no momentum_buffer per "
                                f"parameter as torch's ({exc!r})")
                return result
            ref = torch.nn.Parameter(p0.to(torch.float64))
            ref.grad = g0.to(torch.float64) * coef64
            opt = torch.optim.SGD([ref], lr=LR, momentum=MOMENTUM, foreach=False)
            opt.step()
            cp.add(a, b, ref)
            cb.add(buf_a, tv.optimizer.state[b]["momentum_buffer"],
                   opt.state[ref]["momentum_buffer"])
            del ref, opt
        result.comparisons += [cp, cb]
        return result


_TORCH_CLASSES = {"adam": (torch.optim.Adam, {}), "adamw": (torch.optim.AdamW, {}),
                  "sgd": (torch.optim.SGD, {"momentum": MOMENTUM})}


def _all() -> List[Pipeline]:
    out = [Pipeline("clip", "clip", "", "clip_grad_norm_", "torch.nn.utils.clip_grad_norm_",
                    "clip", "clip")]
    for family, cls in (("adam", "Adam"), ("adamw", "AdamW")):
        for variant, kw in (("default", ""), ("foreach", "foreach=True"),
                            ("fused", "fused=True")):
            torch_bytes = ("clip+fused_adam" if variant == "fused"
                           else f"clip+foreach_{family}")
            out.append(Pipeline(
                key=f"{family}/{variant}", family=family, variant=variant,
                label=f"clip+{cls} vs {cls}({kw.split('=')[0]})",
                torch_desc=f"torch clip_grad_norm_ + torch.optim.{cls}({kw})",
                gf_bytes="fused_clip_adam", torch_bytes=torch_bytes))
    for variant, kw in (("default", ""), ("foreach", ", foreach=True"), ("fused", ", fused=True")):
        out.append(Pipeline(
            key=f"sgd/{variant}", family="sgd", variant=variant,
            label=f"clip+SGD vs SGD({kw[2:].split('=')[0]})",
            torch_desc=f"torch clip_grad_norm_ + torch.optim.SGD(momentum={MOMENTUM}{kw})",
            gf_bytes="fused_clip_sgd",
            torch_bytes="clip+fused_sgd" if variant == "fused" else "clip+foreach_sgd"))
    return out


PIPELINES: Dict[str, Pipeline] = {p.key: p for p in _all()}


def select(names: Optional[Sequence[str]] = None) -> List[Pipeline]:
    """Pipelines by key ('clip', 'adam/fused', ...) or family ('adam'); all by default."""
    if not names:
        return list(PIPELINES.values())
    chosen: List[Pipeline] = []
    for name in names:
        matches = [p for p in PIPELINES.values() if name in (p.key, p.family)]
        if not matches:
            raise ValueError(f"unknown pipeline {name!r}; known: {sorted(PIPELINES)} "
                             f"or a family: clip, adam, adamw, sgd")
        chosen += [m for m in matches if m not in chosen]
    return chosen


class Buffers:
    """Memory for the parameters and gradients of each side, allocated once per workload
    and dtype and reused by every pipeline (fresh allocations of hundreds of MB cost page
    faults, about a second per pipeline on a small VM)."""

    def __init__(self, params0: Sequence[torch.Tensor]) -> None:
        self._like = params0
        self._sides: Dict[str, Tuple[List[torch.Tensor], List[torch.Tensor]]] = {}

    def get(self, side: str) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
        if side not in self._sides:
            self._sides[side] = ([torch.empty_like(p) for p in self._like],
                                 [torch.empty_like(p) for p in self._like])
        return self._sides[side]


def make_params(params0: Sequence[torch.Tensor], grads0: Sequence[torch.Tensor],
                memory: Optional[Tuple[List[torch.Tensor], List[torch.Tensor]]] = None
                ) -> List[torch.nn.Parameter]:
    """Fresh leaf parameters holding copies of params0, each with a gradient copied from
    grads0; in the given (params, grads) memory when there is one."""
    params = []
    for i, (p0, g0) in enumerate(zip(params0, grads0)):
        if memory is None:
            data, grad = p0.clone(), g0.clone()
        else:
            data, grad = memory[0][i].copy_(p0), memory[1][i].copy_(g0)
        p = torch.nn.Parameter(data)
        p.grad = grad
        params.append(p)
    return params
