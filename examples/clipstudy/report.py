"""The study's outputs: per-(task, model, method) statistics, the Markdown table, the paired
comparisons against the tuned threshold, the PNG, and the JSON of every run."""
from __future__ import annotations

import json
import math
from typing import Dict, List, Optional, Tuple

from .methods import label
from .plan import group_key, scored_error
from .stats import mean, paired_ratio, std, t_interval, wilson
from .tasks import make_task

MODEL_NAMES = {"rnn": "RNN", "lstm": "LSTM"}


def _groups(runs: List[dict]) -> Dict[Tuple[str, str], Dict[str, List[dict]]]:
    """(task, model) -> method label -> runs sorted by seed, in the order first seen."""
    out: Dict[Tuple[str, str], Dict[str, List[dict]]] = {}
    for r in runs:
        c = r["config"]
        out.setdefault(group_key(c), {}).setdefault(label(c["method"]), []).append(r)
    for per in out.values():
        for lst in per.values():
            lst.sort(key=lambda r: r["config"]["seed"])
    # A fixed order whatever order the runs finished in: tasks as listed (adding by length,
    # then copy), RNN before LSTM, methods as in methods.py.
    order = {}
    for g, per in out.items():
        task = json.loads(g[0])
        order[g] = (task["name"] != "adding", task.get("length", task.get("delay")), g[1] != "rnn")
        out[g] = dict(sorted(per.items(), key=lambda kv: _method_rank(kv[1][0]["config"]["method"])))
    return dict(sorted(out.items(), key=lambda kv: order[kv[0]]))


def _method_rank(spec: dict):
    kind = spec["kind"]
    tags = {"defaults": 0, "example": 1, "proposed": 2}
    if kind == "autoclip":
        return (2, tags.get(spec.get("tag"), 3), spec["min_history"], spec["percentile"],
                spec["history"], float(spec["initial_max_norm"]))
    value = spec.get("lr_factor", spec.get("max_norm", spec.get("clip_factor", 0.0)))
    return ({"none": 0, "fixed": 1, "agc": 3, "fused_adam": 4, "sgd": 5}[kind], 0, 0, 0, 0,
            value if isinstance(value, float) else 0.0)


def summarise(runs: List[dict], tuned: dict) -> List[dict]:
    rows = []
    for g, per in _groups(runs).items():
        task = make_task(json.loads(g[0]))
        for name, lst in per.items():
            res = [r["result"] for r in lst]
            err = [scored_error(x, "test_error") for x in res]
            acc = [x["test_accuracy"] if x["test_accuracy"] == x["test_accuracy"] else 0.0
                   for x in res]
            k = sum(x["diverged"] for x in res)
            wall = [x["wall_time_s"] for x in res]
            method = lst[0]["config"]["method"]
            rows.append({
                "task": task.label, "model": MODEL_NAMES[g[1]], "method": name,
                "spec": method, "n": len(res),
                "tuned": method["kind"] == "fixed" and tuned.get(g, {}).get("max_norm")
                == method["max_norm"],
                "val_error_mean": mean([scored_error(x, "val_error") for x in res]),
                "error_mean": mean(err), "error_std": std(err), "error_ci": t_interval(err),
                "accuracy_mean": mean(acc), "accuracy_std": std(acc),
                "accuracy_ci": t_interval(acc),
                "diverged": k, "diverged_ci": wilson(k, len(res)),
                "wall_mean": mean(wall), "wall_std": std(wall),
                "cpu_mean": mean([x.get("cpu_time_s", math.nan) for x in res]),
                "chance_error": task.chance,
            })
    return rows


def _pick(per: Dict[str, List[dict]], kind: str) -> Optional[str]:
    """The method label of `kind` with the lowest mean validation error."""
    names = [n for n, lst in per.items() if lst[0]["config"]["method"]["kind"] == kind]
    if not names:
        return None
    val = {n: mean([scored_error(r["result"], "val_error") for r in per[n]]) for n in names}
    return min(names, key=lambda n: val[n])


