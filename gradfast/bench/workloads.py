"""Workloads: the gradient shapes of real models, generated on the spot (nothing downloaded).

Each workload is a list of parameter shapes. The bench fills the parameters with N(0, 0.02^2)
(GPT-2's initialisation) and the gradients with Gaussian noise scaled so that their global
L2 norm is GRAD_NORM (5.0), so clipping at max_norm=1.0 is active, as it is when a
training run needs it.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch

Shape = Tuple[int, ...]

# Global L2 norm of the generated gradients: above max_norm=1.0, so the clip is active.
GRAD_NORM = 5.0
PARAM_STD = 0.02


@dataclass(frozen=True)
class Workload:
    name: str
    description: str
    shapes: Tuple[Shape, ...]

    @property
    def n_tensors(self) -> int:
        return len(self.shapes)

    @property
    def n_elems(self) -> int:
        total = 0
        for shape in self.shapes:
            n = 1
            for d in shape:
                n *= d
            total += n
        return total


def _lstm(input_size: int, hidden: int, layers: int) -> List[Shape]:
    shapes: List[Shape] = []
    for layer in range(layers):
        in_size = input_size if layer == 0 else hidden
        shapes += [(4 * hidden, in_size), (4 * hidden, hidden), (4 * hidden,), (4 * hidden,)]
    return shapes


def _gpt2(d_model: int, layers: int, vocab: int = 50257, ctx: int = 1024) -> List[Shape]:
    """HF GPT-2 parameter order: wte, wpe, 12 tensors per block, ln_f (weight tied to wte)."""
    d = d_model
    shapes: List[Shape] = [(vocab, d), (ctx, d)]
    for _ in range(layers):
        shapes += [
            (d,), (d,),                # ln_1
            (d, 3 * d), (3 * d,),      # attn.c_attn
            (d, d), (d,),              # attn.c_proj
            (d,), (d,),                # ln_2
            (d, 4 * d), (4 * d,),      # mlp.c_fc
            (4 * d, d), (d,),          # mlp.c_proj
        ]
    shapes += [(d,), (d,)]             # ln_f
    return shapes


def _many_small(n_layers: int = 1000, lo: int = 64, hi: int = 218, seed: int = 0) -> List[Shape]:
    """n_layers Linear layers (weight + bias) of random widths in [lo, hi]: 2 * n_layers tensors."""
    rng = random.Random(seed)
    shapes: List[Shape] = []
    for _ in range(n_layers):
        out_f, in_f = rng.randint(lo, hi), rng.randint(lo, hi)
        shapes += [(out_f, in_f), (out_f,)]
    return shapes


def _lstm_lm() -> List[Shape]:
    """The 14.5M-parameter LSTM language model: embedding, 2 LSTM layers of 512, decoder."""
    return [(10000, 512)] + _lstm(512, 512, 2) + [(10000, 512), (10000,)]


WORKLOADS: Dict[str, Workload] = {
    w.name: w
    for w in [
        Workload("small_lstm", "1-layer LSTM, input 128, hidden 256", tuple(_lstm(128, 256, 1))),
        Workload("lstm_lm",
                 "LSTM LM: embedding 10000x512, 2 LSTM layers of 512, decoder 512->10000",
                 tuple(_lstm_lm())),
        Workload("many_small", "1000 Linear layers of widths 64..218 (weight + bias)",
                 tuple(_many_small())),
        Workload("gpt2_small", "GPT-2 small: d=768, 12 layers, vocab 50257",
                 tuple(_gpt2(768, 12))),
        Workload("gpt2_medium", "GPT-2 medium: d=1024, 24 layers, vocab 50257",
                 tuple(_gpt2(1024, 24))),
        Workload("gpt_1b", "GPT-2-style 1B: d=2048, 18 layers, vocab 50257, ctx 2048",
                 tuple(_gpt2(2048, 18, ctx=2048))),
    ]
}

# Which workloads run by default, per device and mode.
_SETS = {
    ("cpu", "quick"): ["small_lstm", "lstm_lm"],
    ("cpu", "default"): ["small_lstm", "lstm_lm", "many_small"],
    ("cpu", "full"): ["small_lstm", "lstm_lm", "many_small", "gpt2_small"],
    ("cuda", "quick"): ["small_lstm", "lstm_lm", "gpt2_small"],
    ("cuda", "default"): ["small_lstm", "lstm_lm", "gpt2_small", "many_small", "gpt_1b"],
    ("cuda", "full"): ["small_lstm", "lstm_lm", "gpt2_small", "gpt2_medium", "many_small",
                       "gpt_1b"],
}


def select(device_type: str, mode: str, names: Optional[Sequence[str]] = None) -> List[Workload]:
    """The workloads to run: the named ones, or the default set of (device, mode)."""
    if names:
        unknown = [n for n in names if n not in WORKLOADS]
        if unknown:
            raise ValueError(f"unknown workload(s) {unknown}; known: {sorted(WORKLOADS)}")
        return [WORKLOADS[n] for n in names]
    return [WORKLOADS[n] for n in _SETS[(device_type, mode)]]


def make_tensors(
    workload: Workload, dtype: torch.dtype, device: torch.device, seed: int = 0
) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
    """(initial parameters, gradients) of the workload, deterministic for a seed.

    Values are drawn in fp32 one tensor at a time and rounded to dtype, so a bf16 run sees
    the rounded fp32 values and the peak memory is one fp32 tensor over the result.
    """
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    grad_std = GRAD_NORM / workload.n_elems ** 0.5
    params, grads = [], []
    for shape in workload.shapes:
        p = torch.randn(shape, generator=gen, device=device, dtype=torch.float32)
        params.append(p.mul_(PARAM_STD).to(dtype))
        g = torch.randn(shape, generator=gen, device=device, dtype=torch.float32)
        grads.append(g.mul_(grad_std).to(dtype))
    return params, grads
