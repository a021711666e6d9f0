#!/usr/bin/env bash
# One full GPU session on a lent device machine: build, run every test (CUDA ones
# included), run the benchmark, and leave logs + raw results under $OUT (or ./gpu-out).
# Usage: bash benchmarks/gpu_session.sh [bench args...]
set -uo pipefail
OUT=${OUT:-$(pwd)/gpu-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
{
  echo "commit: $(git rev-parse HEAD 2>/dev/null || echo unknown)"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
} 2>&1 | tee "$OUT/env.txt"

start=$(date +%s)
GRADFAST_CUDA=1 GRADFAST_CUDA_ARCHS=${GRADFAST_CUDA_ARCHS:-90-real} CMAKE_BUILD_PARALLEL_LEVEL=16 \
  pip install --no-build-isolation --no-deps -q . > "$OUT/build.log" 2>&1
echo "build rc=$? in $(( $(date +%s) - start )) s" | tee -a "$OUT/env.txt"
cd /tmp && python3 -m gradfast info | tee -a "$OUT/env.txt"; cd - > /dev/null

# No -x: one call should report every failure (the AGC kernel, among others, has never run
# on a GPU before its first session).
timeout ${TEST_TIMEOUT:-300} pytest tests -q -rfEs > "$OUT/tests.log" 2>&1
echo "tests rc=$?" | tee -a "$OUT/env.txt"
tail -15 "$OUT/tests.log"

if [ "${RUN_SANITIZER:-1}" = 1 ] && command -v compute-sanitizer > /dev/null; then
  # The kernels that have not yet been checked under the sanitizer: AGC (both launches).
  timeout ${SANITIZER_TIMEOUT:-150} compute-sanitizer --tool memcheck --error-exitcode 3 \
    python3 -m pytest tests/test_health_cuda.py -q -k agc -p no:cacheprovider \
    > "$OUT/sanitizer.log" 2>&1
  echo "sanitizer memcheck (agc) rc=$?" | tee -a "$OUT/env.txt"
  tail -5 "$OUT/sanitizer.log"
  # The opt-in one-launch clip + Adam kernel (cooperative grid sync): memcheck and synccheck.
  for tool in memcheck synccheck; do
    timeout ${SANITIZER_TIMEOUT:-150} compute-sanitizer --tool $tool \
      --error-exitcode 3 python3 -m pytest tests/test_adam_cuda.py -q -p no:cacheprovider \
      -k "one_launch and (fallback or skip_nonfinite or misaligned)" > "$OUT/sanitizer_one_launch_$tool.log" 2>&1
    echo "sanitizer $tool (one-launch clip + Adam) rc=$?" | tee -a "$OUT/env.txt"
    tail -5 "$OUT/sanitizer_one_launch_$tool.log"
  done
fi

if [ "${RUN_ADAM_BENCH:-1}" = 1 ]; then
  # gradfast's clip + Adam with two launches (default) and one (GRADFAST_ADAM_LAUNCHES=1).
  timeout ${ADAM_BENCH_TIMEOUT:-240} python3 -m gradfast.bench.adam_cuda \
    --json "$OUT/adam_cuda.json" > "$OUT/adam_cuda.log" 2>&1
  echo "adam_cuda bench rc=$?" | tee -a "$OUT/env.txt"
  tail -15 "$OUT/adam_cuda.log"
fi

if [ "${RUN_BENCH:-1}" = 1 ]; then
  timeout ${BENCH_TIMEOUT:-240} python3 -m gradfast.bench --device cuda --out "$OUT/bench" "$@" \
    > "$OUT/bench.log" 2>&1
  echo "bench rc=$?" | tee -a "$OUT/env.txt"
  tail -40 "$OUT/bench.log"
fi
