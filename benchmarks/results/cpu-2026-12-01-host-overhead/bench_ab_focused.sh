#!/bin/bash
# Alternating A/B rounds of one bench selection across builds.
# usage: bench_ab_focused.sh WORKLOADS PIPELINES REPEATS ROUNDS OUT [BUILDS]
#   BUILDS: space-separated names among before (/tmp/before), study (/tmp/study), now (the
#   editable install); default "before now". Each round runs every build once, in order.
# The series of README.md:
#   bench_ab_focused.sh small_lstm adam/fused 40 6 /tmp/ab2
#   bench_ab_focused.sh small_lstm clip 40 6 /tmp/ab3
#   bench_ab_focused.sh lstm_lm clip,adam/fused 15 5 /tmp/ab4 "before study now"
source /work/venv/bin/activate
cd /tmp
workloads=$1 pipelines=$2 repeats=$3 rounds=$4 out=$5 builds=${6:-"before now"}
rm -rf "$out" && mkdir -p "$out"
for r in $(seq 1 "$rounds"); do
  for b in $builds; do
    case $b in before) PP=/tmp/before;; study) PP=/tmp/study;; now) PP=/work/main;; esac
    PYTHONPATH=$PP timeout 900 python -m gradfast.bench --device cpu --workloads "$workloads" \
      --pipelines "$pipelines" --dtype fp32 --repeats "$repeats" --out "$out/$b-$r" \
      > "$out/$b-$r.log" 2>&1
  done
done
