"""Times each role of the conv on its own, for kernel work (not a peer benchmark): the forward (slot z),
the gradients in x (slot x, scatter to senders), y and w each asked for alone, the sets dy+dw, dx+dw and
dx+dy+dw (fused passes), and the force-training step (every kernel listed), each jitted alone. Per role: the first call (trace + compile + run), the host-timed median of 20 calls (includes
launch latency and XLA's index work) and the GPU time of one call by kernel (jax's profiler,
tools/kernel_times.py), which is what to compare between two builds.

    python tools/time_conv_parts.py [PROBLEM ...]     (tools/problems.py graphs; default mace-medium)
    JBM_PARTS_ROLES=fwd,force python tools/time_conv_parts.py     (only those roles)

A/B of two builds on one machine (benchmark medians differ ~15% between H100 machines): install each
non-editable into its own folder, e.g. `pip install --no-build-isolation --no-deps --target /tmp/new .`
(an editable install's import hook wins over PYTHONPATH: uninstall it first), then alternate
`PYTHONPATH=/tmp/old:...` and `PYTHONPATH=/tmp/new:...` runs (benchmarks/results/h100-2026-11-23-s9-ab.md). JBM_UVU_SHAPE=0 runs full
channelwise problems (MACE) on the table-driven kernels instead of their compiled shape's: an A/B of
the two within one build.
"""
import os
import sys
import time

import jax
import numpy as np
from kernel_times import kernel_table
from problems import PROBLEMS, inputs

import jaxbatmobile as jb

if os.environ.get("JBM_UVU_SHAPE") == "0":  # full channelwise problems on the table-driven kernels
    from jaxbatmobile._src import tensor_product

    tensor_product._uvu_shape = lambda tp: 0


# JBM_PARTS_ROLES=fwd,force times only those roles (all by default).
ROLES = [r for r in os.environ.get("JBM_PARTS_ROLES", "").split(",") if r]


def host_median_ms(f, *args, runs=20):
    jax.block_until_ready(f(*args))
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        jax.block_until_ready(f(*args))
        times.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(times))


print(f"jaxbatmobile from {jb.__file__}", flush=True)
for name in sys.argv[1:] or ["mace-medium" if jax.default_backend() == "gpu" else "mace-medium-cpu"]:
    tp, (s, r), (x, y, w, dz) = inputs(name)
    n = PROBLEMS[name][2]
    pos = jax.numpy.asarray(np.random.default_rng(1).normal(size=(n, 3)) * 5, x.dtype)

    def force_loss(det):  # tools/conv_problem.py's, on this problem
        def loss(x, w, pos):
            def energy(pos):
                vec = pos[r] - pos[s]
                out = jb.sh_conv(tp, x, vec, w * jax.numpy.exp(-0.01 * jax.numpy.sum(vec**2, -1))[:, None], s, r,
                                 num_nodes=n, deterministic=det)
                return jax.numpy.sum(out[:, :tp.irreps_in1[0].mul] ** 2)
            return jax.numpy.sum(jax.grad(energy)(pos) ** 2)
        return loss
    for det in (False, True):
        conv = lambda x, y, w, det=det: jb.conv(tp, x, y, w, s, r, num_nodes=n, deterministic=det)  # noqa: E731
        roles = {"fwd": (jax.jit(conv), (x, y, w))}
        # The gradients asked for alone or together (the others' operands held constant), as the
        # transposes of the force-training step ask for them.
        for role, ks in (("dx", (0,)), ("dy", (1,)), ("dw", (2,)), ("dy+dw", (1, 2)), ("dx+dw", (0, 2)),
                         ("dx+dy+dw", (0, 1, 2))):
            def grads(x, y, w, dz, ks=ks):
                def f(*varying):
                    args = [x, y, w]
                    for k, a in zip(ks, varying):
                        args[k] = a
                    return conv(*args)
                return jax.vjp(f, *([x, y, w][k] for k in ks))[1](dz)
            roles[role] = (jax.jit(grads), (x, y, w, dz))
        roles["force"] = (jax.jit(jax.grad(force_loss(det), argnums=(0, 1))), (x, w, pos))
        for role, (f, args) in roles.items():
            if ROLES and role not in ROLES:
                continue
            t0 = time.perf_counter()
            jax.block_until_ready(f(*args))
            first = time.perf_counter() - t0
            host = host_median_ms(f, *args)
            kernel_table(f, *args)  # warm the profiler
            rows = kernel_table(f, *args)
            kernels = "; ".join(f"{kernel[:36]} {ms:.3f}" for ms, _, kernel in rows[:3])
            if role == "force":  # every kernel of the step, with its template arguments
                kernels = "\n    " + "\n    ".join(f"{ms:7.3f} ms {count:3d}x {kernel[:120]}" for ms, count, kernel in rows)
            print(f"{name:14} {'det' if det else 'atomic':6} {role:8} first {first:5.2f} s  host {host:.3f} ms  "
                  f"gpu {sum(ms for ms, _, _ in rows):.3f} ms | {kernels}", flush=True)
