"""Tensor products at batch 50k, per-row weights: ours vs e3nn-jax (vmapped FunctionalTensorProduct)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import jaxbatmobile as jb
from jaxbatmobile._src import reference

from .common import Report, run_case

SH3 = "0e+1o+2e+3o"


def problems(scale: int = 1) -> dict:
    """The goal table's TPs; ``scale`` divides multiplicities (CPU mode)."""
    m = lambda k: max(1, k // scale)  # noqa: E731
    out = {}
    for name, (i1, i2, io) in {
        "MACE-large uvu": (f"{m(128)}x0e+{m(128)}x1o+{m(128)}x2e", SH3, f"{m(128)}x0e+{m(128)}x1o+{m(128)}x2e+{m(128)}x3o"),
        "MACE-medium uvu": (f"{m(128)}x0e+{m(128)}x1o", SH3, f"{m(128)}x0e+{m(128)}x1o+{m(128)}x2e"),
        "NequIP uvu": (f"{m(64)}x0e+{m(64)}x0o+{m(32)}x1o+{m(32)}x1e+{m(16)}x2e+{m(16)}x2o", "0e+1o+2e",
                       f"{m(64)}x0e+{m(64)}x0o+{m(32)}x1o+{m(32)}x1e+{m(16)}x2e+{m(16)}x2o"),
        "Nequix uvu": (f"{m(128)}x0e+{m(64)}x1o+{m(32)}x2e+{m(32)}x3o", SH3, f"{m(128)}x0e+{m(64)}x1o+{m(32)}x2e+{m(32)}x3o"),
    }.items():
        out[name] = jb.TensorProduct(i1, i2, io, jb.channelwise_instructions(i1, i2, io))
    i1, i2, io = f"{m(32)}x0e+{m(32)}x1o", f"{m(8)}x0e+{m(8)}x1o", f"{m(32)}x0e+{m(32)}x1o"
    ins = [(0, 0, 0, "uvw", True), (0, 1, 1, "uvw", True), (1, 0, 1, "uvw", True), (1, 1, 0, "uvw", True)]
    out["FC uvw"] = jb.TensorProduct(i1, i2, io, ins)
    return out


def count(tp, batch, itemsize):
    """Bytes (each operand read once, output written once) and FLOPs (2 per multiply-add)."""
    nbytes = batch * (tp.irreps_in1.dim + tp.irreps_in2.dim + tp.weight_numel + tp.irreps_out.dim) * itemsize
    t = tp._tables
    flops = 0
    for row in t.paths:
        mode, mul1, mul2, mulo = (int(v) for v in row[:4])
        nnz = int(row[12] - row[11])
        items = mul1 * mul2 * (mulo if mode == 1 else 1)
        flops += items * nnz * 2 * 3
    return nbytes, batch * flops


def run(report: Report, batch: int, dtypes, scale: int = 1, names=None, sets: int = 2) -> None:
    for name, tp in problems(scale).items():
        if names and name not in names:
            continue
        for dtype in dtypes:
            itemsize = np.dtype(dtype).itemsize
            keys = jax.random.split(jax.random.key(batch), 4 * sets)
            mk = lambda k, d: jax.random.normal(k, (batch, d), dtype)  # noqa: E731
            sets_ = [(mk(keys[4 * i], tp.irreps_in1.dim), mk(keys[4 * i + 1], tp.irreps_in2.dim),
                      mk(keys[4 * i + 2], tp.weight_numel), mk(keys[4 * i + 3], tp.irreps_out.dim)) for i in range(sets)]
            nbytes, flops = count(tp, batch, itemsize)
            tol = 1e-5 if dtype == "float32" else 1e-12
            ours = lambda x, y, w, g, tp=tp: tp(x, y, w)  # noqa: E731
            e3 = lambda x, y, w, g, tp=tp: reference.tensor_product(tp, x, y, w, False)  # noqa: E731
            ref64 = lambda x, y, w, g, tp=tp: reference.tensor_product(  # noqa: E731
                tp, *(a.astype(jnp.float64) for a in (x, y, w)), False)
            for lib, f in (("jaxbatmobile", ours), ("e3nn-jax", e3)):
                run_case(report, workload=f"TP {name} B={batch:,} fwd", library=lib, dtype=dtype, fn=jax.jit(f),
                         input_sets=sets_, reference=ref64, tol=tol, nbytes=nbytes, flops=flops)

            def fwd_bwd(f):
                def run(x, y, w, g):
                    out, vjp = jax.vjp(lambda x, y, w: f(x, y, w, None), x, y, w)
                    return (out,) + vjp(g)
                return run

            ref_fb = jax.jit(lambda *a: fwd_bwd(e3)(*(b.astype(jnp.float64) for b in a)))  # noqa: E731
            # Floor for fwd+bwd: read x, y, w, g; write out, dx, dy, dw.
            fb_bytes = 2 * nbytes
            for lib, f in (("jaxbatmobile", ours), ("e3nn-jax", e3)):
                run_case(report, workload=f"TP {name} B={batch:,} fwd+bwd", library=lib, dtype=dtype,
                         fn=jax.jit(fwd_bwd(f)), input_sets=sets_, reference=ref_fb, tol=tol * 10,
                         nbytes=fb_bytes, flops=3 * flops)
