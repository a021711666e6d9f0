"""Reporting a run: the terminal table, the JSON with every raw figure, Markdown and a PNG."""
from __future__ import annotations

import json
import math
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .pipelines import PIPELINES

Doc = Dict[str, Any]
Result = Dict[str, Any]

# Every pipeline key in canonical order (fixes each pipeline's colour in the plots).
ALL_PIPELINE_KEYS = list(PIPELINES)


# ---- cells -----------------------------------------------------------------------------

def _ms(side: Optional[Dict[str, Any]], key: str = "time") -> str:
    if not side or not side.get(key):
        return "-"
    s = side[key]
    med, half_iqr = s["median"], (s["p75"] - s["p25"]) / 2
    digits = 3 if med < 1 else 2 if med < 100 else 1
    return f"{med:.{digits}f} ±{half_iqr:.{digits}f}"


def _speedup(r: Result) -> str:
    sp = r.get("speedup")
    if sp is None:
        return "-"
    return f"{sp:.2f}x" + (" slower" if sp < 1.0 else "")


def _num(x: Optional[float], fmt: str) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


def _launches(r: Result) -> str:
    a = (r.get("gradfast") or {}).get("launches")
    b = (r.get("torch") or {}).get("launches")
    if not a and not b:
        return "-"
    fa = str(a["launches"]) if a else "-"
    fb = str(b["launches"]) if b else "-"
    return f"{fa} / {fb}"


def _check(r: Result) -> str:
    if r["status"] == "ok":
        return "pass"
    if r["status"] == "check_failed":
        return "FAIL"
    return r["status"]


def _host(r: Result) -> str:
    a = (r.get("gradfast") or {}).get("host")
    b = (r.get("torch") or {}).get("host")
    if not a or not b:
        return "-"
    return f"{a['median']:.3f} / {b['median']:.3f}"


def rows(doc: Doc) -> Tuple[List[str], List[List[str]]]:
    """Header and rows of the results table (timed and failed pipelines; not skipped ones)."""
    cuda = doc["settings"]["device"] == "cuda"
    header = ["workload", "dtype", "pipeline", "gradfast ms", "torch ms", "speedup",
              "GB/s", "% copy BW", "launches gf/torch"]
    if cuda:
        header.append("host ms gf/torch")
    header.append("check")
    out = []
    for r in doc["results"]:
        if r["status"] == "skipped":
            continue
        row = [r["workload"], r["dtype"], r["label"], _ms(r.get("gradfast")),
               _ms(r.get("torch")), _speedup(r), _num(r.get("gradfast_GBps"), ".1f"),
               _num(r.get("gradfast_pct_copy"), ".0f") + ("%" if r.get("gradfast_pct_copy")
                                                          is not None else ""),
               _launches(r)]
        if cuda:
            row.append(_host(r))
        row.append(_check(r))
        out.append(row)
    return header, out


def _skipped_groups(doc: Doc) -> List[Tuple[str, List[str]]]:
    groups: Dict[str, List[str]] = {}
    for r in doc["results"]:
        if r["status"] == "skipped":
            keys = groups.setdefault(r["reason"], [])
            if r["pipeline"] not in keys:
                keys.append(r["pipeline"])
    return list(groups.items())


def _headline(doc: Doc) -> List[str]:
    env, s = doc["environment"], doc["settings"]
    m = env["machine"]
    cfg = env.get("gradfast_config") or {}
    where = m.get("gpu_name") if s["device"] == "cuda" else (
        f"{m['cpu_model']}, {m['logical_cpus']} CPUs, {m['torch_threads']} torch threads"
        + (f", gradfast CPU kernels on {cfg['cpu_backend']} threads ({cfg.get('cpu_simd')})"
           if cfg.get("cpu_backend") else ""))
    git = env["git"]
    commit = (git["commit"][:12] + ("+dirty" if git.get("dirty") else "")) if git.get(
        "commit") else "unknown"
    bw = doc["copy_bandwidth"]
    return [
        f"gradfast {env['gradfast']} (commit {commit}) vs torch {env['torch']} on "
        f"{s['device']}: {where}",
        f"copy bandwidth {bw['GBps']:.1f} GB/s (median copy_ of {bw['bytes_per_copy'] / 2**21:.0f}"
        f" MiB read+write, measured in this run); caches flushed between repeats: "
        f"{'yes' if doc['flush']['enabled'] else 'no'}",
    ]


