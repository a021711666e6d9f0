#!/bin/bash
source /work/venv/bin/activate
cd /tmp
rm -rf /tmp/ab3 && mkdir -p /tmp/ab3
for r in 1 2 3 4 5 6; do
  for b in before now; do
    if [ $b = before ]; then PP=/tmp/before; else PP=/work/main; fi
    PYTHONPATH=$PP timeout 900 python -m gradfast.bench --device cpu --workloads small_lstm --pipelines clip --dtype fp32 --repeats 40 --out /tmp/ab3/$b-$r > /tmp/ab3/$b-$r.log 2>&1
  done
done
