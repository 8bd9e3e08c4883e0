"""Fused convolution, MACE-medium, N = 5,000 nodes, E = 150,000 edges, per-edge weights (GOALS.md):
ours (atomic and deterministic) vs e3nn-jax unfused (gather, FunctionalTensorProduct, segment_sum) and
cuequivariance-jax (segmented_polynomial with gather/scatter indices; its inputs and outputs in ir_mul,
converted outside the timed function) vs openequivariance-jax (TensorProductConv, atomic and
deterministic); and the force-training step (positions → SH → conv → energy →
forces → ‖F‖² → gradient w.r.t. node features and edge weights) with our sh_conv (SH in the kernel) vs
e3nn-jax, cuequivariance-jax and openequivariance-jax (SH from e3nn-jax for both)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import jaxbatmobile as jb
from jaxbatmobile._src import reference

from . import cue_tp, oeq_tp
from .common import Report, Row, run_case
from .peers import cue

SH3 = "0e+1o+2e+3o"


def run(report: Report, num_nodes: int, num_edges: int, dtype: str = "float32", scale: int = 1) -> None:
    m = max(1, 128 // scale)
    i1, io = f"{m}x0e+{m}x1o", f"{m}x0e+{m}x1o+{m}x2e"
    tp = jb.TensorProduct(i1, SH3, io, jb.channelwise_instructions(i1, SH3, io))
    rng = np.random.default_rng(0)
    # Edges sorted by receiver (as in GOALS), ties by sender: the order of a neighbour list, and the one
    # OpenEquivariance's own graphs have (its CoordGraph sorts by (row, col)); all libraries get it.
    senders, receivers = rng.integers(0, num_nodes, num_edges), rng.integers(0, num_nodes, num_edges)
    order = np.lexsort((senders, receivers))
    senders, receivers = (jnp.asarray(a[order], jnp.int32) for a in (senders, receivers))
    keys = jax.random.split(jax.random.key(1), 8)
    sets = [(jax.random.normal(keys[4 * i], (num_nodes, tp.irreps_in1.dim), dtype),
             jax.random.normal(keys[4 * i + 1], (num_edges, 16), dtype),
             jax.random.normal(keys[4 * i + 2], (num_edges, tp.weight_numel), dtype),
             jax.random.normal(keys[4 * i + 3], (num_nodes, tp.irreps_out.dim), dtype)) for i in range(2)]
    item = np.dtype(dtype).itemsize
    # Floor: node features, edge attributes and weights, indices read once; output written once.
    nbytes = (num_nodes * (tp.irreps_in1.dim + tp.irreps_out.dim) + num_edges * (16 + tp.weight_numel)) * item \
        + 2 * num_edges * 4
    ours = lambda x, y, w, g: jb.conv(tp, x, y, w, senders, receivers, num_nodes=num_nodes)  # noqa: E731
    det = lambda x, y, w, g: jb.conv(tp, x, y, w, senders, receivers, num_nodes=num_nodes,  # noqa: E731
                                     deterministic=True)
    e3 = lambda x, y, w, g: reference.conv(tp, x, y, w, senders, receivers, num_nodes, False)  # noqa: E731
    ref64 = lambda x, y, w, g: e3(*(a.astype(jnp.float64) for a in (x, y, w)), g)  # noqa: E731
    tol = 1e-5 if dtype == "float32" else 1e-12
    name = f"conv MACE-medium N={num_nodes:,} E={num_edges:,}"
    libs = (("jaxbatmobile", ours), ("jaxbatmobile det", det), ("e3nn-jax", e3))
    for lib, f in libs:
        run_case(report, workload=f"{name} fwd", library=lib, dtype=dtype, fn=jax.jit(f), input_sets=sets,
                 reference=jax.jit(ref64), tol=tol, nbytes=nbytes, flops=None)
    # cuequivariance-jax: its CUDA kernel on the GPU, its plain-JAX method elsewhere (a check of this code)
    cue_conv = None
    if cue is not None:
        method = "uniform_1d" if jax.default_backend() == "gpu" else "naive"
        cue_conv = cue_tp.channelwise(tp, method, graph=(senders, receivers, num_nodes))
    i1_, io_ = tp.irreps_in1, tp.irreps_out
    if cue_conv is not None:
        cue_sets = [(cue_tp.to_ir_mul(i1_, x), y, w, cue_tp.to_ir_mul(io_, g)) for x, y, w, g in sets]
        cue_ref = lambda x, y, w, g: cue_tp.to_ir_mul(io_, ref64(cue_tp.from_ir_mul(i1_, x), y, w, g))  # noqa: E731
        run_case(report, workload=f"{name} fwd", library="cuequivariance", dtype=dtype,
                 fn=jax.jit(lambda x, y, w, g: cue_conv(x, y, w)), input_sets=cue_sets, reference=jax.jit(cue_ref), tol=tol,
                 nbytes=nbytes, flops=None)
    else:
        report.add(Row(f"{name} fwd", "cuequivariance", dtype, status="skipped: not available"))
    oeq_convs = []  # (library, OeqOp)
    for lib, det_mode in (("openequivariance", False), ("openequivariance det", True)):
        op, status = oeq_tp.conv(tp, senders, receivers, deterministic=det_mode, dtype=dtype)
        if op is None:
            report.add(Row(f"{name} fwd", lib, dtype, status=status))
            continue
        oeq_convs.append((lib, op))
        run_case(report, workload=f"{name} fwd", library=lib, dtype=dtype,
                 fn=jax.jit(lambda x, y, w, g, f=op.fn: f(x, y, w)), input_sets=sets,
                 reference=jax.jit(op.reference(ref64)), tol=tol, nbytes=nbytes, flops=None)

    def fwd_bwd(f):
        def run(x, y, w, g):
            out, vjp = jax.vjp(lambda x, y, w: f(x, y, w, None), x, y, w)
            return (out,) + vjp(g)
        return run

    ref_fb = jax.jit(lambda *a: fwd_bwd(e3)(*(b.astype(jnp.float64) for b in a)))
    for lib, f in libs:
        run_case(report, workload=f"{name} fwd+bwd", library=lib, dtype=dtype, fn=jax.jit(fwd_bwd(f)),
                 input_sets=sets, reference=ref_fb, tol=tol * 10, nbytes=2 * nbytes, flops=None)
    if cue_conv is not None:
        def cue_ref_fb(x, y, w, g):
            out, dx, dy, dw = ref_fb(cue_tp.from_ir_mul(i1_, x), y, w, cue_tp.from_ir_mul(io_, g))
            return cue_tp.to_ir_mul(io_, out), cue_tp.to_ir_mul(i1_, dx), dy, dw
        run_case(report, workload=f"{name} fwd+bwd", library="cuequivariance", dtype=dtype,
                 fn=jax.jit(fwd_bwd(lambda x, y, w, g: cue_conv(x, y, w))), input_sets=cue_sets,
                 reference=cue_ref_fb, tol=tol * 10, nbytes=2 * nbytes, flops=None)
    for lib, op in oeq_convs:
        run_case(report, workload=f"{name} fwd+bwd", library=lib, dtype=dtype,
                 fn=jax.jit(fwd_bwd(lambda x, y, w, g, f=op.fn: f(x, y, w))), input_sets=sets,
                 reference=jax.jit(op.reference(ref_fb, weight_grad=3)), tol=tol * 10, nbytes=2 * nbytes,
                 flops=None)

    # Force-training step (GOALS.md): inputs positions, node features, edge weights.
    pos_sets = [(jax.random.normal(keys[4 * i + 3], (num_nodes, 3), dtype) * 3.0, x, w) for i, (x, _, w, _) in
                enumerate(sets)]

    def force_step(conv_of_vectors):
        def loss(x, w, pos):
            def energy(pos):
                vec = pos[receivers] - pos[senders]
                out = conv_of_vectors(x, vec, w * jnp.exp(-0.01 * jnp.sum(vec**2, -1))[:, None])
                return jnp.sum(out[:, :m] ** 2)  # the scalar outputs
            return jnp.sum(jax.grad(energy)(pos) ** 2)
        return lambda pos, x, w: jax.grad(loss, argnums=(0, 1))(x, w, pos)

    sh = lambda v: reference.spherical_harmonics(v, 3, True, "component")  # noqa: E731
    step_libs = (
        ("jaxbatmobile", lambda x, v, w: jb.sh_conv(tp, x, v, w, senders, receivers, num_nodes=num_nodes)),
        ("jaxbatmobile det", lambda x, v, w: jb.sh_conv(tp, x, v, w, senders, receivers, num_nodes=num_nodes,
                                                        deterministic=True)),
        ("e3nn-jax", lambda x, v, w: reference.conv(tp, x, sh(v), w, senders, receivers, num_nodes, False)),
    )
    step_ref = jax.jit(lambda *a: force_step(step_libs[2][1])(*(b.astype(jnp.float64) for b in a)))
    for lib, f in step_libs:
        run_case(report, workload=f"force step MACE-medium N={num_nodes:,} E={num_edges:,}", library=lib,
                 dtype=dtype, fn=jax.jit(force_step(f)), input_sets=pos_sets, reference=step_ref, tol=tol * 100,
                 nbytes=None, flops=None)
    if cue_conv is not None:  # SH from e3nn-jax (cue has no SH kernel), conv on x in ir_mul
        # (the energy reads the scalar block, laid out alike in ir_mul and mul_ir)
        cue_step = jax.jit(force_step(lambda x, v, w: cue_conv(x, sh(v), w)))
        cue_pos_sets = [(pos, cue_tp.to_ir_mul(i1_, x), w) for pos, x, w in pos_sets]

        def cue_step_ref(pos, x, w):
            dx, dw = step_ref(pos, cue_tp.from_ir_mul(i1_, x), w)
            return cue_tp.to_ir_mul(i1_, dx), dw
        run_case(report, workload=f"force step MACE-medium N={num_nodes:,} E={num_edges:,}",
                 library="cuequivariance", dtype=dtype, fn=cue_step, input_sets=cue_pos_sets,
                 reference=cue_step_ref, tol=tol * 100, nbytes=None, flops=None)
    for lib, op in oeq_convs:  # SH from e3nn-jax, as for cue
        run_case(report, workload=f"force step MACE-medium N={num_nodes:,} E={num_edges:,}", library=lib,
                 dtype=dtype, fn=jax.jit(force_step(lambda x, v, w, f=op.fn: f(x, sh(v), w))),
                 input_sets=pos_sets, reference=op.reference(step_ref, weights_at=2, weight_grad=1), tol=tol * 100,
                 nbytes=None, flops=None)
