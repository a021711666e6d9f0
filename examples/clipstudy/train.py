"""One training run: a (task, model, method, seed) config in, a JSON-able result out.

The seed fixes the model's initialisation and the training batches, so the methods of one
seed see the same data and start from the same weights (paired comparisons). The run is
scored once, after the last step, on the task's fixed validation and test sets.
"""
from __future__ import annotations

import math
import time

import torch

from .methods import build
from .models import MODEL_DEFAULTS, make_model
from .tasks import held_out, make_task

# A run is "diverged" when its final error is not finite or stays above this fraction of
# the chance error (the error of a model that ignores its input): it never left chance.
DIVERGED_FRACTION = 0.9


def run_one(config: dict) -> dict:
    torch.set_num_threads(1)  # one run per core
    torch.set_flush_denormal(True)
    task = make_task(config["task"])
    cell, seed = config["model"], config["seed"]
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = make_model(cell, task, config["hidden"])
    params = list(model.parameters())
    lr = MODEL_DEFAULTS[cell]["lr"]
    opt, step = build(config["method"], params, lr)
    nonfinite_steps, norms = 0, []
    start, cpu_start = time.perf_counter(), time.process_time()
    for _ in range(config["steps"]):
        x, y = task.batch(config["batch"], gen)
        loss = task.loss(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        total = step()
        if total is not None:
            norms.append(total.detach().float().reshape(()))
        norms_loss = loss.detach()
        nonfinite_steps += 0 if norms_loss.isfinite() else 1  # a CPU tensor: no device sync
    train_time = time.perf_counter() - start
    with torch.no_grad():
        scores = {}
        for split in ("validation", "test"):
            x, y = held_out(task, config["eval_size"], split)
            scores[split] = task.score(model(x), y)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    val_error, val_acc = scores["validation"]
    test_error, test_acc = scores["test"]
    norms_t = torch.stack(norms) if norms else torch.empty(0)
    finite = norms_t[torch.isfinite(norms_t)]
    diverged = (not math.isfinite(test_error)) or test_error > DIVERGED_FRACTION * task.chance
    return {
        "val_error": _clean(val_error), "val_accuracy": val_acc,
        "test_error": _clean(test_error), "test_accuracy": test_acc,
        "chance_error": task.chance, "diverged": bool(diverged),
        "nonfinite_loss_steps": nonfinite_steps,
        "nonfinite_norm_steps": int((~torch.isfinite(norms_t)).sum()),
        "max_grad_norm_seen": _clean(float(finite.max())) if finite.numel() else None,
        "median_grad_norm": _clean(float(finite.median())) if finite.numel() else None,
        "train_time_s": train_time, "wall_time_s": wall,
        # CPU time of this (single-threaded) run: what it would take on an idle core.
        "cpu_time_s": cpu,
    }


def _clean(v: float):
    """JSON has no inf/NaN: non-finite values are stored as strings."""
    return v if math.isfinite(v) else str(v)
