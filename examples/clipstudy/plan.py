"""Which runs the study makes: the workloads and sizes of each mode, the run configs, and
the choice of the "hand-tuned" threshold on the validation split.

Phase 1 runs every comparison method (including the fixed-threshold sweep) for every
(task, model, seed). Phase 2 then runs the fused optimizers at the threshold whose mean
validation error over the seeds was lowest, per (task, model): the test split never
takes part in a choice.
"""
from __future__ import annotations

import hashlib
import json
from typing import Dict, List, Tuple

from .methods import comparison_methods, fused_methods
from .stats import mean
from .train import DIVERGED_FRACTION

# Bump when a change alters what a cached run would produce.
STUDY_VERSION = 1

MODES = {
    # Sized so that the whole study fits in 30 minutes on a 2-core CPU (see README).
    "default": {
        "tasks": [{"name": "adding", "length": 200}, {"name": "adding", "length": 400},
                  {"name": "copy", "delay": 50, "symbols": 5, "alphabet": 4}],
        "models": ["rnn", "lstm"], "seeds": [0, 1, 2, 3, 4],
        # An LSTM step costs ~1/3 of a ReLU-RNN step on a CPU (oneDNN's fused cell), and
        # the LSTM needs more steps to leave chance at batch 16: it gets 2.4x the RNN's.
        # ~14 CPU-minutes in all: about 7 minutes on 2 idle cores (the committed run at
        # de242df: 7.2 minutes, see the results' header).
        "steps": {"rnn": 250, "lstm": 600}, "batch": 16, "hidden": 32, "eval_size": 512,
    },
    # The CI check of the pipeline: every task, model and method, tiny and short.
    "quick": {
        "tasks": [{"name": "adding", "length": 20}, {"name": "adding", "length": 40},
                  {"name": "copy", "delay": 10, "symbols": 3, "alphabet": 4}],
        "models": ["rnn", "lstm"], "seeds": [0, 1],
        "steps": {"rnn": 12, "lstm": 12}, "batch": 8, "hidden": 8, "eval_size": 64,
    },
}


def config_key(config: dict) -> str:
    blob = json.dumps({"v": STUDY_VERSION, **config}, sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


def group_key(config: dict) -> Tuple[str, str]:
    return json.dumps(config["task"], sort_keys=True), config["model"]


def configs(mode: dict, methods: List[dict]) -> List[dict]:
    out = []
    for task in mode["tasks"]:
        for model in mode["models"]:
            for method in methods:
                for seed in mode["seeds"]:
                    out.append({"task": task, "model": model, "method": method, "seed": seed,
                                "steps": mode["steps"][model], "batch": mode["batch"],
                                "hidden": mode["hidden"], "eval_size": mode["eval_size"]})
    return out


def phase1(mode: dict, extra_methods: List[dict] = ()) -> List[dict]:
    return configs(mode, comparison_methods() + list(extra_methods))


def scored_error(result: dict, key: str) -> float:
    """An error for statistics: a non-finite or above-chance error counts as chance (the run
    diverged; how far above chance a blown-up model lands says nothing)."""
    v, chance = result[key], result["chance_error"]
    return chance if isinstance(v, str) or v > chance else v


def tuned_thresholds(runs: List[dict]) -> Dict[Tuple[str, str], dict]:
    """Per (task, model): the fixed threshold with the lowest mean validation error."""
    by: Dict[Tuple[str, str], Dict[float, List[float]]] = {}
    for r in runs:
        if r["config"]["method"]["kind"] != "fixed":
            continue
        c = r["config"]["method"]["max_norm"]
        by.setdefault(group_key(r["config"]), {}).setdefault(c, []).append(
            scored_error(r["result"], "val_error"))
    out = {}
    for g, per in by.items():
        means = {c: mean(v) for c, v in per.items()}
        best = min(sorted(means), key=lambda c: means[c])
        out[g] = {"max_norm": best, "val_error_by_threshold": means}
    return out


def phase2(mode: dict, tuned: Dict[Tuple[str, str], dict]) -> List[dict]:
    out = []
    for config in configs(mode, fused_methods()):
        choice = tuned.get(group_key(config))
        if choice is None:
            continue
        method = dict(config["method"], max_norm=choice["max_norm"])
        out.append(dict(config, method=method))
    return out


__all__ = ["MODES", "config_key", "configs", "phase1", "phase2", "tuned_thresholds",
           "scored_error", "DIVERGED_FRACTION"]
