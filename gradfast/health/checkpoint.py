"""Threshold objects (``max_grad_norm=gradfast.AutoClip(...)``) in optimizer checkpoints.

An optimizer's ``state_dict()`` must load with ``torch.load(weights_only=True)`` (torch's
default, and what Lightning, Hugging Face's Trainer and accelerate use to resume), which
accepts tensors, numbers, strings and containers of them, never a Python object. So a
param group's threshold object is saved as its own ``state_dict()`` under a tag, and on
load the saved history goes back INTO the object the optimizer was built with: the user's
``AutoClip`` keeps its identity (``clipper.last_threshold`` and friends stay live).
"""
from __future__ import annotations

from typing import Any, Dict, List

__all__ = ["pack_thresholds", "unpack_thresholds"]

_TAG = "gradfast_threshold"  # key marking a packed threshold object in a param group


def _is_threshold_object(value) -> bool:
    return (value is not None and not isinstance(value, (int, float))
            and callable(getattr(value, "threshold", None)))


def pack_thresholds(groups: List[Dict[str, Any]]) -> None:
    """In a state_dict's param_groups (copies, modified in place): each threshold object
    becomes ``{_TAG: class name, "state": its state_dict()}``."""
    for group in groups:
        value = group.get("max_grad_norm")
        if _is_threshold_object(value):
            if not callable(getattr(value, "state_dict", None)):
                raise TypeError(
                    f"max_grad_norm={type(value).__name__} has no state_dict(), so the "
                    "optimizer's state_dict cannot hold it; give it state_dict() / "
                    "load_state_dict() like gradfast.AutoClip")
            group["max_grad_norm"] = {_TAG: type(value).__name__, "state": value.state_dict()}


def unpack_thresholds(groups: List[Dict[str, Any]], before: List[Any]) -> None:
    """After torch's load_state_dict put the saved groups in place: a packed threshold is
    loaded into the object the same group held before (``before[i]``) when that object can
    load it, else into a new AutoClip."""
    from .autoclip import AutoClip

    for group, old in zip(groups, before):
        saved = group.get("max_grad_norm")
        if not (isinstance(saved, dict) and _TAG in saved):
            continue
        if _is_threshold_object(old) and callable(getattr(old, "load_state_dict", None)):
            target = old
        elif saved[_TAG] == AutoClip.__name__:
            target = AutoClip()
        else:
            raise TypeError(
                f"the checkpoint's max_grad_norm is a {saved[_TAG]}; build the optimizer with "
                "one (max_grad_norm=...) so its state can be loaded into it")
        target.load_state_dict(saved["state"])
        group["max_grad_norm"] = target
