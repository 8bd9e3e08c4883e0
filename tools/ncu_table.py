"""Prints per-kernel time, instructions and throughputs from `ncu --csv --metrics ...` output (argv[1]);
with --by-name, the total time and launch count per kernel name instead (largest first)."""
import csv
import io
import re
import sys

lines = open(sys.argv[1]).read().splitlines()
start = next(i for i, line in enumerate(lines) if line.startswith('"ID"'))
kernels = {}
for r in csv.DictReader(io.StringIO("\n".join(lines[start:]))):
    kernels.setdefault(int(r["ID"]), {"name": r["Kernel Name"]})[r["Metric Name"]] = r["Metric Value"]


def num(d, key):
    return float(d.get(key, "0").replace(",", "") or 0)


if "--by-name" in sys.argv:  # (ncu segfaulted under jax 0.11.2 here: tools/kernel_times.py instead)
    totals = {}
    for d in kernels.values():
        name = re.sub(r"jbm::cuda::\(anonymous namespace\)::|jbm::core::", "", d["name"])
        name = name.split(">(")[0] + ">" if ">(" in name else name.split("(")[0]  # no parameter list
        t, n = totals.get(name, (0.0, 0))
        totals[name] = (t + num(d, "gpu__time_duration.sum") / 1e3, n + 1)
    total = sum(t for t, _ in totals.values())
    print(f"total {total / 1e3:.2f} ms in {len(kernels)} launches")
    for name, (t, n) in sorted(totals.items(), key=lambda kv: -kv[1][0])[:25]:
        print(f"{t / 1e3:8.3f} ms {100 * t / total:5.1f}% {n:5d}x  {name}")
    sys.exit(0)

for i, d in sorted(kernels.items()):
    t = num(d, "gpu__time_duration.sum") / 1e3
    if t < 5:
        continue
    name = re.sub(r"jbm::cuda::\(anonymous namespace\)::|jbm::core::", "", d["name"])[:80]
    print(f"{i:>4} {t:9.1f} us  inst {num(d, 'smsp__inst_executed.sum') / 1e6:8.1f}M"
          f"  dram {num(d, 'dram__throughput.avg.pct_of_peak_sustained_elapsed'):5.1f}%"
          f"  sm {num(d, 'sm__throughput.avg.pct_of_peak_sustained_elapsed'):5.1f}%"
          f"  grid {d.get('launch__grid_size', '')}  {name}")
