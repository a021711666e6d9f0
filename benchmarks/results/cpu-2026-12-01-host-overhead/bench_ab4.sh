#!/bin/bash
source /work/venv/bin/activate
cd /tmp
rm -rf /tmp/ab4 && mkdir -p /tmp/ab4
for r in 1 2 3 4 5; do
  for b in before study now; do
    case $b in before) PP=/tmp/before;; study) PP=/tmp/study;; now) PP=/work/main;; esac
    PYTHONPATH=$PP timeout 900 python -m gradfast.bench --device cpu --workloads lstm_lm --pipelines clip,adam/fused --dtype fp32 --repeats 15 --out /tmp/ab4/$b-$r > /tmp/ab4/$b-$r.log 2>&1
  done
done
