"""A reproducible study of gradient-clipping methods on exploding RNNs (issue 14).

Workloads: the adding problem with T = 200 and T = 400, and the copy-memory task (all
generated locally), each learnt by the vanilla ReLU RNN and the LSTM of
examples/rnn_exploding.py, initialised where gradients explode.

Methods (Adam, lr 1e-3 for the RNN and 1e-2 for the LSTM, as in the example):
    no clipping
    fixed thresholds 0.1, 0.3, 1, 3, 10 (gradfast.clip_grad_norm_); the "tuned" threshold
        is the one with the lowest mean validation error, per task and model
    AutoClip with its defaults, with the example's settings (warm-up 10 steps at 1.0),
        and with the proposed ones (warm-up 100 steps at 0.1); --autoclip-sweep adds the
        targeted sweep of percentile, history and warm-up
    AGC with clip factors 0.01, 0.05, 0.2
    gradfast.optim.Adam(max_grad_norm=tuned) and SGD+momentum 0.9 with max_grad_norm=tuned
        at 1x, 10x and 100x the model's Adam lr (the reported one chosen on validation),
        through gradfast.optim.SGD
Every method runs with the same seeds (5 in the default mode): a seed fixes the initial
weights and the training batches, so comparisons are paired.

Outputs in --out: study.md (the table), study.png (the error distribution per task and
method), study.json (every run, with commit, machine, torch version), and the cache
runs.jsonl that lets an interrupted study resume (rerun the same command).

    python examples/clipping_study.py --out results/    # default mode: 18 CPU-minutes,
                                                        # ~9 min on 2 idle cores
    python examples/clipping_study.py --quick --out /tmp/q  # pipeline check, < 2 min
"""
from __future__ import annotations

import argparse
import json
import os
import time

from clipstudy import meta as meta_mod
from clipstudy import plan, report
from clipstudy.methods import AUTOCLIP_EXTRA, AUTOCLIP_SWEEP, sgd_implementation
from clipstudy.runner import load_cache, run_all


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes, 2 seeds: checks the pipeline, not the conclusions")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--jobs", type=int, default=None,
                        help="parallel processes, one thread each (default: CPU count)")
    parser.add_argument("--seeds", type=int, default=None, help="override the seed count")
    parser.add_argument("--steps", type=int, default=None, help="override the step count")
    parser.add_argument("--tasks", default=None,
                        help="only these tasks, by index in the mode's list (e.g. 0,2)")
    parser.add_argument("--autoclip-sweep", action="store_true",
                        help="add the targeted AutoClip sweep (percentile, history length) "
                             "to the methods")
    parser.add_argument("--no-agc", action="store_true", help="skip AGC (for the sweep)")
    parser.add_argument("--report-only", action="store_true",
                        help="make no run: report the runs already in the cache")
    parser.add_argument("--no-fused", action="store_true",
                        help="skip phase 2 (the fused optimizers at the tuned threshold)")
    args = parser.parse_args(argv)

    mode_name = "quick" if args.quick else "default"
    mode = dict(plan.MODES[mode_name])
    if args.seeds is not None:
        mode["seeds"] = list(range(args.seeds))
    if args.steps is not None:
        mode["steps"] = {m: args.steps for m in mode["models"]}
    if args.tasks is not None:
        mode["tasks"] = [mode["tasks"][int(i)] for i in args.tasks.split(",")]
    extra = list(AUTOCLIP_EXTRA) + (list(AUTOCLIP_SWEEP) if args.autoclip_sweep else [])
    jobs = args.jobs or os.cpu_count() or 1
    os.makedirs(args.out, exist_ok=True)
    cache = os.path.join(args.out, "runs.jsonl")
    here = os.path.dirname(os.path.abspath(__file__))

    run_info_path = os.path.join(args.out, "run_info.json")
    if args.report_only:
        # Every run in the cache (whatever sizes made it), with where and when it ran.
        runs = list(load_cache(cache).values())
        tuned = plan.tuned_thresholds(runs)
        run_info = {}
        if os.path.exists(run_info_path):
            with open(run_info_path) as f:
                run_info = json.load(f)
        info = dict(meta_mod.collect(here), **run_info)
        info["report_commit"] = meta_mod.collect(here)["commit"]
    else:
        info = meta_mod.collect(here)  # the code that makes the runs
        load_before = meta_mod.load_average()
        start = time.perf_counter()
        phase1 = plan.phase1(mode, extra)
        if args.no_agc:
            phase1 = [c for c in phase1 if c["method"]["kind"] != "agc"]
        first = run_all(phase1, cache, jobs, "phase 1 (sweep)")
        tuned = plan.tuned_thresholds(first)
        second = ([] if args.no_fused else
                  run_all(plan.phase2(mode, tuned), cache, jobs, "phase 2 (fused, tuned)"))
        runs = first + second
        info.update({"study_wall_s": time.perf_counter() - start, "jobs": jobs,
                     "load_before": load_before, "load_after": meta_mod.load_average(),
                     "note": "study_wall_s counts only the runs made by this invocation; "
                             "runs taken from the cache add nothing"})
        with open(run_info_path, "w") as f:
            json.dump(info, f, indent=1)
    steps = {}
    for r in runs:
        steps.setdefault(r["config"]["model"], set()).add(r["config"]["steps"])
    info.update({"mode": mode_name + (" (report of the cache)" if args.report_only else ""),
                 "sizes": {"steps": {m: "/".join(map(str, sorted(v))) for m, v in steps.items()},
                           **{k: mode[k] for k in ("batch", "hidden", "eval_size")}},
                 "tasks": list({json.dumps(r["config"]["task"], sort_keys=True): r["config"]["task"]
                                for r in runs}.values()),
                 "models": sorted(steps), "seeds": len({r["config"]["seed"] for r in runs}),
                 "runs": len(runs),
                 "sum_of_run_walls_s": sum(r["result"]["wall_time_s"] for r in runs),
                 "sum_of_run_cpu_s": sum(r["result"].get("cpu_time_s", 0.0) for r in runs),
                 "sgd_implementation": sgd_implementation()})
    info.setdefault("jobs", jobs)
    rows = report.summarise(runs, tuned)
    comps = report.comparisons(runs, tuned)
    with open(os.path.join(args.out, "study.md"), "w") as f:
        f.write(report.markdown(rows, comps, info, report.headline(runs, rows, comps, tuned)))
    with open(os.path.join(args.out, "study.json"), "w") as f:
        json.dump(report.as_json(runs, rows, comps, tuned, info), f, indent=1)
    png = os.path.join(args.out, "study.png")
    drew = report.plot(runs, tuned, png)
    print(f"{len(runs)} runs; wall time {info.get('study_wall_s', 0):.0f} s; wrote {args.out}/study.md, "
          f"study.json" + (", study.png" if drew else " (no matplotlib: no PNG)"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
