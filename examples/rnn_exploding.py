"""Exploding gradients in recurrent networks, and four ways of training through them.

A vanilla (tanh) RNN and an LSTM learn the adding problem (Hochreiter & Schmidhuber 1997):
each input is a sequence of T >= 200 steps of (value, marker) pairs, values uniform in
[0, 1], exactly two markers set, and the target is the sum of the two marked values. A
model that ignores its input can at best predict 1.0, a mean squared error of 1/6 ~ 0.167.

The recurrent weights are initialised large (orthogonal times a gain > 1), in the regime
where backpropagation through 200 steps multiplies the gradient by a growing factor at
each step: the gradient norm is orders of magnitude above its typical value and spikes
from batch to batch. Each model is trained with Adam and:

    none      no clipping
    fixed     gradfast.clip_grad_norm_(params, max_norm=1.0)
    autoclip  gradfast.AutoClip(percentile=10): clip at the 10th percentile of past norms
    agc       gradfast.adaptive_clip_grad_(params, clip_factor): unit-wise AGC

Adam is gradfast.optim.Adam (clipping through its max_grad_norm=...) when the installed
gradfast has it, else torch.optim.Adam with gradfast's clipping functions; the script
prints which. Everything runs on the CPU.

    python examples/rnn_exploding.py            # full run, < 3 minutes
    python examples/rnn_exploding.py --short    # smoke test, < 30 seconds
"""
from __future__ import annotations

import argparse
import inspect
import math
import os
import time
from typing import Dict, List

import torch
from torch import nn

import gradfast

METHODS = ["none", "fixed", "autoclip", "agc"]
CELLS = ["rnn", "lstm"]


