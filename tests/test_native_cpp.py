"""The native C++ tests (tests/native/*.cpp): compiled with the host compiler and run.

They check host/device code of the core that Python cannot reach on its own, such as the
chunk index math of csrc/cuda/meta_table.h, which is free of CUDA headers.
"""
import os
import shutil
import subprocess
from pathlib import Path

import pytest

NATIVE = Path(__file__).resolve().parent / "native"
SOURCES = sorted(NATIVE.glob("*.cpp"))
CXX = os.environ.get("CXX", "c++")


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.name)
def test_native(source, tmp_path):
    if shutil.which(CXX) is None:
        if os.environ.get("GRADFAST_EXPECT_CUDASIM") == "1":  # CI has a compiler
            pytest.fail(f"{CXX} is missing")
        pytest.skip(f"needs {CXX}")
    exe = tmp_path / source.stem
    subprocess.run([CXX, "-std=c++17", "-O2", "-Wall", "-Wextra", "-Werror", str(source), "-o",
                    str(exe)], check=True, capture_output=True, text=True)
    done = subprocess.run([str(exe)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    last = done.stdout.strip().splitlines()[-1]
    passed, failed = (int(w) for w in last.replace(",", "").split()[::2])
    assert failed == 0 and passed > 0, last


def test_sources_are_found():
    assert SOURCES, f"no C++ tests under {NATIVE}"
