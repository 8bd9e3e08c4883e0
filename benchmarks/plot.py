"""Speed-up over e3nn-jax per workload and library, from results.jsonl files, as a PNG.

python -m benchmarks.plot OUT.png RESULTS.jsonl [MORE.jsonl ...]   (later files override earlier rows)
Rows without an e3nn-jax time for the same workload and dtype, and failed rows, are left out. The
e3nn-jax time is the baseline even where its row says WRONG (fp32 on a GPU: XLA runs its dots in TF32,
off the fp64 oracle by more than the tolerance): that is what an e3nn-jax user gets.
"""

from __future__ import annotations

import json
import sys


def speedups(paths) -> dict[str, dict[str, float]]:
    """{workload (dtype): {library: e3nn-jax median / library median}}."""
    rows = {}
    for path in paths:
        for line in open(path):
            if line.strip():
                r = json.loads(line)
                baseline = r.get("library") == "e3nn-jax" and r.get("status") in ("ok", "WRONG")
                if (r.get("status") == "ok" or baseline) and r.get("median_ms"):
                    rows[(r["workload"], r["dtype"], r["library"])] = r["median_ms"]
    out = {}
    for (workload, dtype, library), ms in rows.items():
        base = rows.get((workload, dtype, "e3nn-jax"))
        if base and library != "e3nn-jax":
            out.setdefault(f"[{dtype}] {workload}", {})[library] = base / ms
    return out


def plot(paths, png: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = speedups(paths)
    if not data:
        print("# plot: no rows with an e3nn-jax baseline")
        return
    workloads = sorted(data)
    libraries = sorted({lib for d in data.values() for lib in d})
    height = 0.8 / len(libraries)
    fig, ax = plt.subplots(figsize=(11, 0.45 * len(workloads) * max(2, len(libraries)) / 2 + 1.5))
    for i, lib in enumerate(libraries):
        ys = [k + i * height for k in range(len(workloads))]
        xs = [data[w].get(lib, 0.0) for w in workloads]
        ax.barh(ys, xs, height=height, label=lib)
    ax.axvline(1.0, color="k", lw=0.8)
    ax.set_yticks([k + 0.4 - height / 2 for k in range(len(workloads))])
    ax.set_yticklabels([w if len(w) < 80 else w[:77] + "…" for w in workloads], fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("speed-up over e3nn-jax (same process, same inputs; log scale)")
    ax.invert_yaxis()
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    print(f"# plot: {png}")


if __name__ == "__main__":
    plot(sys.argv[2:], sys.argv[1])
