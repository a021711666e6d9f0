"""Exploding gradients in recurrent networks, and five ways of training through them.

A vanilla RNN and an LSTM learn the adding problem (Hochreiter & Schmidhuber 1997) with
sequences of T = 200 steps: each step is a (value, marker) pair, values uniform in [0, 1],
exactly two markers set (one in each half), and the answer is the sum of the two marked
values. A model that ignores its input can at best answer 1.0, a mean squared error of
1/6 ~ 0.167. To make the task learnable in a few hundred CPU steps, training is supervised
at every step with the running sum of the marked values so far (the last step's target is
the classic answer); the test error and accuracy are measured on the last step only, on
1000 held-out sequences, as in the classic task.

Both models are initialised where gradients explode:
    RNN   ReLU units, recurrent weights = identity (Le et al. 2015's IRNN): the recurrence
          neither grows nor shrinks at first, and as training nudges its spectral radius
          above 1 the backward pass through 200 steps amplifies gradients by orders of
          magnitude (norms of 1e10 and more within a few hundred steps).
    LSTM  recurrent weights orthogonal x 3, forget-gate bias +3: gradient norms of
          hundreds at the first steps, against a typical norm below 1.

Each model is trained with Adam (lr 1e-3 for the RNN, 1e-2 for the LSTM) and:
    none      no clipping
    fixed     clip the global norm at 1.0 (gradfast.clip_grads_with_norm_)
    autoclip  gradfast.AutoClip(percentile=10, min_history=10, initial_max_norm=1.0)
    agc       gradfast.adaptive_clip_grad_(params, clip_factor=0.05): unit-wise AGC
    sgd       no Adam: SGD with momentum 0.9 and the global norm clipped at 1.0, the
              recipe of Pascanu et al. 2013 (gradfast.optim.SGD(momentum=0.9,
              max_grad_norm=1.0), lr 0.05 for the RNN, 0.1 for the LSTM)
and watched by gradfast.GradMonitor: with fixed and AutoClip clipping inside
gradfast.optim.Adam, the optimizer's one norm pass feeds the monitor (monitor.attach(opt));
otherwise the monitor's norm pass is reused by the clipping.

Adam is gradfast.optim.Adam (clipping through its max_grad_norm=...) when the installed
gradfast has it, else torch.optim.Adam with gradfast's clipping functions; the script
prints which. Everything runs on the CPU, one thread per run.

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

METHODS = ["none", "fixed", "autoclip", "agc", "sgd"]
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
    """A one-layer RNN or LSTM reading (value, marker) pairs, and a linear read-out at
    every step."""

    def __init__(self, cell: str, hidden: int, gain: float, forget_bias: float) -> None:
        super().__init__()
        with torch.no_grad():
            if cell == "rnn":
                self.rnn = nn.RNN(2, hidden, nonlinearity="relu", batch_first=True)
                self.rnn.weight_hh_l0.copy_(torch.eye(hidden) * gain)
                self.rnn.bias_hh_l0.zero_()
                self.rnn.bias_ih_l0.zero_()
            else:
                self.rnn = nn.LSTM(2, hidden, batch_first=True)
                for block in self.rnn.weight_hh_l0.split(hidden, dim=0):
                    nn.init.orthogonal_(block, gain=gain)
                # gates are stacked (input, forget, cell, output)
                self.rnn.bias_hh_l0[hidden:2 * hidden] += forget_bias
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.head(out).squeeze(-1)  # (batch, T): the running-sum estimate


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
    """Clipping and the optimiser step for one method. step() records the gradient norms
    in the monitor (one norm pass, reused by the clipping) and returns the pre-clip global
    norm and whether anything was clipped, as tensors: the loop never waits on a value."""

    def __init__(self, method: str, params: List[torch.Tensor], lr: float, fused_adam,
                 monitor: gradfast.GradMonitor, args, cell: str = "rnn") -> None:
        self.method, self.params, self.monitor = method, params, monitor
        self.max_norm, self.clip_factor = args.max_norm, args.clip_factor
        self.autoclip = None
        if method == "autoclip":
            self.autoclip = gradfast.AutoClip(percentile=args.percentile, min_history=10,
                                              initial_max_norm=args.max_norm)
        self.clip_in_optimizer = fused_adam is not None and method in ("fixed", "autoclip")
        fused_sgd = getattr(getattr(gradfast, "optim", None), "SGD", None)
        if method == "sgd":
            self.clip_in_optimizer = fused_sgd is not None
            if fused_sgd is not None:
                self.opt = fused_sgd(params, lr=args.sgd_lr[cell], momentum=0.9,
                                     max_grad_norm=self.max_norm)
                monitor.attach(self.opt)
            else:
                self.opt = torch.optim.SGD(params, lr=args.sgd_lr[cell], momentum=0.9)
        elif fused_adam is not None:
            limit = {"fixed": self.max_norm, "autoclip": self.autoclip}.get(method)
            self.opt = fused_adam(params, lr=lr, max_grad_norm=limit)
            if self.clip_in_optimizer:
                # The optimiser's own norm pass feeds the monitor (and marks clip events).
                monitor.attach(self.opt)
        else:
            self.opt = torch.optim.Adam(params, lr=lr)

    def step(self):
        params, method = self.params, self.method
        if self.clip_in_optimizer:
            self.opt.step()  # one norm pass: clipping (AutoClip.threshold) and the monitor
            total = self.opt.grad_norm
            limit = self.autoclip.last_threshold if method == "autoclip" else self.max_norm
            return total, total > limit
        total, _ = self.monitor.step()  # recorded before any clipping changes the grads
        clipped = torch.zeros((), dtype=torch.bool)
        if method in ("fixed", "sgd"):
            gradfast.clip_grads_with_norm_(params, self.max_norm, total)
            clipped = total > self.max_norm
        elif method == "autoclip":
            clipped = total > self.autoclip.clip_with_norm_(params, total)
        elif method == "agc":
            clipped = gradfast.adaptive_clip_grad_(params, self.clip_factor) > 0
        self.opt.step()
        self.monitor.annotate(clipped=clipped)
        return total, clipped


# ---- one run ----------------------------------------------------------------------------
def run(cell: str, method: str, args, fused_adam, layers_plot=None) -> Dict:
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    if cell == "rnn":
        model = Recurrent(cell, args.hidden, args.rnn_gain, 0.0)
        lr = args.rnn_lr
    else:
        model = Recurrent(cell, args.hidden, args.lstm_gain, args.forget_bias)
        lr = args.lstm_lr
    params = list(model.parameters())
    monitor = gradfast.GradMonitor(model, every=50, warn=False)
    trainer = Trainer(method, params, lr, fused_adam, monitor, args, cell)
    test_x, test_y = adding_batch(1000, args.length, torch.Generator().manual_seed(1234))
    losses, norms, clips = [], [], []
    start = time.perf_counter()
    for _ in range(args.steps):
        x, _ = adding_batch(args.batch, args.length, gen)
        running_sum = torch.cumsum(x[..., 0] * x[..., 1], dim=1)
        loss = nn.functional.mse_loss(model(x), running_sum)
        trainer.opt.zero_grad(set_to_none=True)
        loss.backward()
        total, clipped = trainer.step()
        losses.append(loss.detach())
        norms.append(total.detach().float())
        clips.append(clipped)
    with torch.no_grad():
        pred = model(test_x)[:, -1:]
        test_loss = nn.functional.mse_loss(pred, test_y).item()
        accuracy = ((pred - test_y).abs() < 0.04).float().mean().item()
    elapsed = time.perf_counter() - start
    monitor.flush()
    if layers_plot:
        monitor.plot(layers_plot, title=f"{cell.upper()} without clipping: gradient norm "
                                        "per parameter (gradfast.GradMonitor.plot)")
    losses_t, norms_t = torch.stack(losses), torch.stack(norms)
    nonfinite = int((~torch.isfinite(norms_t) | ~torch.isfinite(losses_t)).sum())
    exploding = sum(e.kind in ("exploding", "nonfinite") for e in monitor.events)
    return {
        "cell": cell, "method": method, "loss": test_loss, "accuracy": accuracy,
        "nonfinite": nonfinite, "clips": int(torch.stack(clips).sum()),
        "exploding": exploding, "time": elapsed,
        "losses": losses_t.tolist(), "norms": norms_t.tolist(),
    }


# ---- report -----------------------------------------------------------------------------
def table(results: List[Dict]) -> str:
    rows = ["| model | clipping | test MSE (last step) | accuracy (abs err < 0.04) "
            "| non-finite steps | clip events | exploding events (GradMonitor) | time (s) |",
            "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        loss = f"{r['loss']:.4g}" if math.isfinite(r["loss"]) else "nan"
        rows.append(f"| {r['cell'].upper()} | {r['method']} | {loss} | {100 * r['accuracy']:.1f}% "
                    f"| {r['nonfinite']} | {r['clips']} | {r['exploding']} | {r['time']:.1f} |")
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
              "agc": "tab:purple", "sgd": "tab:orange"}
    cells = [c for c in CELLS if any(r["cell"] == c for r in results)]
    fig, axes = plt.subplots(2, len(cells), figsize=(6 * len(cells), 7.5), sharex=True,
                             squeeze=False)
    k = max(1, args.steps // 40)
    for col, cell in enumerate(cells):
        for r in (r for r in results if r["cell"] == cell):
            steps = range(1, len(r["losses"]) + 1)
            label = f"{r['method']} (test MSE {r['loss']:.3g})"
            axes[0, col].plot(steps, smooth(r["losses"], k), color=colors[r["method"]],
                              lw=1.5, label=label)
            norms = [n if math.isfinite(n) and n > 0 else float("nan") for n in r["norms"]]
            axes[1, col].plot(steps, norms, color=colors[r["method"]], lw=0.7, alpha=0.75,
                              label=r["method"])
        axes[0, col].axhline(1 / 6, color="gray", ls="--", lw=1, label="input ignored (1/6)")
        lr = args.rnn_lr if cell == "rnn" else args.lstm_lr
        axes[0, col].set_title(f"{cell.upper()}, adding problem T={args.length}, Adam lr={lr:g} "
                               f"(sgd: SGD lr={args.sgd_lr[cell]:g}, momentum 0.9)")
        axes[0, col].set_ylabel(f"training MSE (running mean of {k} steps)")
        axes[0, col].set_yscale("log")
        axes[0, col].legend(fontsize=8, loc="upper right")
        axes[1, col].set_ylabel("global gradient norm before clipping")
        axes[1, col].set_yscale("log")
        axes[1, col].axhline(args.max_norm, color="tab:blue", ls=":", lw=1)
        axes[1, col].set_xlabel("step")
        for ax in axes[:, col]:
            ax.grid(True, alpha=0.3)
    fig.suptitle("Exploding gradients: no clipping vs fixed clip (1.0) vs AutoClip (10th "
                 "percentile) vs AGC (0.05) vs clipped SGD with momentum")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _run_job(job):
    cell, method, args, layers_plot = job
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    return run(cell, method, args, gradfast_adam(), layers_plot)


def main(argv=None) -> List[Dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--short", action="store_true", help="CI smoke test (< 30 s)")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--length", type=int, default=200, help="sequence length (>= 200)")
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--rnn-gain", type=float, default=1.0)
    parser.add_argument("--rnn-lr", type=float, default=1e-3)
    parser.add_argument("--lstm-gain", type=float, default=3.0)
    parser.add_argument("--forget-bias", type=float, default=3.0)
    parser.add_argument("--lstm-lr", type=float, default=1e-2)
    parser.add_argument("--rnn-sgd-lr", type=float, default=0.05)
    parser.add_argument("--lstm-sgd-lr", type=float, default=0.1)
    parser.add_argument("--max-norm", type=float, default=1.0)
    parser.add_argument("--percentile", type=float, default=10.0)
    parser.add_argument("--clip-factor", type=float, default=0.05)
    parser.add_argument("--cells", default=",".join(CELLS))
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=None,
                        help="runs in parallel, one thread each (default: CPU count, <= 8)")
    parser.add_argument("--plot", default=None, help="PNG path (default: next to this file)")
    parser.add_argument("--layers-plot", default=None,
                        help="PNG of the LSTM's per-parameter norms without clipping "
                             "(default: next to this file; none in --short mode)")
    args = parser.parse_args(argv)
    args.sgd_lr = {"rnn": args.rnn_sgd_lr, "lstm": args.lstm_sgd_lr}
    if args.steps is None:
        args.steps = 30 if args.short else 1000
    if args.batch is None:
        args.batch = 16 if args.short else 64
    here = os.path.dirname(os.path.abspath(__file__))
    if args.plot is None:
        args.plot = ("rnn_exploding_short.png" if args.short  # in the working directory
                     else os.path.join(here, "rnn_exploding.png"))
    if args.layers_plot is None and not args.short:
        args.layers_plot = os.path.join(here, "rnn_exploding_layers.png")
    jobs = args.jobs or min(8, os.cpu_count() or 1)

    print("optimizer: " + ("gradfast.optim.Adam (clipping through max_grad_norm=...)"
                           if gradfast_adam() is not None else
                           "torch.optim.Adam + gradfast clipping functions "
                           "(gradfast.optim.Adam with max_grad_norm not available)"))
    print(f"adding problem, T={args.length}, batch {args.batch}, {args.steps} steps per run, "
          f"{jobs} run(s) in parallel")
    work = []
    for cell in args.cells.split(","):
        for method in args.methods.split(","):
            layers = args.layers_plot if (cell, method) == ("lstm", "none") else None
            work.append((cell, method, args, layers))
    start = time.perf_counter()
    if jobs > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor
        with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            results = list(pool.map(_run_job, work))
    else:
        results = [_run_job(job) for job in work]
    for r in results:
        print(f"  {r['cell']:4s} {r['method']:8s} test MSE {r['loss']:.4g}  "
              f"acc {100 * r['accuracy']:5.1f}%  non-finite {r['nonfinite']:4d}  "
              f"clips {r['clips']:4d}  exploding {r['exploding']:3d}  {r['time']:.1f} s")
    print(f"\ntotal wall time {time.perf_counter() - start:.1f} s\n")
    print(table(results))
    try:
        plot(results, args.plot, args)
        print(f"\nsaved {args.plot}" + (f" and {args.layers_plot}" if args.layers_plot else ""))
    except ImportError:
        print("\nmatplotlib is not installed: no plot (pip install matplotlib)")
    return results


if __name__ == "__main__":
    main()