def _notes(doc: Doc) -> List[str]:
    s = doc["settings"]
    budget = s.get("repeat_budget")
    fewer = (f"; fewer, down to {budget['min_repeats']}, where a step is slow (about "
             f"{budget['budget_s']:g} s per pair; counts in the JSON)" if budget else "")
    notes = [
        f"times: median ± half the interquartile range of {s['repeats']} interleaved repeats "
        f"({s['repeats_small']} for workloads under {s['small_elems'] / 1e6:.0f}M elements"
        f"{fewer})" + ("; CUDA events around each step" if s["device"] == "cuda"
                       else "; wall clock"),
        "speedup = torch median / gradfast median; GB/s and % copy BW are gradfast's, by the "
        "bytes model (12 B/elem clip, 32 B/elem fused clip+Adam; half for bf16)",
        "check: gradfast's and torch's outputs (norm and clipped grads; params and moments "
        "after one Adam step) against torch's algorithm in float64 on the same inputs; "
        "gradfast passes within twice torch's error or a few ulps; a speedup is only shown "
        "where it passed",
    ]
    for warning in doc["environment"].get("warnings", []):
        notes.append(f"warning: {warning}")
    other = doc["environment"]["machine"].get("cpu_used_by_other_processes_during_run")
    if other is not None and s["device"] == "cpu":
        notes.append(f"other processes used {100 * other:.0f}% of the CPUs during the run"
                     + (" (the timings are disturbed)" if other > 0.1 else ""))
    for reason, keys in _skipped_groups(doc):
        notes.append(f"skipped {', '.join(keys)}: {reason}")
    return notes


def _aligned(header: List[str], body: List[List[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in body)) if body else len(h)
              for i, h in enumerate(header)]
    right = {"gradfast ms", "torch ms", "speedup", "GB/s", "% copy BW", "launches gf/torch",
             "host ms gf/torch"}

    def fmt(cells: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if h in right else c.ljust(w)
                         for c, w, h in zip(cells, widths, header)).rstrip()

    lines = [fmt(header), "  ".join("-" * w for w in widths)]
    lines += [fmt(r) for r in body]
    return "\n".join(lines)


def terminal_table(doc: Doc) -> str:
    header, body = rows(doc)
    parts = _headline(doc) + [""] + [_aligned(header, body)] + [""]
    parts += _notes(doc)
    c = doc["check_summary"]
    parts.append(f"correctness checks: {c['passed']} passed, {c['failed']} failed, "
                 f"{c['skipped']} (workload, dtype, pipeline) runs skipped")
    return "\n".join(parts)


# ---- files -----------------------------------------------------------------------------

def _clean(o: Any) -> Any:
    """JSON-safe copy: NaN and infinities become None, tuples lists, other objects strings."""
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, dict):
        return {str(k): _clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean(v) for v in o]
    if o is None or isinstance(o, (bool, int, str)):
        return o
    return str(o)


def write_json(path: str, doc: Doc) -> None:
    with open(path, "w") as f:
        json.dump(_clean(doc), f, indent=1, allow_nan=False)
        f.write("\n")


def write_markdown(path: str, doc: Doc, png_name: Optional[str]) -> None:
    header, body = rows(doc)
    env = doc["environment"]
    lines = [f"# gradfast benchmark: {doc['settings']['device']}, {env['date']}", ""]
    lines += [f"- {line}" for line in _headline(doc)]
    lines.append(f"- command: `{env['command']}`, {doc['runtime_s']:.0f} s")
    lines.append("")
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join("---" if i < 3 else "---:" for i in range(len(header))) + "|")
    for r in body:
        lines.append("| " + " | ".join(c.replace("|", "/") for c in r) + " |")
    lines.append("")
    lines += [f"- {n}" for n in _notes(doc)]
    c = doc["check_summary"]
    lines.append(f"- correctness checks: {c['passed']} passed, {c['failed']} failed, "
                 f"{c['skipped']} (workload, dtype, pipeline) runs skipped")
    failed = [r for r in doc["results"] if r["status"] in ("check_failed", "error")]
    for r in failed:
        lines.append(f"- {r['status']}: {r['workload']} {r['dtype']} {r['pipeline']}: "
                     f"{r.get('reason') or ''}")
    if png_name:
        lines += ["", f"![speedup and % of copy bandwidth]({png_name})"]
    lines.append("")
    with open(path, "w") as f:
        f.write("\n".join(lines))


