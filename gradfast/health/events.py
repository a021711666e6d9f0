"""What GradMonitor reports: GradEvent records, the GradientHealthWarning category, and
the one function that publishes an event (events list, logger, warning once per kind and
layer)."""
from __future__ import annotations

import logging
import math
import sys
import warnings
from dataclasses import dataclass
from typing import List, Set, Tuple

__all__ = ["GradEvent", "GradientHealthWarning", "publish", "fmt"]

logger = logging.getLogger("gradfast.health")


class GradientHealthWarning(UserWarning):
    """Issued by GradMonitor the first time a kind of problem is seen in a layer."""


@dataclass(frozen=True)
class GradEvent:
    """One problem found by GradMonitor.

    kind: 'nonfinite' (an inf/NaN norm), 'exploding' (global norm above explode_factor
    times its running median) or 'vanishing' (one layer's norm far below the others' or
    its own history). layers: the layers concerned ('nonfinite': those with a non-finite
    norm; 'exploding': those above explode_factor times their own median, empty when no
    single layer stands out; 'vanishing': the one layer). value and threshold: the norm that
    triggered the event and the bound it crossed (for 'vanishing' against the other
    layers, both are scale-free RMS values, norm / numel ** (1 / norm_type)).
    """

    step: int
    kind: str
    layers: Tuple[str, ...]
    value: float
    threshold: float
    message: str


def fmt(x: float) -> str:
    """A norm for a message: 3 significant digits, inf/nan spelled out."""
    if x != x:
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return f"{x:.3g}"


def _user_stacklevel() -> int:
    """The warnings.warn stacklevel of the first caller outside gradfast.health (and
    torch.no_grad's wrapper), so the warning points at the user's training loop."""
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_globals.get("__name__", "").startswith(
            ("gradfast.health", "torch.utils._contextlib", "gradfast.optim")):
        frame, level = frame.f_back, level + 1
    return level


def publish(events: List[GradEvent], warned: Set, warn: bool, step: int, kind: str,
            layers, value: float, threshold: float, message: str) -> None:
    """Append the event, log it at WARNING level, and warn the first time (kind, layers)
    is seen when ``warn``."""
    text = f"GradMonitor step {step}: {message}"
    events.append(GradEvent(step, kind, tuple(layers), float(value), float(threshold), text))
    logger.warning(text)
    if warn:
        key = (kind, tuple(layers))
        if key not in warned:
            warned.add(key)
            warnings.warn(text + " (reported once per kind and layer; all events are in "
                          "monitor.events and the 'gradfast.health' logger)",
                          GradientHealthWarning, stacklevel=_user_stacklevel())
