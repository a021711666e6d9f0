#!/usr/bin/env bash
# The CUDA compiler and static runtime in a manylinux_2_28 (AlmaLinux 8) container, from
# NVIDIA's RHEL 8 repository: x86_64, or sbsa for aarch64. Used by the release workflow
# (.github/workflows/wheels.yml) and cibuildwheel's before-all (pyproject.toml).
set -euo pipefail
CUDA_VERSION=${CUDA_VERSION:-13.0}
case "$(uname -m)" in
  x86_64) repo_arch=x86_64 ;;
  aarch64) repo_arch=sbsa ;;
  *) echo "install_cuda_manylinux.sh: no CUDA repository for $(uname -m)" >&2; exit 1 ;;
esac
curl -fsSL -o /etc/yum.repos.d/cuda-rhel8.repo \
  "https://developer.download.nvidia.com/compute/cuda/repos/rhel8/${repo_arch}/cuda-rhel8.repo"
v=${CUDA_VERSION/./-}
dnf install -y "cuda-nvcc-$v" "cuda-cudart-devel-$v"
/usr/local/cuda/bin/nvcc --version
