"""examples/clipping_study.py: the --quick mode runs end to end, writes outputs that parse,
and resumes from its cache; its statistics and its validation-only choice of the tuned
threshold are right. (The pipeline, not the study's conclusions: no timings here.)"""
import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "clipping_study.py"
PACKAGE = ROOT / "examples" / "clipstudy"


def _env():
    env = dict(os.environ)
    # The gradfast this process imported (the installed wheel in CI), not the source tree.
    import gradfast

    pkg_parent = os.path.dirname(os.path.dirname(os.path.abspath(gradfast.__file__)))
    env["PYTHONPATH"] = os.pathsep.join([pkg_parent, env.get("PYTHONPATH", "")])
    return env


def _clipstudy(module):
    """Import examples/clipstudy/<module> by file location (no sys.path edits)."""
    if "clipstudy" not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            "clipstudy", PACKAGE / "__init__.py", submodule_search_locations=[str(PACKAGE)])
        pkg = importlib.util.module_from_spec(spec)
        sys.modules["clipstudy"] = pkg
        spec.loader.exec_module(pkg)
    return importlib.import_module(f"clipstudy.{module}")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("study")
    cmd = [sys.executable, str(SCRIPT), "--quick", "--out", str(out)]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=_env(),
                           cwd=str(out))
    assert first.returncode == 0, first.stdout + first.stderr
    return out, cmd, first


def test_quick_mode_writes_every_output(quick_run):
    out, _, proc = quick_run
    data = json.loads((out / "study.json").read_text())
    meta = data["meta"]
    for key in ("commit", "machine", "torch", "sgd_implementation", "study_wall_s"):
        assert meta[key], key
    assert meta["mode"] == "quick"
    methods = _clipstudy("methods")
    per_group = (len(methods.comparison_methods()) + len(methods.AUTOCLIP_EXTRA)
                 + len(methods.fused_methods()))
    groups = len(meta["tasks"]) * len(meta["models"])
    assert len(data["runs"]) == groups * per_group * meta["seeds"]
    kinds = {r["config"]["method"]["kind"] for r in data["runs"]}
    assert kinds == {"none", "fixed", "autoclip", "agc", "fused_adam", "sgd"}
    for r in data["runs"]:
        res = r["result"]
        assert {"test_error", "test_accuracy", "val_error", "diverged",
                "wall_time_s"} <= set(res)
        assert 0.0 <= res["test_accuracy"] <= 1.0
    # the fused runs use the threshold the sweep chose for their (task, model)
    tuned = {(json.dumps(t["task"], sort_keys=True), t["model"]): t["max_norm"]
             for t in data["tuned_thresholds"]}
    assert len(tuned) == groups
    for r in data["runs"]:
        c = r["config"]
        if c["method"]["kind"] in ("fused_adam", "sgd"):
            assert c["method"]["max_norm"] == tuned[(json.dumps(c["task"], sort_keys=True),
                                                     c["model"])]
    assert len(data["summary"]) == groups * per_group
    # the Markdown table: one section per task, one row per (model, method)
    md = (out / "study.md").read_text()
    assert md.count("\n## ") == len(meta["tasks"]) + 2  # + the headline and the ratios
    rows = [line for line in md.splitlines() if line.startswith("| RNN |") or
            line.startswith("| LSTM |")]
    assert len(rows) == groups * per_group
    assert md.count("★") >= groups
    assert (out / "runs.jsonl").read_text().count("\n") == len(data["runs"])
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return
    assert (out / "study.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_quick_mode_resumes_from_its_cache(quick_run):
    out, cmd, _ = quick_run
    lines_before = (out / "runs.jsonl").read_text().count("\n")
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=_env(),
                           cwd=str(out))
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stderr.count("runs cached") == 2, again.stderr  # both phases
    assert "to run" not in again.stderr
    assert (out / "runs.jsonl").read_text().count("\n") == lines_before


def test_statistics():
    stats = _clipstudy("stats")
    xs = [1.0, 2.0, 3.0, 4.0, 5.0]
    assert stats.mean(xs) == 3.0
    assert math.isclose(stats.std(xs), math.sqrt(2.5))
    lo, hi = stats.t_interval(xs)  # 3 +- 2.776 * sqrt(2.5) / sqrt(5)
    assert math.isclose(hi - 3.0, 2.776 * math.sqrt(0.5), rel_tol=1e-9)
    assert math.isclose(lo + hi, 6.0)
    lo, hi = stats.wilson(0, 5)  # the textbook value: [0, 0.4345]
    assert lo == 0.0 and math.isclose(hi, 0.4345, abs_tol=1e-3)
    lo, hi = stats.wilson(5, 5)
    assert math.isclose(lo, 1 - 0.4345, abs_tol=1e-3) and hi == 1.0
    ratio, lo, hi = stats.paired_ratio([2.0, 4.0, 8.0], [1.0, 2.0, 4.0])
    assert math.isclose(ratio, 2.0) and math.isclose(lo, 2.0) and math.isclose(hi, 2.0)


def _fake(c, seed, val, test, chance=1 / 6):
    return {"config": {"task": {"name": "adding", "length": 200}, "model": "lstm",
                       "method": {"kind": "fixed", "max_norm": c}, "seed": seed},
            "result": {"val_error": val, "test_error": test, "chance_error": chance}}


def test_tuned_threshold_is_chosen_on_validation_only():
    plan = _clipstudy("plan")
    # threshold 1.0 is best on validation, 3.0 on test: the choice must be 1.0
    runs = [_fake(1.0, s, 0.01, 0.05) for s in range(3)]
    runs += [_fake(3.0, s, 0.02, 0.001) for s in range(3)]
    runs += [_fake(0.1, s, "nan", 0.0001) for s in range(3)]  # diverged on validation
    (choice,) = plan.tuned_thresholds(runs).values()
    assert choice["max_norm"] == 1.0
    # a diverged (non-finite) validation error counts as chance, not as missing
    assert math.isclose(choice["val_error_by_threshold"][0.1], 1 / 6)
