"""Times each role of the conv on its own, for kernel work (not a peer benchmark): the forward (slot z),
the gradients in x (slot x, scatter to senders), y and w, and dy+dw together (the fused call), each jitted
alone. Per role: the first call (trace + compile + run), the host-timed median of 20 calls (includes
launch latency and XLA's index work) and the GPU time of one call by kernel (jax's profiler,
tools/kernel_times.py), which is what to compare between two builds.

    python tools/time_conv_parts.py [PROBLEM ...]     (tools/problems.py graphs; default mace-medium)

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
    for det in (False, True):
        conv = lambda x, y, w, det=det: jb.conv(tp, x, y, w, s, r, num_nodes=n, deterministic=det)  # noqa: E731
        roles = {"fwd": (jax.jit(conv), (x, y, w))}
        for role, k in (("dx", 0), ("dy", 1), ("dw", 2)):
            roles[role] = (jax.jit(lambda x, y, w, dz, k=k: jax.vjp(conv, x, y, w)[1](dz)[k]), (x, y, w, dz))
        roles["dy+dw"] = (jax.jit(lambda x, y, w, dz: jax.vjp(lambda y, w: conv(x, y, w), y, w)[1](dz)),
                          (x, y, w, dz))
        roles["dx+dy+dw"] = (jax.jit(lambda x, y, w, dz: jax.vjp(conv, x, y, w)[1](dz)), (x, y, w, dz))
        for role, (f, args) in roles.items():
            t0 = time.perf_counter()
            jax.block_until_ready(f(*args))
            first = time.perf_counter() - t0
            host = host_median_ms(f, *args)
            kernel_table(f, *args)  # warm the profiler
            rows = kernel_table(f, *args)
            kernels = "; ".join(f"{kernel[:36]} {ms:.3f}" for ms, _, kernel in rows[:3])
            print(f"{name:14} {'det' if det else 'atomic':6} {role:8} first {first:5.2f} s  host {host:.3f} ms  "
                  f"gpu {sum(ms for ms, _, _ in rows):.3f} ms | {kernels}", flush=True)
