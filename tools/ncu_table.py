"""Prints per-kernel time, instructions and throughputs from `ncu --csv --metrics ...` output (argv[1])."""
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


for i, d in sorted(kernels.items()):
    t = num(d, "gpu__time_duration.sum") / 1e3
    if t < 5:
        continue
    name = re.sub(r"jbm::cuda::\(anonymous namespace\)::|jbm::core::", "", d["name"])[:80]
    print(f"{i:>4} {t:9.1f} us  inst {num(d, 'smsp__inst_executed.sum') / 1e6:8.1f}M"
          f"  dram {num(d, 'dram__throughput.avg.pct_of_peak_sustained_elapsed'):5.1f}%"
          f"  sm {num(d, 'sm__throughput.avg.pct_of_peak_sustained_elapsed'):5.1f}%"
          f"  grid {d.get('launch__grid_size', '')}  {name}")
