"""Parsing of norm_type into the native core's NormKind codes."""
from __future__ import annotations

import math

L2, L1, INF, NEG_INF, L0, LP = range(6)


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
