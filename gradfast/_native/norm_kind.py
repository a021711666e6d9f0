"""Parsing of norm_type into the native core's NormKind codes."""
from __future__ import annotations

import math

from .library import _C

# The core's NormKind codes, as plain ints (what the entry points and custom ops take).
_KINDS = {name: int(kind) for name, kind in _C.NormKind.__members__.items()}
L2, L1, INF, NEG_INF, L0, LP = (_KINDS[n] for n in ("L2", "L1", "Inf", "NegInf", "L0", "Lp"))


def parse_norm_type(norm_type) -> float:
    """float(norm_type), as torch does: accepts floats, ints and strings such as 'inf'."""
    return float(norm_type)


def norm_kind(p: float):
    """The NormKind code for order p, or None when only torch's own path handles it."""
    if p == 2.0:
        return L2
    if p == 1.0:
        return L1
    if p == math.inf:
        return INF
    if p == -math.inf:
        return NEG_INF
    if p == 0.0:
        return L0
    if p > 0.0 and math.isfinite(p):
        return LP
    return None  # negative or NaN orders: delegated to torch


def empty_tensor_error(p: float) -> str:
    """torch 2.13's message for an infinity norm over an empty tensor."""
    if p == math.inf:
        return ("_foreach_norm cannot compute the infinity norm on an empty tensor because "
                "the operation does not have an identity")
    return ("linalg.vector_norm cannot compute the -inf norm on an empty tensor because "
            "the operation does not have an identity")


def check_empty(tensors, p: float) -> None:
    """torch's error for an infinity norm over a list holding an empty tensor."""
    if p in (math.inf, -math.inf) and any(t.numel() == 0 for t in tensors):
        raise RuntimeError(empty_tensor_error(p))
