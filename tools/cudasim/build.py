"""Build and load cudasim's module: gradfast's _C with csrc/cuda compiled for the CPU.

The build lives in build/cudasim (GRADFAST_CUDASIM_BUILD overrides) and is incremental, so
only the first test run on a machine pays for it (about a minute on two cores).
"""
import ctypes
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def missing_tool():
    """The first build tool that is missing, or None."""
    for tool in ("cmake", "ninja", os.environ.get("CXX", "c++")):
        if shutil.which(tool) is None:
            return tool
    try:
        import pybind11
    except ImportError:
        return "pybind11"
    return None if pybind11.get_cmake_dir() else "pybind11's CMake files"


def _run(args, cwd=None):
    done = subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"cudasim build failed: {' '.join(map(str, args))}\n"
                           f"{done.stdout[-6000:]}\n{done.stderr[-6000:]}")


def build(build_dir=None, sanitize=None) -> Path:
    """Configure and build; returns the module's path. sanitize: a -fsanitize= list
    (default: GRADFAST_CUDA_SIM_SANITIZE); the process then needs the sanitizer's runtime
    preloaded, e.g. LD_PRELOAD=$(c++ -print-file-name=libasan.so)."""
    import pybind11

    if sanitize is None:
        sanitize = os.environ.get("GRADFAST_CUDA_SIM_SANITIZE", "")
    out = Path(build_dir or os.environ.get("GRADFAST_CUDASIM_BUILD") or ROOT / "build" / "cudasim")
    out = out.resolve()
    lib = out / "lib"
    _run(["cmake", "-S", ROOT, "-B", out, "-G", "Ninja", "-DCMAKE_BUILD_TYPE=RelWithDebInfo",
          "-DGRADFAST_CUDA_SIM=ON", "-DGRADFAST_CUDA=0", f"-DPython_EXECUTABLE={sys.executable}",
          f"-Dpybind11_DIR={pybind11.get_cmake_dir()}", f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={lib}",
          f"-DGRADFAST_CUDA_SIM_SANITIZE={sanitize}"])
    _run(["cmake", "--build", out, "-j", os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL", "2")])
    return next(lib.glob("_C*.so"))


def load(path: Path):
    """Import the module at `path` as gradfast_cudasim._C (beside the real gradfast._C).
    module.launches() counts the kernels the simulator has started."""
    spec = importlib.util.spec_from_file_location("gradfast_cudasim._C", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    counter = ctypes.CDLL(str(path)).gfsim_launches  # the same, already loaded library
    counter.restype = ctypes.c_uint64
    module.launches = counter
    return module


if __name__ == "__main__":
    print(build())
