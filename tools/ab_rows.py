"""Plain channelwise TPs, ours only: forward and fwd+bwd medians plus the fwd+bwd's kernels, for A/B of
kernel variants within one machine (build each variant, run this once per build, JBM_VARIANT labels the
lines). Session 11 compared three plain-row kernels this way (benchmarks/NOTES.md).

    JBM_VARIANT=name python3 tools/ab_rows.py [--batch 50000] [--problems "MACE-large uvu,MACE-medium uvu"]

JBM_UVW_GEMM_PER_ROW=0 or 1 sets whether per-row uvw weights go through the CG product + batched GEMM
(tensor_product._UVW_GEMM_PER_ROW, default 1) or the item kernel ("FC uvw per-row"). JBM_UVU_SHAPE=0 runs
full channelwise problems (MACE) on the table-driven kernel instead of their compiled shape's.

Prints per problem the median ms of the forward and of fwd+bwd (out, dx, dy, dw; benchmarks/tp.py's
definition), and the fwd+bwd's kernels (CUPTI via tools/kernel_times.py). Not a peer benchmark: that is
`python -m benchmarks`.
"""
import argparse
import json
import os
import sys

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))
from benchmarks.common import time_fn  # noqa: E402
from benchmarks.tp import SHARED_WEIGHTS, problems  # noqa: E402
from kernel_times import kernel_table  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=50_000)
    ap.add_argument("--problems", default="MACE-large uvu,MACE-medium uvu,NequIP uvu,Nequix layer uvu")
    ap.add_argument("--dtype", default="float32")
    args = ap.parse_args()
    variant = os.environ.get("JBM_VARIANT", "")
    if os.environ.get("JBM_UVW_GEMM_PER_ROW"):  # 0: per-row uvw weights on the item kernel (tensor_product.py)
        from jaxbatmobile._src import tensor_product

        tensor_product._UVW_GEMM_PER_ROW = os.environ["JBM_UVW_GEMM_PER_ROW"] == "1"
        variant += f"+uvw-gemm-per-row={int(tensor_product._UVW_GEMM_PER_ROW)}"
    if os.environ.get("JBM_UVU_SHAPE") == "0":  # full channelwise problems on the table-driven kernel
        from jaxbatmobile._src import tensor_product

        tensor_product._uvu_shape = lambda tp: 0
        variant += "+uvu-shape=0"
    all_problems = problems()
    for name in args.problems.split(","):
        tp = all_problems[name]
        keys = jax.random.split(jax.random.key(0), 8)
        mk = lambda k, d: jax.random.normal(k, (args.batch, d), args.dtype)  # noqa: E731
        dims = (tp.irreps_in1.dim, tp.irreps_in2.dim, tp.weight_numel, tp.irreps_out.dim)
        sets = [tuple(mk(keys[4 * i + j], d) for j, d in enumerate(dims)) for i in range(2)]
        if name in SHARED_WEIGHTS:
            sets = [(x, y, w[0], g) for x, y, w, g in sets]
        fwd = jax.jit(lambda x, y, w, g: tp(x, y, w))

        @jax.jit
        def fwd_bwd(x, y, w, g):
            out, vjp = jax.vjp(tp, x, y, w)
            return (out,) + vjp(g)

        t_f = time_fn(fwd, sets)["median_ms"]
        t_fb = time_fn(fwd_bwd, sets)["median_ms"]
        kernels = [(round(t, 4), n, k[:70]) for t, n, k in kernel_table(fwd_bwd, *sets[0])[:6]]
        print(json.dumps({"variant": variant, "problem": name, "dtype": args.dtype, "fwd_ms": round(t_f, 4),
                          "fwd_bwd_ms": round(t_fb, 4), "kernels": kernels}), flush=True)


if __name__ == "__main__":
    main()
