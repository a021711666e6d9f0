"""`python -m gradfast.bench` end to end on a tiny subset, and its correctness checks."""
import glob
import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch

import gradfast
from gradfast.bench import checks, pipelines, workloads


def _env_for_subprocess():
    # Run the same gradfast this test imported (the installed wheel in CI, the source tree
    # in a development checkout), whatever the working directory.
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(gradfast.__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    return env


def test_bench_quick_subset_writes_outputs_and_checks_pass(tmp_path):
    out = tmp_path / "results"
    cmd = [sys.executable, "-m", "gradfast.bench", "--device", "cpu", "--quick",
           "--workloads", "small_lstm", "--repeats", "2", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=tmp_path, env=_env_for_subprocess(), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # The PNG needs the bench extra (matplotlib); without it, the test below.
    with_plot = importlib.util.find_spec("matplotlib") is not None
    for ext in ("json", "md", "png") if with_plot else ("json", "md"):
        files = glob.glob(str(out / f"gradfast-bench-cpu-*.{ext}"))
        assert len(files) == 1, (ext, os.listdir(out))
        assert os.path.getsize(files[0]) > 0
        assert files[0] in proc.stdout  # where each output went is printed
    if with_plot:
        with open(glob.glob(str(out / "*.png"))[0], "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    doc = json.load(open(glob.glob(str(out / "*.json"))[0]))
    env = doc["environment"]
    assert env["torch"] == torch.__version__
    assert env["gradfast"] == gradfast.__version__
    assert env["machine"]["cpu_model"]
    assert "commit" in env["git"]
    assert doc["copy_bandwidth"]["GBps"] > 0
    assert doc["check_summary"]["failed"] == 0
    results = doc["results"]
    assert {r["dtype"] for r in results} == {"fp32", "bf16"}
    clip = [r for r in results if r["pipeline"] == "clip"]
    assert len(clip) == 2
    for r in results:
        if r["status"] == "skipped":
            assert r["reason"] and r["speedup"] is None
            continue
        assert r["status"] == "ok", r
        assert r["check"]["passed"] and r["check"]["comparisons"]
        assert len(r["gradfast"]["time_samples_ms"]) == 2
        assert len(r["torch"]["time_samples_ms"]) == 2
        assert r["speedup"] == pytest.approx(
            r["torch"]["time"]["median"] / r["gradfast"]["time"]["median"])
        assert r["gradfast_GBps"] > 0 and r["gradfast_pct_copy"] > 0
    md = open(glob.glob(str(out / "*.md"))[0]).read()
    assert "clip_grad_norm_" in md and "small_lstm" in md
    assert "clip_grad_norm_" in proc.stdout  # the terminal table


def test_adam_pipelines_skip_cleanly_or_run():
    optimizers, why = pipelines.gradfast_optimizers()
    adam = pipelines.PIPELINES["adam/fused"]
    if optimizers is None:
        assert adam.unavailable_reason() == why and "gradfast.optim" in why
    else:
        assert adam.unavailable_reason() is None


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_check_passes_torch_against_itself_and_catches_a_wrong_result(dtype):
    wl = workloads.WORKLOADS["small_lstm"]
    params0, grads0 = workloads.make_tensors(wl, dtype, torch.device("cpu"))
    pipe = pipelines.PIPELINES["clip"]
    a = pipe.build("torch", params0, grads0)
    b = pipe.build("torch", params0, grads0)
    a.step()
    b.step()
    assert pipe.check(a, b, dtype).passed
    a.params[1].grad[3, 5] *= 1.05  # one element 5% off
    result = pipe.check(a, b, dtype)
    assert not result.passed and "MISMATCH" in result.summary()


def test_check_accepts_more_accurate_than_torch():
    # torch's fp32 norm of a long vector is off by ~1e-4 relative; an exact one must pass.
    ref = torch.randn(1 << 20, dtype=torch.float64)
    torch_like = (ref * (1 + 1e-4)).float()
    c = checks.Comparison("x", torch.float32)
    c.add(ref.float(), torch_like, ref)
    assert c.passed
    c = checks.Comparison("x", torch.float32)
    c.add(torch_like, ref.float(), ref)  # the other way round is a mismatch
    assert not c.passed


def test_workload_shapes():
    w = workloads.WORKLOADS
    assert (w["small_lstm"].n_tensors, round(w["small_lstm"].n_elems, -5)) == (4, 400_000)
    assert (w["lstm_lm"].n_tensors, w["lstm_lm"].n_elems) == (11, 14_452_496)
    assert (w["gpt2_small"].n_tensors, w["gpt2_small"].n_elems) == (148, 124_439_808)
    assert w["many_small"].n_tensors == 2000 and 19e6 < w["many_small"].n_elems < 21e6
    assert 0.95e9 < w["gpt_1b"].n_elems < 1.1e9


# Made unimportable in the child: sys.modules[name] = None is how Python marks a module
# that must not be imported (`import matplotlib` then raises ImportError).
_WITHOUT_BENCH_EXTRA = """
import runpy, sys
for name in ("matplotlib", "matplotlib.pyplot", "tqdm"):
    sys.modules[name] = None
sys.argv = ["gradfast.bench"] + sys.argv[1:]
runpy.run_module("gradfast.bench", run_name="__main__", alter_sys=True)
"""


def test_bench_without_matplotlib_or_tqdm_reports_and_says_how_to_get_the_png(tmp_path):
    out = tmp_path / "results"
    cmd = [sys.executable, "-c", _WITHOUT_BENCH_EXTRA, "--device", "cpu", "--quick",
           "--workloads", "small_lstm", "--dtype", "fp32", "--pipelines", "clip",
           "--repeats", "2", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=tmp_path, env=_env_for_subprocess(), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not glob.glob(str(out / "*.png"))
    json_files = glob.glob(str(out / "gradfast-bench-cpu-*.json"))
    assert len(json_files) == 1 and json_files[0] in proc.stdout
    doc = json.load(open(json_files[0]))
    assert doc["check_summary"] == {"passed": 1, "failed": 0, "skipped": 0}
    assert "clip_grad_norm_" in proc.stdout and "small_lstm" in proc.stdout  # the table
    assert "PNG plot: not written: matplotlib is not installed" in proc.stdout
    assert 'pip install "gradfast[bench]"' in proc.stdout
    md = open(glob.glob(str(out / "*.md"))[0]).read()
    assert ".png" not in md  # no link to a plot that was not written


def test_write_png_without_matplotlib_names_the_extra(tmp_path, monkeypatch):
    from gradfast.bench import report

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    why = report.write_png(str(tmp_path / "x.png"), {"results": []})
    assert why is not None and "gradfast[bench]" in why
    assert not (tmp_path / "x.png").exists()
