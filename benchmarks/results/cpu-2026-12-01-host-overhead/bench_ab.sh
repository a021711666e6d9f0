#!/bin/bash
# Alternating A/B of the bench rows: before (e6bc695) vs now; ratios gradfast/torch per row.
source /work/venv/bin/activate
cd /tmp
rm -rf /tmp/ab && mkdir -p /tmp/ab
for r in 1 2 3 4 5; do
  for b in before now; do
    if [ $b = before ]; then PP=/tmp/before; else PP=/work/main; fi
    PYTHONPATH=$PP timeout 900 python -m gradfast.bench --device cpu --workloads small_lstm,lstm_lm,many_small --pipelines clip,adam/fused --dtype fp32 --repeats 9 --out /tmp/ab/$b-$r > /tmp/ab/$b-$r.log 2>&1
  done
done
echo done
