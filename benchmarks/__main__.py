"""Entry point: python -m benchmarks [--cpu] [--only sh,tp,...] [--out benchmarks/results]

On a GPU: full sizes, peers included, JSON lines + Markdown table under --out.
--cpu (or no GPU): small sizes and short timing loops, SH, TP and conv in under a minute on 2 cores (the
small Nequix model with --only nequix), our CPU handlers vs e3nn-jax on XLA:CPU.
"""

from __future__ import annotations

import argparse
import pathlib

import jax

from . import common, conv, nequix, plot, sh, tp


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cpu", action="store_true", help="small sizes on the CPU")
    ap.add_argument("--only", default=None,
                    help="comma-separated workload families: sh,tp,conv (the default) and nequix (on request)")
    ap.add_argument("--out", default=None, help="folder for results.jsonl, results.md and speedup.png")
    ap.add_argument("--fp64", action="store_true", help="also time float64")
    ap.add_argument("--problems", default=None,
                    help="comma-separated TP problems (default: all), e.g. 'MACE-large uvu,MACE-medium uvu'")
    args = ap.parse_args()

    jax.config.update("jax_enable_x64", True)
    if args.cpu:  # before anything asks jax for a backend: afterwards the platform is fixed
        jax.config.update("jax_platforms", "cpu")
    on_gpu = jax.default_backend() == "gpu"
    bandwidth = common.measure_copy_bandwidth(1 << 30 if on_gpu else 1 << 26)
    out = pathlib.Path(args.out) if args.out else None
    if out:
        out.mkdir(parents=True, exist_ok=True)
    report = common.Report(bandwidth, timing=None if on_gpu else common.CPU_TIMING,
                           stream=out / "results.jsonl" if out else None)
    print(f"# {report.meta}", flush=True)
    dtypes = ["float32"] + (["float64"] if args.fp64 else [])
    # The default families are the workloads: on the H100 they run in one 600 s device call (419 s,
    # 2026-11-23, with every peer). The Nequix model rows come on request (--only nequix): its MD and
    # training steps with all paths took more than one call on their own (session 8), and on the CPU its
    # compiles alone take ~35 s of the smoke run's minute.
    families = set((args.only or "sh,tp,conv").split(","))
    names = args.problems.split(",") if args.problems else None
    if "sh" in families:
        sh.run(report, sizes=[20_000, 2_000_000] if on_gpu else [20_000], dtypes=dtypes)
    if "tp" in families:
        if on_gpu:
            tp.run(report, batch=50_000, dtypes=["float32"], names=names)
            if args.fp64:
                tp.run(report, batch=50_000, dtypes=["float64"], names=["MACE-medium uvu"])
        else:
            tp.run(report, batch=256, dtypes=["float32"], scale=16, names=names)

    if "conv" in families:
        if on_gpu:
            conv.run(report, num_nodes=5_000, num_edges=150_000)
        else:
            conv.run(report, num_nodes=200, num_edges=2_000, scale=16)

    if "nequix" in families:
        # A model runs in the dtype its inputs and initialisers give; with x64 on, Nequix's one-hot
        # species features and parameter initialisers are float64. Its fp32 rows need x64 off.
        with jax.enable_x64(False):
            nequix.run(report, small=not on_gpu)

    md = report.markdown()
    if out:
        (out / "results.jsonl").write_text(report.jsonl())
        (out / "results.md").write_text(md)
        try:
            plot.plot([out / "results.jsonl"], str(out / "speedup.png"))
        except ImportError:
            print("# plot skipped: matplotlib is not installed")
    print()
    print(md)


if __name__ == "__main__":
    main()
