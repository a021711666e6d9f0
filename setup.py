"""Build gradfast._C with CMake + Ninja.

Environment knobs:
  GRADFAST_CUDA=auto|0|1   compile the CUDA kernels when nvcc is found (auto), never (0),
                           or fail without nvcc (1).
  GRADFAST_CUDA_ARCHS      auto (default): the GPUs visible at build time, else the release
                           list; release: the release list (what tools/build_wheels.sh
                           builds); or a CMake CUDA architecture list, e.g. "90-real".
  GRADFAST_NVCC_THREADS    architectures nvcc compiles in parallel (default 0: one per core).
  GRADFAST_BUILD_TYPE      CMake build type (default Release).
  CMAKE_BUILD_PARALLEL_LEVEL  parallel compile jobs.
"""
import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
# Written next to CMakeCache.txt: the tools that cache was configured with.
ENV_STAMP = "gradfast-build-env.json"


class CMakeExtension(Extension):
    def __init__(self, name: str) -> None:
        super().__init__(name, sources=[])


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(f"building gradfast needs {name} on PATH (pip install {name})")
    return str(Path(path).resolve())


def build_environment() -> dict:
    """What a CMake cache depends on that a new build environment can change."""
    import pybind11

    return {"cmake": _tool("cmake"), "ninja": _tool("ninja"), "python": sys.executable,
            "pybind11": str(Path(pybind11.get_cmake_dir()).resolve())}


def refresh_stale_cache(build_dir: Path, env: dict) -> None:
    """Start afresh when the cache was configured by other tools.

    pip's isolated builds install cmake, ninja and pybind11 in a temporary environment and
    delete it afterwards, and the in-tree build/ directory outlives it: the next
    `pip install .` would find a CMakeCache.txt naming a ninja that no longer exists. A new
    environment recompiles everything anyway (the include paths changed), so nothing is lost
    by starting from an empty directory.
    """
    stamp = build_dir / ENV_STAMP
    if not (build_dir / "CMakeCache.txt").exists():
        return
    try:
        old = json.loads(stamp.read_text())
    except (OSError, ValueError):
        old = None
    if old != env:
        print(f"gradfast: the CMake cache in {build_dir} was configured by another build "
              "environment; starting afresh", flush=True)
        shutil.rmtree(build_dir)


class CMakeBuild(build_ext):
    def build_extension(self, ext: Extension) -> None:
        ext_path = Path(self.get_ext_fullpath(ext.name)).resolve()
        out_dir = ext_path.parent
        # One build directory per interpreter in the checkout, for `pip install .` and
        # `pip install -e .` alike (setuptools gives editable builds a new temporary
        # build_temp each time): a rebuild without build isolation is incremental.
        tag = f"{sysconfig.get_platform()}-{sys.implementation.cache_tag}"
        build_dir = ROOT / "build" / f"cmake-{tag}"
        env = build_environment()
        refresh_stale_cache(build_dir, env)
        build_dir.mkdir(parents=True, exist_ok=True)
        cfg = os.environ.get("GRADFAST_BUILD_TYPE", "Release")
        args = [
            env["cmake"], str(ROOT), "-G", "Ninja",
            f"-DCMAKE_MAKE_PROGRAM={env['ninja']}",
            f"-DCMAKE_BUILD_TYPE={cfg}",
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={out_dir}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-Dpybind11_DIR={env['pybind11']}",
            f"-DGRADFAST_CUDA={os.environ.get('GRADFAST_CUDA', 'auto')}",
            # Always passed, so that a value from an earlier build never lingers in the cache.
            f"-DGRADFAST_CUDA_ARCHS={os.environ.get('GRADFAST_CUDA_ARCHS') or 'auto'}",
            f"-DGRADFAST_NVCC_THREADS={os.environ.get('GRADFAST_NVCC_THREADS') or '0'}",
            f"-DGRADFAST_VERSION={self.distribution.get_version()}",
        ]
        subprocess.run(args, cwd=build_dir, check=True)
        (build_dir / ENV_STAMP).write_text(json.dumps(env, indent=1) + "\n")
        jobs = os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL", str(os.cpu_count() or 2))
        subprocess.run([env["cmake"], "--build", ".", "-j", jobs], cwd=build_dir, check=True)


setup(
    ext_modules=[CMakeExtension("gradfast._C")],
    cmdclass={"build_ext": CMakeBuild},
    zip_safe=False,
)
