import glob, json, statistics, collections, sys
root = sys.argv[1] if len(sys.argv) > 1 else "/tmp/ab"
rows = collections.defaultdict(lambda: collections.defaultdict(list))
for b in ("before", "now"):
    for f in sorted(glob.glob(f"{root}/{b}-*/*.json")):
        d = json.load(open(f))
        for r in d["results"]:
            if r["status"] != "ok":
                continue
            key = (r["workload"], r["label"])
            g, t = r["gradfast"]["time"]["median"], r["torch"]["time"]["median"]
            rows[key][b].append((g, t, t / g))
print("| workload | pipeline | before: gradfast ms, speedup (median of runs) | now: gradfast ms, speedup | runs |")
print("|---|---|---:|---:|---:|")
for key, v in rows.items():
    def s(b):
        xs = v[b]
        return f"{statistics.median(x[0] for x in xs):.3f} ms, {statistics.median(x[2] for x in xs):.2f}x [{min(x[2] for x in xs):.2f}-{max(x[2] for x in xs):.2f}]"
    print(f"| {key[0]} | {key[1]} | {s('before')} | {s('now')} | {len(v['before'])}+{len(v['now'])} |")
