import json, statistics, collections, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
agg = collections.defaultdict(list)
for r in rows:
    res = r["result"]; n = res["tensors"]
    for k in ("clip", "adam", "sgd"):
        if k in res:
            agg[(n, k, r["build"])].append((res[k]["gradfast_us_per_tensor"], res[k]["torch_us_per_tensor"]))
print("| tensors | case | before: gradfast us/tensor (torch) | now: gradfast us/tensor (torch) | now/before, gradfast/torch ratios |")
print("|---:|---|---:|---:|---:|")
for n in (256, 8):
    for k in ("clip", "adam", "sgd"):
        b, a = agg.get((n, k, "before")), agg.get((n, k, "now"))
        if not a: continue
        med = lambda xs, i: statistics.median(x[i] for x in xs)
        rat = lambda xs: statistics.median(x[0] / x[1] for x in xs)
        bs = f"{med(b,0):.3f} ({med(b,1):.3f})" if b else "-"
        ch = f"{rat(a)/rat(b):.2f}" if b else "-"
        print(f"| {n} | {k} | {bs} | {med(a,0):.3f} ({med(a,1):.3f}) | {ch} |")
