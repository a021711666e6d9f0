"""The long-range tasks of the study, generated locally (no downloads).

Each task turns a generator into a training batch, and scores a model's output on a fixed
held-out set: an error (lower is better), an accuracy (higher is better) and the error a
model that ignores its input would get ("chance"), used to call a run diverged.

adding   Hochreiter & Schmidhuber's adding problem, as in examples/rnn_exploding.py: (value,
         marker) pairs, two markers (one per half), the answer is the sum of the two marked
         values. Trained on the running sum at every step (so that it is learnable in a few
         hundred CPU steps); scored on the last step only. error = MSE of the final sum,
         chance = 1/6 (the variance of the sum of two U(0,1)), accuracy = fraction of
         sequences answered within 0.04.
copy     the copy-memory task (Hochreiter & Schmidhuber 1997; Arjovsky et al. 2016): S
         symbols from an alphabet of K, then `delay` blanks, a delimiter, S more blanks, and
         the model must output the S symbols after the delimiter. Trained and scored on the
         S output positions only. error = cross-entropy in nats per symbol, chance = ln K,
         accuracy = per-symbol accuracy (chance 1/K).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Tuple

import torch
from torch import nn

# Held-out sets are fixed per task and disjoint in seed from every training stream.
VALIDATION_SEED, TEST_SEED = 4321, 1234


@dataclass(frozen=True)
class Adding:
    length: int
    tolerance: float = 0.04

    name = "adding"
    in_dim, out_dim = 2, 1

    @property
    def label(self) -> str:
        return f"adding T={self.length}"

    @property
    def chance(self) -> float:
        return 1.0 / 6.0

    def batch(self, size: int, gen: torch.Generator) -> Tuple[torch.Tensor, torch.Tensor]:
        T = self.length
        values = torch.rand(size, T, generator=gen)
        first = torch.randint(0, T // 2, (size,), generator=gen)
        second = torch.randint(T // 2, T, (size,), generator=gen)
        markers = torch.zeros(size, T)
        rows = torch.arange(size)
        markers[rows, first] = 1.0
        markers[rows, second] = 1.0
        x = torch.stack([values, markers], dim=-1)
        return x, torch.cumsum(values * markers, dim=1)  # target: the running sum

    def loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return nn.functional.mse_loss(out.squeeze(-1), y)

    def score(self, out: torch.Tensor, y: torch.Tensor) -> Tuple[float, float]:
        pred, final = out[:, -1, 0], y[:, -1]
        error = nn.functional.mse_loss(pred, final).item()
        accuracy = ((pred - final).abs() < self.tolerance).float().mean().item()
        return error, accuracy


@dataclass(frozen=True)
class Copy:
    delay: int
    symbols: int = 5
    alphabet: int = 4

    name = "copy"

    @property
    def in_dim(self) -> int:
        return self.alphabet + 2  # data symbols, blank, delimiter (one-hot)

    @property
    def out_dim(self) -> int:
        return self.alphabet

    @property
    def label(self) -> str:
        return f"copy S={self.symbols} delay={self.delay}"

    @property
    def chance(self) -> float:
        return math.log(self.alphabet)

    def batch(self, size: int, gen: torch.Generator) -> Tuple[torch.Tensor, torch.Tensor]:
        S, K = self.symbols, self.alphabet
        T = 2 * S + self.delay + 1
        data = torch.randint(0, K, (size, S), generator=gen)
        codes = torch.full((size, T), K, dtype=torch.int64)  # K = blank
        codes[:, :S] = data
        codes[:, S + self.delay] = K + 1  # the delimiter: "recall now"
        x = nn.functional.one_hot(codes, K + 2).float()
        return x, data

    def _outputs(self, out: torch.Tensor) -> torch.Tensor:
        return out[:, -self.symbols:, :]  # (batch, S, K): the S steps after the delimiter

    def loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = self._outputs(out)
        return nn.functional.cross_entropy(logits.reshape(-1, self.alphabet), y.reshape(-1))

    def score(self, out: torch.Tensor, y: torch.Tensor) -> Tuple[float, float]:
        logits = self._outputs(out)
        error = self.loss(out, y).item()
        accuracy = (logits.argmax(-1) == y).float().mean().item()
        return error, accuracy


def make_task(spec: dict):
    """A task from its JSON spec: {"name": "adding", "length": T} or {"name": "copy", ...}."""
    kind = spec["name"]
    args = {k: v for k, v in spec.items() if k != "name"}
    if kind == "adding":
        return Adding(**args)
    if kind == "copy":
        return Copy(**args)
    raise ValueError(f"unknown task {kind!r}")


def held_out(task, size: int, split: str):
    """The fixed validation or test set of a task (same for every run, method and seed)."""
    seed = {"validation": VALIDATION_SEED, "test": TEST_SEED}[split]
    return task.batch(size, torch.Generator().manual_seed(seed))