def comparisons(runs: List[dict], tuned: dict) -> List[dict]:
    """Per (task, model): each method's test error over the tuned threshold's, paired by
    seed (geometric mean of the per-seed ratios, 95% interval)."""
    out = []
    for g, per in _groups(runs).items():
        if g not in tuned:
            continue
        ref = f"fixed {tuned[g]['max_norm']:g}"
        best_agc, best_sgd = _pick(per, "agc"), _pick(per, "sgd")
        task = make_task(json.loads(g[0]))
        ref_err = {r["config"]["seed"]: scored_error(r["result"], "test_error")
                   for r in per[ref]}
        for name, lst in per.items():
            kind = lst[0]["config"]["method"]["kind"]
            if (name == ref or kind == "fixed" or (kind == "agc" and name != best_agc)
                    or (kind == "sgd" and name != best_sgd)):
                continue
            pairs = [(scored_error(r["result"], "test_error"), ref_err[r["config"]["seed"]])
                     for r in lst if r["config"]["seed"] in ref_err]
            ratio = paired_ratio([a for a, _ in pairs], [b for _, b in pairs])
            out.append({"task": task.label, "model": MODEL_NAMES[g[1]], "method": name,
                        "reference": ref, "n_pairs": len(pairs),
                        "ratio": None if ratio is None else ratio[0],
                        "ratio_ci": None if ratio is None else ratio[1:]})
        # The proposed AutoClip settings against the paper's defaults, same seeds.
        tagged = {lst[0]["config"]["method"].get("tag"): (n, lst) for n, lst in per.items()
                  if lst[0]["config"]["method"]["kind"] == "autoclip"}
        if "proposed" in tagged and "defaults" in tagged:
            (name, lst), (ref_name, ref_lst) = tagged["proposed"], tagged["defaults"]
            base = {r["config"]["seed"]: scored_error(r["result"], "test_error") for r in ref_lst}
            pairs = [(scored_error(r["result"], "test_error"), base[r["config"]["seed"]])
                     for r in lst if r["config"]["seed"] in base]
            ratio = paired_ratio([a for a, _ in pairs], [b for _, b in pairs])
            out.append({"task": task.label, "model": MODEL_NAMES[g[1]], "method": name,
                        "reference": ref_name, "n_pairs": len(pairs),
                        "ratio": None if ratio is None else ratio[0],
                        "ratio_ci": None if ratio is None else ratio[1:]})
    return out


def _f(x: float) -> str:
    return "nan" if x != x else f"{x:.3g}"


def _ci(ci, low: float = 0.0) -> str:
    """An interval, clamped to the possible range (errors are >= 0)."""
    return f"[{_f(max(ci[0], low))}, {_f(ci[1])}]"


