"""Build gradfast._C with CMake + Ninja.

Environment knobs:
  GRADFAST_CUDA=auto|0|1   compile the CUDA kernels when nvcc is found (auto), never (0),
                           or fail without nvcc (1).
  GRADFAST_CUDA_ARCHS      CMake CUDA architecture list, e.g. "90" or "80-real;90".
  GRADFAST_BUILD_TYPE      CMake build type (default Release).
  CMAKE_BUILD_PARALLEL_LEVEL  parallel compile jobs.
"""
import os
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


class CMakeExtension(Extension):
    def __init__(self, name: str) -> None:
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    def build_extension(self, ext: Extension) -> None:
        import pybind11

        ext_path = Path(self.get_ext_fullpath(ext.name)).resolve()
        out_dir = ext_path.parent
        build_dir = Path(self.build_temp).resolve() / "cmake"
        build_dir.mkdir(parents=True, exist_ok=True)
        cfg = os.environ.get("GRADFAST_BUILD_TYPE", "Release")
        args = [
            "cmake", str(ROOT), "-G", "Ninja",
            f"-DCMAKE_BUILD_TYPE={cfg}",
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={out_dir}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            f"-DGRADFAST_CUDA={os.environ.get('GRADFAST_CUDA', 'auto')}",
            f"-DGRADFAST_VERSION={self.distribution.get_version()}",
        ]
        archs = os.environ.get("GRADFAST_CUDA_ARCHS")
        if archs:
            args.append(f"-DGRADFAST_CUDA_ARCHS={archs}")
        subprocess.run(args, cwd=build_dir, check=True)
        jobs = os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL", str(os.cpu_count() or 2))
        subprocess.run(["cmake", "--build", ".", "-j", jobs], cwd=build_dir, check=True)


setup(
    ext_modules=[CMakeExtension("gradfast._C")],
    cmdclass={"build_ext": CMakeBuild},
    zip_safe=False,
)
