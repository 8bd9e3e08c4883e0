"""Tensor products at batch 50k, per-row weights: ours vs e3nn-jax (vmapped FunctionalTensorProduct)
vs cuequivariance-jax (the same paths as a segmented polynomial, benchmarks/cue_tp.py) vs
openequivariance-jax (its TensorProduct on the same problem, benchmarks/oeq_tp.py)."""

from __future__ import annotations

import e3nn_jax as e3nn
import jax
import jax.numpy as jnp
import numpy as np

import jaxbatmobile as jb
from jaxbatmobile._src import reference

from . import cue_tp, oeq_tp
from .common import Report, Row, run_case
from .peers import cue

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
    # Nequix's own layer (nequix/model.py): every path writes its own output block (the model sorts and
    # mixes them afterwards), so the output is 5472 wide, not the 704 of the summed "Nequix uvu" above.
    i1 = e3nn.Irreps(f"{m(128)}x0e+{m(64)}x1o+{m(32)}x2e+{m(32)}x3o")
    layer_out, layer_ins = [], []
    for a, (mul, ir1) in enumerate(i1):
        for b, (_, ir2) in enumerate(e3nn.Irreps(SH3)):
            for iro in ir1 * ir2:
                if iro.l <= 3 and iro.p == (-1) ** iro.l:  # the layer's output irreps: 0e, 1o, 2e, 3o
                    layer_ins.append((a, b, len(layer_out), "uvu", True))
                    layer_out.append((mul, iro))
    out["Nequix layer uvu"] = jb.TensorProduct(i1, SH3, e3nn.Irreps(layer_out), layer_ins)
    # Fully connected (uvw): shared weights, as e3nn's FullyConnectedTensorProduct holds them (SHARED_WEIGHTS),
    # and a per-row variant with fewer channels (per-row uvw weights are mul1·mul2·mul_out per row: at
    # 32 channels, 6.5 GB for the batch, and the fp64 reference of the backward did not fit in 80 GB).
    ins = [(0, 0, 0, "uvw", True), (0, 1, 1, "uvw", True), (1, 0, 1, "uvw", True), (1, 1, 0, "uvw", True)]
    for name, c in (("FC uvw", 32), ("FC uvw per-row", 16)):
        i1, i2, io = f"{m(c)}x0e+{m(c)}x1o", f"{m(8)}x0e+{m(8)}x1o", f"{m(c)}x0e+{m(c)}x1o"
        out[name] = jb.TensorProduct(i1, i2, io, ins)
    return out


SHARED_WEIGHTS = {"FC uvw"}  # problems timed with one weight vector for the batch; the others per row


def count(tp, batch, itemsize, shared=False):
    """Bytes (each operand read once, output written once) and FLOPs (2 per multiply-add)."""
    nbytes = (batch * (tp.irreps_in1.dim + tp.irreps_in2.dim + tp.irreps_out.dim)
              + tp.weight_numel * (1 if shared else batch)) * itemsize
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
            shared = name in SHARED_WEIGHTS
            mk = lambda k, d, rows=(batch,): jax.random.normal(k, rows + (d,), dtype)  # noqa: E731
            sets_ = [(mk(keys[4 * i], tp.irreps_in1.dim), mk(keys[4 * i + 1], tp.irreps_in2.dim),
                      mk(keys[4 * i + 2], tp.weight_numel, () if shared else (batch,)),
                      mk(keys[4 * i + 3], tp.irreps_out.dim)) for i in range(sets)]
            nbytes, flops = count(tp, batch, itemsize, shared)

            def fwd_bwd(f):
                def run(x, y, w, g):
                    out, vjp = jax.vjp(lambda x, y, w: f(x, y, w, None), x, y, w)
                    return (out,) + vjp(g)
                return run
            tol = 1e-5 if dtype == "float32" else 1e-12
            ours = lambda x, y, w, g, tp=tp: tp(x, y, w)  # noqa: E731
            e3 = lambda x, y, w, g, tp=tp, s=shared: reference.tensor_product(tp, x, y, w, s)  # noqa: E731
            ref64 = lambda x, y, w, g, tp=tp, s=shared: reference.tensor_product(  # noqa: E731
                tp, *(a.astype(jnp.float64) for a in (x, y, w)), s)
            cue_f = cue_tp.channelwise(tp) if cue is not None and jax.default_backend() == "gpu" else None
            peers = [("jaxbatmobile", ours, sets_, ref64), ("e3nn-jax", e3, sets_, ref64)]
            if cue_f is not None:
                # cue holds x and the output in ir_mul; convert inputs once, and the reference's outputs.
                i1, io = tp.irreps_in1, tp.irreps_out
                cue_sets = [(cue_tp.to_ir_mul(i1, x), y, w, cue_tp.to_ir_mul(io, g)) for x, y, w, g in sets_]
                cue_ref = lambda x, y, w, g: cue_tp.to_ir_mul(io, ref64(cue_tp.from_ir_mul(i1, x), y, w, g))  # noqa: E731
                peers.append(("cuequivariance", lambda x, y, w, g, f=cue_f: f(x, y, w), cue_sets, cue_ref))
            elif name in ("MACE-large uvu", "MACE-medium uvu"):
                report.add(Row(f"TP {name} B={batch:,} fwd", "cuequivariance", dtype, status="skipped: not available"))
            ref_fb64 = lambda *a: fwd_bwd(e3)(*(b.astype(jnp.float64) for b in a))  # noqa: E731
            oeq_op, oeq_status = oeq_tp.tensor_product(tp, dtype, shared)
            if oeq_op is not None:
                peers.append(("openequivariance", lambda x, y, w, g, f=oeq_op.fn: f(x, y, w), sets_,
                              oeq_op.reference(ref64)))
            elif name in ("MACE-large uvu", "MACE-medium uvu") or oeq_status.startswith("failed"):
                report.add(Row(f"TP {name} B={batch:,} fwd", "openequivariance", dtype, status=oeq_status))
            for lib, f, inputs, ref in peers:
                run_case(report, workload=f"TP {name} B={batch:,} fwd", library=lib, dtype=dtype, fn=jax.jit(f),
                         input_sets=inputs, reference=jax.jit(ref), tol=tol, nbytes=nbytes, flops=flops)

            # Floor for fwd+bwd: read x, y, w, g; write out, dx, dy, dw.
            fb_bytes = 2 * nbytes
            for lib, f, inputs, ref in peers:
                if lib == "cuequivariance":
                    i1, io = tp.irreps_in1, tp.irreps_out

                    def ref_fb(x, y, w, g, i1=i1, io=io):
                        out, dx, dy, dw = fwd_bwd(e3)(*(b.astype(jnp.float64) for b in
                                                        (cue_tp.from_ir_mul(i1, x), y, w, cue_tp.from_ir_mul(io, g))))
                        return cue_tp.to_ir_mul(io, out), cue_tp.to_ir_mul(i1, dx), dy, dw
                elif lib == "openequivariance":
                    ref_fb = oeq_op.reference(ref_fb64, weight_grad=3)
                else:
                    ref_fb = ref_fb64
                run_case(report, workload=f"TP {name} B={batch:,} fwd+bwd", library=lib, dtype=dtype,
                         fn=jax.jit(fwd_bwd(f)), input_sets=inputs, reference=jax.jit(ref_fb), tol=tol * 10,
                         nbytes=fb_bytes, flops=3 * flops)