def write_png(path: str, doc: Doc) -> Optional[str]:
    """Speedup and gradfast's % of copy bandwidth per workload and pipeline.

    Returns None on success, or why no plot was made.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        return (f"matplotlib is not installed ({exc}); for the PNG, install gradfast's bench "
                f"extra: pip install \"gradfast[bench]\" (from a checkout: pip install -e "
                f"\".[bench]\")")
    timed = [r for r in doc["results"] if r.get("speedup") is not None]
    if not timed:
        return "no pipeline was timed"
    shown = [r for r in doc["results"] if r["status"] != "skipped"]
    groups: List[Tuple[str, str]] = []
    for r in shown:
        if (r["workload"], r["dtype"]) not in groups:
            groups.append((r["workload"], r["dtype"]))
    # Pipelines in the run's canonical order, each with a fixed colour across runs.
    order = doc["settings"]["pipelines"]
    label_of = {r["pipeline"]: r["label"] for r in shown}
    keys = [k for k in order if k in label_of]
    labels = [label_of[k] for k in keys]
    colour_index = {k: i for i, k in enumerate(ALL_PIPELINE_KEYS)}
    failed = {(r["workload"], r["dtype"], r["label"]): r["status"] for r in shown
              if r["status"] in ("check_failed", "error")}
    by_key = {(r["workload"], r["dtype"], r["label"]): r for r in timed}
    cmap = plt.get_cmap("tab10")
    n_l = len(labels)
    width = 0.8 / n_l
    fig_w = max(9.0, 1.5 + 0.22 * len(groups) * n_l + 0.5 * len(groups))
    fig, axes = plt.subplots(2, 1, figsize=(fig_w, 9.0), sharex=True)
    ax_sp, ax_bw = axes
    rotate = 90 if n_l > 3 else 0
    # Speedup: log scale, bars from the torch = 1 line (up: gradfast faster, down: slower).
    lo, hi = 1.0, 1.0
    for j, label in enumerate(labels):
        colour = cmap(colour_index.get(keys[j], j) % 10)
        for i, g in enumerate(groups):
            x = i - 0.4 + width * (j + 0.5)
            if (g[0], g[1], label) in failed:
                what = "check failed" if failed[(g[0], g[1], label)] == "check_failed" else "error"
                ax_sp.text(x, 1.0, f" {what}", ha="center", va="bottom", fontsize=7,
                           rotation=90, color="red")
                continue
            r = by_key.get((g[0], g[1], label))
            if r is None:
                continue
            y = r["speedup"]
            ax_sp.bar(x, y - 1.0, width * 0.92, bottom=1.0, color=colour,
                      label=label if i == 0 or label not in ax_sp.get_legend_handles_labels()[1]
                      else None)
            ax_sp.text(x, y, f" {y:.2f}x " if rotate else f"{y:.2f}x", ha="center",
                       va="bottom" if y >= 1 else "top", fontsize=7, rotation=rotate)
            lo, hi = min(lo, y), max(hi, y)
    ax_sp.set_yscale("log")
    ax_sp.set_ylim(min(0.5, lo / 2.0), max(2.0, hi * 3.0))
    ticks = [t for t in (0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100, 200)
             if ax_sp.get_ylim()[0] <= t <= ax_sp.get_ylim()[1]]
    ax_sp.set_yticks(ticks)
    ax_sp.set_yticklabels([f"{t:g}x" for t in ticks])
    ax_sp.minorticks_off()
    ax_sp.axhline(1.0, color="black", linewidth=1.0)
    ax_sp.set_ylabel("speedup over torch (log scale)\nabove 1: gradfast faster")
    ax_sp.grid(axis="y", alpha=0.3)
    # gradfast's achieved bandwidth by the bytes model, as % of the copy bandwidth.
    top = 100.0
    for j, label in enumerate(labels):
        colour = cmap(colour_index.get(keys[j], j) % 10)
        for i, g in enumerate(groups):
            r = by_key.get((g[0], g[1], label))
            if r is None or r.get("gradfast_pct_copy") is None:
                continue
            x, y = i - 0.4 + width * (j + 0.5), r["gradfast_pct_copy"]
            ax_bw.bar(x, y, width * 0.92, color=colour)
            ax_bw.text(x, y, f" {y:.0f}%" if rotate else f"{y:.0f}%", ha="center",
                       va="bottom", fontsize=7, rotation=rotate)
            top = max(top, y)
    ax_bw.axhline(100.0, color="grey", linewidth=1.0, linestyle=":")
    ax_bw.set_ylim(0, top * 1.3)
    ax_bw.set_ylabel("gradfast: % of copy bandwidth\n(bytes model / time)")
    ax_bw.grid(axis="y", alpha=0.3)
    ax_bw.set_xticks(range(len(groups)))
    ax_bw.set_xticklabels([f"{w}\n{d}" for w, d in groups])
    ax_bw.set_xlim(-0.5, len(groups) - 0.5)
    env = doc["environment"]
    m = env["machine"]
    where = m.get("gpu_name") if doc["settings"]["device"] == "cuda" else (
        f"{m['cpu_model']} ({m['torch_threads']} threads)")
    commit = (env["git"].get("commit") or "unknown")[:12]
    fig.suptitle(f"gradfast {env['gradfast']} ({commit}) vs torch {env['torch']} on "
                 f"{doc['settings']['device']}: {where}, {env['date'][:10]}\n"
                 f"copy bandwidth {doc['copy_bandwidth']['GBps']:.1f} GB/s; median of "
                 f"interleaved repeats; only pipelines that passed the correctness check",
                 fontsize=10)
    handles, names = ax_sp.get_legend_handles_labels()
    rows_of_legend = 1 + (n_l - 1) // 4
    fig.legend(handles, names, loc="lower center", bbox_to_anchor=(0.5, 0.0),
               ncol=min(4, n_l), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.025 * rows_of_legend + 0.01, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return None


def output_paths(out_dir: str, device: str, stamp: str) -> Dict[str, str]:
    base = os.path.join(out_dir, f"gradfast-bench-{device}-{stamp}")
    return {"json": base + ".json", "md": base + ".md", "png": base + ".png"}
