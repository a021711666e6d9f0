"""Runs configs in parallel processes, with a progress bar, and resumes from a cache.

The cache is a JSONL file with one finished run per line ({"key", "config", "result"}),
keyed by a hash of the run's config: an interrupted study picks up where it stopped, and a
line is only written once its run has finished (a half-written last line is ignored).
"""
from __future__ import annotations

import json
import multiprocessing
import os
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from typing import Dict, List

from .plan import config_key
from .train import run_one


def load_cache(path: str) -> Dict[str, dict]:
    done: Dict[str, dict] = {}
    if not os.path.exists(path):
        return done
    with open(path) as f:
        for line in f:
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue  # an interrupted write
            done[entry["key"]] = entry
    return done


class _Progress:
    """tqdm when it is installed, else a line every ~5% on stderr."""

    def __init__(self, total: int, desc: str) -> None:
        self.total, self.n, self.desc, self._last = total, 0, desc, -1
        try:
            from tqdm import tqdm
            self._bar = tqdm(total=total, desc=desc, unit="run", dynamic_ncols=True)
        except ImportError:
            self._bar = None

    def update(self, note: str) -> None:
        self.n += 1
        if self._bar is not None:
            self._bar.set_postfix_str(note, refresh=False)
            self._bar.update(1)
            return
        pct = 100 * self.n // max(self.total, 1)
        if pct // 5 != self._last or self.n == self.total:
            self._last = pct // 5
            print(f"{self.desc}: {self.n}/{self.total} ({pct}%) {note}", file=sys.stderr,
                  flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def _cost(config: dict) -> float:
    """Rough relative cost, so the longest runs start first (better packing)."""
    task = config["task"]
    length = task.get("length") or (2 * task["symbols"] + task["delay"] + 1)
    return config["steps"] * length * (1.5 if config["model"] == "rnn" else 1.0)


def run_all(configs: List[dict], cache_path: str, jobs: int, desc: str,
            run_missing: bool = True) -> List[dict]:
    """Every config's {"key", "config", "result"}, running only those not in the cache
    (with run_missing=False: only the cached ones, for a report of a partial study)."""
    done = load_cache(cache_path)
    keyed = [(config_key(c), c) for c in configs]
    todo = {k: c for k, c in keyed if k not in done}
    if not run_missing:
        print(f"{desc}: {len(keyed) - len(todo)} of {len(keyed)} runs cached, reporting "
              "those only", file=sys.stderr, flush=True)
        return [done[k] for k, _ in keyed if k in done]
    if not todo:
        print(f"{desc}: all {len(keyed)} runs cached", file=sys.stderr, flush=True)
    else:
        print(f"{desc}: {len(keyed) - len(todo)} of {len(keyed)} runs cached, "
              f"{len(todo)} to run on {jobs} process(es)", file=sys.stderr, flush=True)
        # Seed by seed (so that a study stopped early has every method on its first seeds),
        # the longest runs first within a seed (better packing).
        order = sorted(todo.items(), key=lambda kc: (kc[1]["seed"], -_cost(kc[1])))
        bar = _Progress(len(order), desc)
        with open(cache_path, "a") as cache:
            def record(key, config, result):
                entry = {"key": key, "config": config, "result": result,
                         "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
                cache.write(json.dumps(entry) + "\n")
                cache.flush()
                done[key] = entry
                bar.update(f"{config['model']} {config['method']['kind']} "
                           f"{result['wall_time_s']:.1f}s")

            if jobs <= 1:
                for key, config in order:
                    record(key, config, run_one(config))
            else:
                ctx = multiprocessing.get_context("spawn")
                with ProcessPoolExecutor(jobs, mp_context=ctx) as pool:
                    pending = {pool.submit(run_one, c): (k, c) for k, c in order}
                    while pending:
                        finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                        for fut in finished:
                            key, config = pending.pop(fut)
                            record(key, config, fut.result())
        bar.close()
    return [done[k] for k, _ in keyed]
