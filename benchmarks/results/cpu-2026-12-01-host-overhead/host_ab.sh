#!/bin/bash
source /work/venv/bin/activate
cd /tmp
out=$1
for r in 1 2 3 4 5; do for b in before now; do if [ $b = before ]; then PP=/tmp/before; else PP=/work/main; fi
  for n in 256 8; do
    echo "{\"build\": \"$b\", \"round\": $r, \"result\": $(PYTHONPATH=$PP python /tmp/prof/host_overhead.py --repeats 11 --tensors $n)}" >> $out
  done
done; done