# ---- the task ---------------------------------------------------------------------------
def adding_batch(batch: int, length: int, gen: torch.Generator):
    values = torch.rand(batch, length, generator=gen)
    first = torch.randint(0, length // 2, (batch,), generator=gen)
    second = torch.randint(length // 2, length, (batch,), generator=gen)
    markers = torch.zeros(batch, length)
    rows = torch.arange(batch)
    markers[rows, first] = 1.0
    markers[rows, second] = 1.0
    x = torch.stack([values, markers], dim=-1)
    y = (values * markers).sum(dim=1, keepdim=True)
    return x, y


class Recurrent(nn.Module):
    def __init__(self, cell: str, hidden: int, gain: float, forget_bias: float = 0.0) -> None:
        super().__init__()
        if cell == "rnn":
            self.rnn = nn.RNN(2, hidden, nonlinearity="tanh", batch_first=True)
        else:
            self.rnn = nn.LSTM(2, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 1)
        # Exploding initialisation: every recurrent block orthogonal, scaled by `gain`.
        with torch.no_grad():
            w = self.rnn.weight_hh_l0
            for block in w.split(hidden, dim=0):
                nn.init.orthogonal_(block, gain=gain)
            if cell == "lstm":  # gates are (input, forget, cell, output)
                self.rnn.bias_hh_l0[hidden:2 * hidden] += forget_bias

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


# ---- optimiser and clipping -------------------------------------------------------------
def gradfast_adam():
    """gradfast.optim.Adam when it exists and takes max_grad_norm, else None."""
    adam = getattr(getattr(gradfast, "optim", None), "Adam", None)
    if adam is None:
        return None
    try:
        if "max_grad_norm" not in inspect.signature(adam).parameters:
            return None
    except (TypeError, ValueError):
        return None
    return adam


class Trainer:
    """One optimiser step per call; returns the pre-clip global norm and a clip flag
    (both tensors, so the loop never waits on a value)."""

    def __init__(self, method: str, params: List[torch.Tensor], lr: float, fused_adam,
                 max_norm: float, percentile: float, clip_factor: float) -> None:
        self.method, self.params = method, params
        self.max_norm, self.clip_factor = max_norm, clip_factor
        self.autoclip = gradfast.AutoClip(percentile=percentile) if method == "autoclip" else None
        if fused_adam is not None:
            limit = {"fixed": max_norm, "autoclip": self.autoclip}.get(method)
            self.opt = fused_adam(params, lr=lr, max_grad_norm=limit)
            self.clip_in_optimizer = True
        else:
            self.opt = torch.optim.Adam(params, lr=lr)
            self.clip_in_optimizer = False

    def step(self):
        params = self.params
        clipped = torch.zeros((), dtype=torch.bool)
        if self.method == "agc":
            total = gradfast.get_total_norm([p.grad for p in params])
            clipped = gradfast.adaptive_clip_grad_(params, self.clip_factor) > 0
        elif self.clip_in_optimizer:
            total = gradfast.get_total_norm([p.grad for p in params])
            self.opt.step()
            if self.method == "fixed":
                clipped = total > self.max_norm
            elif self.method == "autoclip":
                clipped = total > self.autoclip.last_threshold
            return total, clipped
        elif self.method == "none":
            total = gradfast.get_total_norm([p.grad for p in params])
        elif self.method == "fixed":
            total = gradfast.clip_grad_norm_(params, self.max_norm)
            clipped = total > self.max_norm
        else:  # autoclip
            total = self.autoclip(params)
            clipped = total > self.autoclip.last_threshold
        self.opt.step()
        return total, clipped


# ---- one run ----------------------------------------------------------------------------
def run(cell: str, method: str, args, fused_adam) -> Dict:
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    gain = args.gain if cell == "rnn" else args.lstm_gain
    model = Recurrent(cell, args.hidden, gain, args.forget_bias)
    params = [p for p in model.parameters()]
    trainer = Trainer(method, params, args.lr, fused_adam, args.max_norm, args.percentile,
                      args.clip_factor)
    test_x, test_y = adding_batch(1000, args.length, torch.Generator().manual_seed(1234))
    losses, norms, clips = [], [], []
    start = time.perf_counter()
    for _ in range(args.steps):
        x, y = adding_batch(args.batch, args.length, gen)
        loss = nn.functional.mse_loss(model(x), y)
        trainer.opt.zero_grad(set_to_none=True)
        loss.backward()
        total, clipped = trainer.step()
        losses.append(loss.detach())
        norms.append(total.detach().float())
        clips.append(clipped)
    with torch.no_grad():
        pred = model(test_x)
        test_loss = nn.functional.mse_loss(pred, test_y).item()
        accuracy = ((pred - test_y).abs() < 0.04).float().mean().item()
    elapsed = time.perf_counter() - start
    losses_t, norms_t = torch.stack(losses), torch.stack(norms)
    nonfinite = int((~torch.isfinite(norms_t) | ~torch.isfinite(losses_t)).sum())
    return {
        "cell": cell, "method": method, "loss": test_loss, "accuracy": accuracy,
        "nonfinite": nonfinite, "clips": int(torch.stack(clips).sum()), "time": elapsed,
        "losses": losses_t.tolist(), "norms": norms_t.tolist(),
    }


# ---- report -----------------------------------------------------------------------------
def table(results: List[Dict]) -> str:
    head = "| model | clipping | final test MSE | accuracy (abs err < 0.04) | non-finite steps | clip events | time (s) |"
    rule = "|---|---|---:|---:|---:|---:|---:|"
    rows = [head, rule]
    for r in results:
        loss = "nan" if not math.isfinite(r["loss"]) else f"{r['loss']:.4f}"
        rows.append(f"| {r['cell'].upper()} | {r['method']} | {loss} | {100 * r['accuracy']:.1f}% "
                    f"| {r['nonfinite']} | {r['clips']} | {r['time']:.1f} |")
    return "\n".join(rows)


def smooth(xs: List[float], k: int) -> List[float]:
    out, acc = [], []
    for x in xs:
        acc.append(x if math.isfinite(x) else float("nan"))
        acc = acc[-k:]
        finite = [a for a in acc if a == a]
        out.append(sum(finite) / len(finite) if finite else float("nan"))
    return out


def plot(results: List[Dict], path: str, args) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"none": "tab:red", "fixed": "tab:blue", "autoclip": "tab:green",
              "agc": "tab:purple"}
    fig, axes = plt.subplots(2, 2, figsize=(12, 7.5), sharex=True)
    k = max(1, args.steps // 50)
    for col, cell in enumerate(CELLS):
        for r in (r for r in results if r["cell"] == cell):
            steps = range(1, len(r["losses"]) + 1)
            axes[0, col].plot(steps, smooth(r["losses"], k), color=colors[r["method"]],
                              lw=1.4, label=r["method"])
            norms = [n if math.isfinite(n) and n > 0 else float("nan") for n in r["norms"]]
            axes[1, col].plot(steps, norms, color=colors[r["method"]], lw=0.7, alpha=0.8,
                              label=r["method"])
        axes[0, col].axhline(1 / 6, color="gray", ls="--", lw=1, label="predict 1.0 (1/6)")
        axes[0, col].set_title(f"{cell.upper()}, adding problem, T={args.length}")
        axes[0, col].set_ylabel(f"training MSE (mean of {k} steps)")
        axes[0, col].set_yscale("log")
        axes[1, col].set_ylabel("global gradient norm before clipping")
        axes[1, col].set_yscale("log")
        axes[1, col].set_xlabel("step")
        for ax in axes[:, col]:
            ax.grid(True, alpha=0.3)
    axes[0, 0].legend(fontsize=8)
    fig.suptitle(f"Adam, lr={args.lr}, recurrent init orthogonal x {args.gain}: "
                 "no clipping vs fixed clip vs AutoClip vs AGC")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None) -> List[Dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--short", action="store_true", help="CI smoke test (< 30 s)")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--length", type=int, default=200, help="sequence length (>= 200)")
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--hidden", type=int, default=None)
    parser.add_argument("--gain", type=float, default=None)
    parser.add_argument("--lstm-gain", type=float, default=None)
    parser.add_argument("--forget-bias", type=float, default=None)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--max-norm", type=float, default=1.0)
    parser.add_argument("--percentile", type=float, default=10.0)
    parser.add_argument("--clip-factor", type=float, default=None)
    parser.add_argument("--cells", default=",".join(CELLS))
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--plot", default=None, help="PNG path (default: next to this file)")
    args = parser.parse_args(argv)
    defaults = dict(steps=40 if args.short else 600, batch=32 if args.short else 64,
                    hidden=32, gain=1.8, lstm_gain=2.0, forget_bias=3.0, lr=1e-2,
                    clip_factor=0.05)
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.plot is None:
        name = "rnn_exploding_short.png" if args.short else "rnn_exploding.png"
        args.plot = os.path.join(os.path.dirname(os.path.abspath(__file__)), name)
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)

    fused_adam = gradfast_adam()
    print("optimizer: " + ("gradfast.optim.Adam (clipping through max_grad_norm=...)"
                           if fused_adam is not None else
                           "torch.optim.Adam + gradfast clipping functions "
                           "(gradfast.optim.Adam with max_grad_norm not available)"))
    print(f"adding problem, T={args.length}, batch {args.batch}, {args.steps} steps, "
          f"hidden {args.hidden}, recurrent gain {args.gain}, lr {args.lr}")
    results = []
    for cell in args.cells.split(","):
        for method in args.methods.split(","):
            r = run(cell, method, args, fused_adam)
            print(f"  {cell:4s} {method:8s} test MSE {r['loss']:.4f}  acc {100 * r['accuracy']:5.1f}%"
                  f"  non-finite {r['nonfinite']:4d}  clips {r['clips']:4d}  {r['time']:.1f} s",
                  flush=True)
            results.append(r)
    print()
    print(table(results))
    try:
        plot(results, args.plot, args)
        print(f"\nsaved {args.plot}")
    except ImportError:
        print("\nmatplotlib is not installed: no plot (pip install matplotlib)")
    return results


if __name__ == "__main__":
    main()