def markdown(rows: List[dict], comps: List[dict], meta: dict, headline_table: str) -> str:
    lines = [f"# Clipping study ({meta['mode']} mode)", "",
             f"commit `{meta['commit']}`{' (with uncommitted changes)' if meta['dirty'] else ''}, "
             f"{meta['date']}; {meta['machine']['description']}; torch {meta['torch']}; "
             f"{meta['runs']} runs, {meta['seeds']} seeds each, study wall time "
             + (f"{meta['study_wall_s'] / 60:.1f} min" if "study_wall_s" in meta else "n/a")
             + f" on {meta['jobs']} processes (load average {meta.get('load_before', 'n/a')} "
             f"before, {meta.get('load_after', 'n/a')} after); the "
             f"runs' CPU time adds up to {meta['sum_of_run_cpu_s'] / 60:.1f} min, i.e. "
             f"{meta['sum_of_run_cpu_s'] / 60 / meta['jobs']:.1f} min of wall time on "
             f"{meta['jobs']} idle cores.", "",
             "Steps " + ", ".join(f"{MODEL_NAMES[m]} {n}" for m, n in
                                  meta["sizes"]["steps"].items()) + f", batch {meta['sizes']['batch']}, hidden "
             f"{meta['sizes']['hidden']}, {meta['sizes']['eval_size']} validation and "
             f"{meta['sizes']['eval_size']} test sequences. SGD: {meta['sgd_implementation']}.",
             "", "Test error: MSE of the final sum (adding), cross-entropy per output symbol "
             "in nats (copy); a diverged run (non-finite, or final error above 0.9 x chance) "
             "is scored at the chance error. Accuracy: |error| < 0.04 (adding), per-symbol "
             "(copy). Intervals: 95%, Student t for means (clamped to the possible range), "
             "Wilson for the divergence rate. "
             "★: the fixed threshold with the lowest mean validation error (the tuned one).",
             ""]
    lines += ["## Headline", "",
              "Test error mean [95% CI] over the seeds, and how many runs diverged.", "",
              headline_table, ""]
    for task in dict.fromkeys(r["task"] for r in rows):
        chance = next(r["chance_error"] for r in rows if r["task"] == task)
        lines += [f"## {task} (chance error {chance:.3g})", "",
                  "| model | method | test error mean ± std | 95% CI | accuracy mean ± std "
                  "| 95% CI | diverged | 95% CI | wall s/run (CPU s) |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
        for r in (r for r in rows if r["task"] == task):
            star = " ★" if r["tuned"] else ""
            lines.append(
                f"| {r['model']} | {r['method']}{star} | {_f(r['error_mean'])} ± "
                f"{_f(r['error_std'])} | {_ci(r['error_ci'])} | "
                f"{100 * r['accuracy_mean']:.1f}% ± {100 * r['accuracy_std']:.1f} | "
                f"[{100 * max(r['accuracy_ci'][0], 0.0):.1f}, "
                f"{100 * min(r['accuracy_ci'][1], 1.0):.1f}] | "
                f"{r['diverged']}/{r['n']} | [{r['diverged_ci'][0]:.2f}, "
                f"{r['diverged_ci'][1]:.2f}] | {r['wall_mean']:.1f} ± {r['wall_std']:.1f} ({r['cpu_mean']:.1f}) |")
        lines.append("")
    lines += ["## Test error relative to the tuned threshold (paired by seed)", "",
              "Geometric mean over seeds of (method's test error) / (tuned fixed threshold's "
              "test error, same seed), with its 95% interval; < 1: better than the tuned "
              "threshold. AGC: the clip factor with the lowest validation error.", "",
              "| task | model | method | vs | ratio | 95% CI |", "|---|---|---|---|---:|---:|"]
    for c in comps:
        ratio = "n/a" if c["ratio"] is None else f"{c['ratio']:.2f}"
        ci = "n/a" if c["ratio_ci"] is None else f"[{c['ratio_ci'][0]:.2f}, {c['ratio_ci'][1]:.2f}]"
        lines.append(f"| {c['task']} | {c['model']} | {c['method']} | {c['reference']} | "
                     f"{ratio} | {ci} |")
    return "\n".join(lines) + "\n"


def plot(runs: List[dict], tuned: dict, path: str) -> bool:
    """One panel per task: every run's test error (log scale) per method, RNN and LSTM side
    by side, with the median marked. False when matplotlib is missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    # The fused runs' threshold differs per (task, model): one column "at c*" for them all.
    groups = {g: {_plot_name(lst[0]["config"]["method"], n): lst for n, lst in per.items()}
              for g, per in _groups(runs).items()}
    tasks = list(dict.fromkeys(g[0] for g in groups))
    methods = list(dict.fromkeys(n for per in groups.values() for n in per))
    fig, axes = plt.subplots(len(tasks), 1, figsize=(max(10, 0.85 * len(methods)),
                                                     3.6 * len(tasks)), squeeze=False)
    colors = {"rnn": "tab:blue", "lstm": "tab:orange"}
    for ax, tkey in zip(axes[:, 0], tasks):
        task = make_task(json.loads(tkey))
        for m_i, name in enumerate(methods):
            for offset, cell in ((-0.18, "rnn"), (0.18, "lstm")):
                lst = groups.get((tkey, cell), {}).get(name, [])
                errs = [scored_error(r["result"], "test_error") for r in lst]
                if not errs:
                    continue
                xs = [m_i + offset + 0.04 * (j - (len(errs) - 1) / 2) for j in range(len(errs))]
                div = [r["result"]["diverged"] for r in lst]
                ax.scatter(xs, errs, s=14, color=colors[cell],
                           marker="o", alpha=0.8, label=MODEL_NAMES[cell] if m_i == 0 else None)
                ax.scatter([x for x, d in zip(xs, div) if d], [e for e, d in zip(errs, div) if d],
                           s=40, facecolors="none", edgecolors="red", lw=0.8)
                med = sorted(errs)[len(errs) // 2]
                ax.plot([m_i + offset - 0.12, m_i + offset + 0.12], [med, med],
                        color=colors[cell], lw=2)
        ax.axhline(task.chance, color="gray", ls="--", lw=1, label="chance (input ignored)")
        ax.set_yscale("log")
        ax.set_xticks(range(len(methods)))
        ticks = []
        for name in methods:
            stars = [MODEL_NAMES[g[1]] for g in tuned
                     if g[0] == tkey and name == f"fixed {tuned[g]['max_norm']:g}"]
            ticks.append(name + (f" ★ {'+'.join(stars)}" if stars else ""))
        ax.set_xticklabels(ticks, rotation=35, ha="right", fontsize=7)
        ax.set_ylabel("final test error")
        ax.set_title(f"{task.label}: test error per run (bar: median; red ring: diverged; "
                     f"★: tuned on validation)", fontsize=9)
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return True


def _plot_name(spec: dict, name: str) -> str:
    if spec["kind"] == "fused_adam":
        return "fused Adam max_grad_norm=c*"
    if spec["kind"] == "sgd":
        return f"SGD+momentum lr x{spec['lr_factor']:g} max_grad_norm=c*"
    return name


def as_json(runs: List[dict], rows: List[dict], comps: List[dict], tuned: dict,
            meta: dict) -> dict:
    return {"meta": meta,
            "tuned_thresholds": [{"task": json.loads(g[0]), "model": g[1], **v,
                                  "val_error_by_threshold": {str(k): x for k, x in
                                                             v["val_error_by_threshold"].items()}}
                                 for g, v in tuned.items()],
            "summary": [_jsonable(r) for r in rows], "comparisons": comps,
            "runs": [{"key": r["key"], "method": label(r["config"]["method"]), **r}
                     for r in runs]}


def _jsonable(row: dict) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else
                (None if isinstance(v, float) and not math.isfinite(v) else v))
            for k, v in row.items()}


def _headline_name(row: dict, tuned_label: str, best_agc: Optional[str],
                   best_sgd: Optional[str]) -> Optional[str]:
    kind = row["spec"]["kind"]
    if kind == "fixed":
        return "fixed, tuned on validation (c*)" if row["method"] == tuned_label else None
    if kind == "agc":
        return "AGC, best factor on validation" if row["method"] == best_agc else None
    if kind == "fused_adam":
        return "gradfast.optim.Adam(max_grad_norm=c*)"
    if kind == "sgd":
        return ("SGD+momentum, lr chosen on validation, max_grad_norm=c*"
                if row["method"] == best_sgd else None)
    return row["method"]


def headline(runs: List[dict], rows: List[dict], comps: List[dict], tuned: dict) -> str:
    """The README's table: one row per method (the tuned threshold and the best AGC factor
    only), one column per (task, model): test error mean [95% CI] and divergences; and the
    paired ratio of each method's error to the tuned threshold's."""
    groups = _groups(runs)
    cols, names, cells, ratio_cells = [], [], {}, {}
    for g, per in groups.items():
        task = make_task(json.loads(g[0]))
        col = f"{task.label}, {MODEL_NAMES[g[1]]}"
        cols.append(col)
        tuned_label = f"fixed {tuned[g]['max_norm']:g}" if g in tuned else None
        best_agc, best_sgd = _pick(per, "agc"), _pick(per, "sgd")
        ratios = {c["method"]: c for c in comps if c["task"] == task.label
                  and c["model"] == MODEL_NAMES[g[1]] and c["reference"].startswith("fixed")}
        for c in comps:
            if (c["task"] == task.label and c["model"] == MODEL_NAMES[g[1]]
                    and not c["reference"].startswith("fixed") and c["ratio"] is not None):
                extra_name = "AutoClip proposed / AutoClip defaults (not / c*)"
                ratio_cells[(extra_name, col)] = (f"{c['ratio']:.2g}x [{c['ratio_ci'][0]:.2g}, "
                                                  f"{c['ratio_ci'][1]:.2g}]")
        for r in rows:
            if r["task"] != task.label or r["model"] != MODEL_NAMES[g[1]]:
                continue
            name = _headline_name(r, tuned_label, best_agc, best_sgd)
            if name is None:
                continue
            if name not in names:
                names.append(name)
            extra = ""
            if r["spec"]["kind"] == "fixed":
                extra = f" (c* = {tuned[g]['max_norm']:g})"
            elif r["spec"]["kind"] == "agc":
                extra = f" ({r['spec']['clip_factor']:g})"
            elif r["spec"]["kind"] == "sgd":
                extra = f" (lr x{r['spec']['lr_factor']:g})"
            c = ratios.get(r["method"])
            if c is not None and c["ratio"] is not None:
                ratio_cells[(name, col)] = (f"{c['ratio']:.2g}x [{c['ratio_ci'][0]:.2g}, "
                                            f"{c['ratio_ci'][1]:.2g}]")
            cells[(name, col)] = (f"{_f(r['error_mean'])} {_ci(r['error_ci'])}{extra}, "
                                  f"{r['diverged']}/{r['n']} div.")
    head = ["| method | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    lines = list(head)
    for name in names:
        lines.append(f"| {name} | " + " | ".join(cells.get((name, c), "") for c in cols) + " |")
    lines += ["", "Test error relative to the tuned threshold's, paired by seed (geometric mean "
              "of the per-seed ratios [95% CI]; < 1 is better):", ""] + head
    for name in names + ["AutoClip proposed / AutoClip defaults (not / c*)"]:
        if any((name, c) in ratio_cells for c in cols):
            lines.append(f"| {name} | " + " | ".join(ratio_cells.get((name, c), "")
                                                      for c in cols) + " |")
    return "\n".join(lines) + "\n"
