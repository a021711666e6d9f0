#!/usr/bin/env bash
# A GPU session on a lent device machine, in stages that each fit one device call (10 min,
# at most 8 files back from $OUT): logs and raw results go under $OUT (or ./gpu-out).
#
#   bash benchmarks/gpu_session.sh build tests          # call 1: ~2 + ~5 min
#   bash benchmarks/gpu_session.sh sanitizer adam-bench # call 2 (same warm machine)
#   bash benchmarks/gpu_session.sh bench                # call 3: python -m gradfast.bench
#
# With no stage named: build tests. A later call on a cold machine needs `build` again.
# BENCH_ARGS passes extra arguments to python -m gradfast.bench.
set -uo pipefail
OUT=${OUT:-$(pwd)/gpu-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
stages=("$@")
[ ${#stages[@]} -eq 0 ] && stages=(build tests)
{
  echo "stages: ${stages[*]}"
  echo "commit: $(git rev-parse HEAD 2>/dev/null || echo unknown)"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
} 2>&1 | tee -a "$OUT/env.txt"

for stage in "${stages[@]}"; do
  start=$(date +%s)
  case "$stage" in
    build)
      GRADFAST_CUDA=1 GRADFAST_CUDA_ARCHS=${GRADFAST_CUDA_ARCHS:-90-real} \
        CMAKE_BUILD_PARALLEL_LEVEL=16 pip install --no-build-isolation --no-deps -q . \
        > "$OUT/build.log" 2>&1
      echo "build rc=$?" | tee -a "$OUT/env.txt"
      (cd /tmp && python3 -m gradfast info) | tee -a "$OUT/env.txt"
      ;;
    tests)
      # No -x: one call reports every failure (the AGC and one-launch kernels, among others,
      # have never run on a GPU before their first session).
      timeout ${TEST_TIMEOUT:-330} pytest tests -q -rfEs -p no:cacheprovider \
        > "$OUT/tests.log" 2>&1
      echo "tests rc=$?" | tee -a "$OUT/env.txt"
      tail -15 "$OUT/tests.log"
      ;;
    sanitizer)
      # The kernels not yet checked under compute-sanitizer: AGC (memcheck) and the opt-in
      # one-launch clip + Adam (cooperative grid sync: memcheck and synccheck). One log.
      : > "$OUT/sanitizer.log"
      run_tool() {  # tool, test file, -k expression
        echo "=== $1: $2 -k '$3'" >> "$OUT/sanitizer.log"
        timeout ${SANITIZER_TIMEOUT:-120} compute-sanitizer --tool "$1" --error-exitcode 3 \
          python3 -m pytest "$2" -q -p no:cacheprovider -k "$3" >> "$OUT/sanitizer.log" 2>&1
        echo "sanitizer $1 ($2, $3) rc=$?" | tee -a "$OUT/env.txt"
      }
      if command -v compute-sanitizer > /dev/null; then
        run_tool memcheck tests/test_health_agc.py "agc and cuda and not cudasim"
        run_tool memcheck tests/test_adam.py "one_launch and (fallback or skip_nonfinite or misaligned)"
        run_tool synccheck tests/test_adam.py "one_launch and (fallback or skip_nonfinite or misaligned)"
      else
        echo "compute-sanitizer not found" | tee -a "$OUT/env.txt"
      fi
      ;;
    adam-bench)
      # gradfast's clip + Adam with two launches (default) and one (GRADFAST_ADAM_LAUNCHES=1).
      timeout ${ADAM_BENCH_TIMEOUT:-240} python3 -m gradfast.bench.adam_cuda \
        --json "$OUT/adam_cuda.json" > "$OUT/adam_cuda.log" 2>&1
      echo "adam_cuda bench rc=$?" | tee -a "$OUT/env.txt"
      tail -15 "$OUT/adam_cuda.log"
      ;;
    bench)
      # shellcheck disable=SC2086
      timeout ${BENCH_TIMEOUT:-420} python3 -m gradfast.bench --device cuda --out "$OUT/bench" \
        ${BENCH_ARGS:-} > "$OUT/bench.log" 2>&1
      echo "bench rc=$?" | tee -a "$OUT/env.txt"
      tail -40 "$OUT/bench.log"
      ;;
    *)
      echo "unknown stage '$stage' (build, tests, sanitizer, adam-bench, bench)" >&2
      exit 2
      ;;
  esac
  echo "stage $stage: $(( $(date +%s) - start )) s" | tee -a "$OUT/env.txt"
done
