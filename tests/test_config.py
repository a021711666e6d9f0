"""gradfast.show_config() and `python -m gradfast info`."""
import json
import os
import subprocess
import sys

import pytest
import torch

import gradfast
from gradfast._native import CUDA_COMPILED, cuda_usable

EXPECTED_TYPES = {
    "gradfast_version": str,
    "torch_version": str,
    "cuda_kernels_compiled": bool,
    "cuda_archs": str,
    "cuda_device_usable": bool,
    "cuda_device_name": (str, type(None)),
    "cpu_simd": str,
    "cpu_threads": int,
    "cpu_backend": str,
}


def _torch_uses_openmp() -> bool:
    return "OpenMP" in torch.__config__.parallel_info().split("ATen parallel backend:")[-1]


def _env():
    env = dict(os.environ)
    pkg_parent = os.path.dirname(os.path.dirname(os.path.abspath(gradfast.__file__)))
    env["PYTHONPATH"] = os.pathsep.join([pkg_parent] + [x for x in [env.get("PYTHONPATH")] if x])
    return env


def _run_info(*args, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "gradfast", "info", *args], env=_env(),
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_show_config_keys_and_types():
    cfg = gradfast.show_config()
    assert isinstance(cfg, dict)
    assert set(cfg) == set(EXPECTED_TYPES)
    for key, typ in EXPECTED_TYPES.items():
        assert isinstance(cfg[key], typ), (key, cfg[key])


def test_show_config_values():
    cfg = gradfast.show_config()
    assert cfg["gradfast_version"] == gradfast.__version__
    assert cfg["gradfast_version"].count(".") >= 2
    assert cfg["torch_version"] == torch.__version__
    assert cfg["cuda_kernels_compiled"] is CUDA_COMPILED
    assert cfg["cuda_device_usable"] is cuda_usable()
    assert cfg["cpu_simd"] in ("generic", "avx2", "avx512")
    assert cfg["cpu_threads"] == torch.get_num_threads() >= 1
    # torch's CPU wheels parallelise with OpenMP, so its runtime is loaded in this process;
    # GRADFAST_CPU_BACKEND=pool asks for gradfast's own threads.
    expected = "openmp" if _torch_uses_openmp() else "pool"
    if os.environ.get("GRADFAST_CPU_BACKEND") == "pool":
        expected = "pool"
    assert cfg["cpu_backend"] == expected
    if cfg["cuda_kernels_compiled"]:
        assert cfg["cuda_archs"].strip(), "compiled CUDA kernels name their architectures"
        assert all(a.startswith(("sm_", "compute_")) for a in cfg["cuda_archs"].split())
    else:
        assert cfg["cuda_archs"] == ""
        assert cfg["cuda_device_usable"] is False
    if cfg["cuda_device_usable"]:
        assert cfg["cuda_device_name"] == torch.cuda.get_device_name()
    else:
        assert cfg["cuda_device_name"] is None


def test_show_config_returns_a_fresh_dict():
    a = gradfast.show_config()
    a["cpu_simd"] = "changed"
    assert gradfast.show_config()["cpu_simd"] != "changed"


def test_cli_info_prints_every_key(tmp_path):
    out = _run_info(tmp_path=tmp_path)
    cfg = gradfast.show_config()
    lines = out.strip().splitlines()
    assert len(lines) == len(cfg)
    printed = {line.split()[0]: line.split(None, 1)[1].strip() if len(line.split()) > 1 else ""
               for line in lines}
    assert set(printed) == set(cfg)
    for key in ("gradfast_version", "torch_version", "cuda_kernels_compiled", "cpu_simd",
                "cuda_device_usable"):
        assert printed[key] == str(cfg[key]), key


def test_cli_info_json(tmp_path):
    printed = json.loads(_run_info("--json", tmp_path=tmp_path))
    cfg = gradfast.show_config()
    assert set(printed) == set(cfg)
    for key, typ in EXPECTED_TYPES.items():
        assert isinstance(printed[key], typ), key
    for key in cfg:
        if key != "cpu_threads":  # the subprocess has its own thread setting
            assert printed[key] == cfg[key], key


def test_cli_rejects_unknown_command(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "gradfast", "bogus"], env=_env(),
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "invalid choice" in proc.stderr


@pytest.mark.parametrize("variable, value, key", [
    ("GRADFAST_CPU_ISA", "generic", "cpu_simd"),      # a cap on the SIMD level
    ("GRADFAST_CPU_BACKEND", "pool", "cpu_backend"),  # gradfast's own threads
])
def test_cli_honours_run_time_settings(tmp_path, variable, value, key):
    env = _env()
    env[variable] = value
    proc = subprocess.run([sys.executable, "-m", "gradfast", "info", "--json"], env=env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)[key] == value


@pytest.mark.skipif(os.environ.get("GRADFAST_EXPECT_CUDA_COMPILED") != "1",
                    reason="set GRADFAST_EXPECT_CUDA_COMPILED=1 where the build must have CUDA")
def test_cuda_kernels_compiled_when_expected():
    cfg = gradfast.show_config()
    assert cfg["cuda_kernels_compiled"] is True
    assert cfg["cuda_archs"].strip()


def test_cpu_path_works_without_a_gpu():
    # On a machine without a usable GPU the module still imports and runs its CPU path.
    if gradfast.show_config()["cuda_device_usable"]:
        pytest.skip("a GPU is usable here")
    g = torch.randn(1000)
    torch.testing.assert_close(gradfast.get_total_norm([g]), torch.linalg.vector_norm(g),
                               rtol=1e-6, atol=0)


def test_set_cpu_backend_switches_and_validates():
    from gradfast._native import _C
    before = _C.cpu_backend()  # GRADFAST_CPU_BACKEND may have chosen it
    try:
        assert _C.set_cpu_backend("pool") == "pool"
        assert gradfast.show_config()["cpu_backend"] == "pool"
        assert _C.set_cpu_backend("auto") == ("openmp" if _torch_uses_openmp() else "pool")
        with pytest.raises(ValueError, match="'auto', 'openmp' or 'pool'"):
            _C.set_cpu_backend("tbb")
    finally:
        _C.set_cpu_backend(before)
