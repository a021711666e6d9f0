"""The clipping methods compared, as JSON specs, and the optimiser step each one makes.

Every comparison method runs torch.optim.Adam with gradfast's standalone clipping functions
(one Adam implementation for all of them, so the methods differ only in their clipping);
the two "fused" methods clip inside a gradfast optimizer's step at the threshold the sweep
chose on the validation split. A spec's "max_norm": "tuned" is replaced by that threshold
before the run (see plan.resolve_tuned).
"""
from __future__ import annotations

import inspect
from typing import Callable, List, Optional, Tuple

import torch

import gradfast

THRESHOLDS = [0.1, 0.3, 1.0, 3.0, 10.0]  # two decades, geometric steps of ~3
AGC_FACTORS = [0.01, 0.05, 0.2]
SGD_MOMENTUM = 0.9
# SGD+momentum needs its own learning rate: three multiples of the model's Adam lr (two
# decades), the one reported being the one with the lowest mean validation error.
SGD_LR_FACTORS = [1.0, 10.0, 100.0]

# AutoClip's paper defaults (gradfast.AutoClip()), and the example's settings.
AUTOCLIP_DEFAULTS = {"kind": "autoclip", "percentile": 10.0, "history": 1000,
                     "min_history": 1, "initial_max_norm": "inf", "tag": "defaults"}
AUTOCLIP_EXAMPLE = {"kind": "autoclip", "percentile": 10.0, "history": 1000,
                    "min_history": 10, "initial_max_norm": 1.0, "tag": "example"}


def comparison_methods() -> List[dict]:
    """The methods that run first; fixed-threshold runs also feed the validation choice."""
    out = [{"kind": "none"}]
    out += [{"kind": "fixed", "max_norm": c} for c in THRESHOLDS]
    out += [dict(AUTOCLIP_DEFAULTS), dict(AUTOCLIP_EXAMPLE)]
    out += [{"kind": "agc", "clip_factor": f} for f in AGC_FACTORS]
    return out


def fused_methods() -> List[dict]:
    """Run after the sweep, at its validation-chosen threshold."""
    return [{"kind": "fused_adam", "max_norm": "tuned"}] + [
        {"kind": "sgd", "max_norm": "tuned", "momentum": SGD_MOMENTUM, "lr_factor": f}
        for f in SGD_LR_FACTORS]


def label(spec: dict) -> str:
    kind = spec["kind"]
    if kind == "none":
        return "no clipping"
    if kind == "fixed":
        return f"fixed {spec['max_norm']:g}"
    if kind == "autoclip":
        tag = spec.get("tag")
        warm = ("" if spec["min_history"] <= 1 else
                f", warm-up {spec['min_history']} @ {float(spec['initial_max_norm']):g}")
        return (f"AutoClip {tag} (p{spec['percentile']:g}, hist {spec['history']}{warm})"
                if tag else f"AutoClip p{spec['percentile']:g}, hist {spec['history']}{warm}")
    if kind == "agc":
        return f"AGC {spec['clip_factor']:g}"
    if kind == "fused_adam":
        return f"fused Adam max_grad_norm={_num(spec['max_norm'])}"
    if kind == "sgd":
        return (f"SGD+momentum lr x{spec['lr_factor']:g} "
                f"max_grad_norm={_num(spec['max_norm'])}")
    raise ValueError(kind)


def _num(v) -> str:
    return v if isinstance(v, str) else f"{v:g}"


def sgd_implementation() -> str:
    """Which SGD the 'sgd' method runs, for the outputs (the committed study's earliest runs
    used torch.optim.SGD + gradfast.clip_grad_norm_, before gradfast.optim.SGD existed)."""
    return "gradfast.optim.SGD(max_grad_norm=)"


def _gradfast_adam():
    adam = getattr(gradfast.optim, "Adam", None)
    if adam is None or "max_grad_norm" not in inspect.signature(adam).parameters:
        raise RuntimeError("gradfast.optim.Adam with max_grad_norm= is required")
    return adam


def make_autoclip(spec: dict) -> gradfast.AutoClip:
    return gradfast.AutoClip(percentile=spec["percentile"], history=spec["history"],
                             min_history=spec["min_history"],
                             initial_max_norm=float(spec["initial_max_norm"]))


def build(spec: dict, params: List[torch.Tensor], lr: float
          ) -> Tuple[torch.optim.Optimizer, Callable[[], Optional[torch.Tensor]]]:
    """The optimiser and a step() that clips (when the method does), steps, and returns the
    pre-clip global norm as a tensor (None when the method does not compute one)."""
    kind = spec["kind"]
    if kind == "fused_adam":
        opt = _gradfast_adam()(params, lr=lr, max_grad_norm=spec["max_norm"])

        def step():
            opt.step()
            return opt.grad_norm
        return opt, step
    if kind == "sgd":
        opt = gradfast.optim.SGD(params, lr=lr * spec["lr_factor"], momentum=spec["momentum"],
                                 max_grad_norm=spec["max_norm"])

        def step():
            opt.step()
            return opt.grad_norm
        return opt, step

    opt = torch.optim.Adam(params, lr=lr)
    if kind == "none":
        def step():
            total = gradfast.get_total_norm([p.grad for p in params]) if _HAS_TOTAL else None
            opt.step()
            return total
    elif kind == "fixed":
        def step():
            total = gradfast.clip_grad_norm_(params, spec["max_norm"])
            opt.step()
            return total
    elif kind == "autoclip":
        clipper = make_autoclip(spec)

        def step():
            total = clipper(params)
            opt.step()
            return total
    elif kind == "agc":
        def step():
            gradfast.adaptive_clip_grad_(params, spec["clip_factor"])
            opt.step()
            return None
    else:
        raise ValueError(f"unknown method {kind!r}")
    return opt, step


_HAS_TOTAL = hasattr(gradfast, "get_total_norm")


# The targeted AutoClip sweep (--autoclip-sweep): one knob changed from the defaults at a
# time, to see which of warm-up, percentile and history length explains a gap.
AUTOCLIP_SWEEP = [
    dict(AUTOCLIP_DEFAULTS, tag=None, percentile=5.0),
    dict(AUTOCLIP_DEFAULTS, tag=None, percentile=25.0),
    dict(AUTOCLIP_DEFAULTS, tag=None, percentile=50.0),
    dict(AUTOCLIP_DEFAULTS, tag=None, history=100),
    dict(AUTOCLIP_DEFAULTS, tag=None, min_history=10, initial_max_norm=0.1),
    dict(AUTOCLIP_DEFAULTS, tag=None, min_history=100, initial_max_norm=1.0),
    dict(AUTOCLIP_DEFAULTS, tag=None, min_history=100, initial_max_norm=0.1),
]
# The proposed default, from the sweep above (see the README): a warm-up of 100 steps at a
# low threshold (0.1, below the typical norm: with Adam, clipping every step to a constant
# norm is harmless, while one unclipped exploding step inflates Adam's second moment for
# thousands of steps), then the paper's 10th percentile. Run by every mode.
AUTOCLIP_PROPOSED = dict(AUTOCLIP_DEFAULTS, tag="proposed", min_history=100,
                         initial_max_norm=0.1)
AUTOCLIP_EXTRA: list = [AUTOCLIP_PROPOSED]
