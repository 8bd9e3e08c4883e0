"""The force-training step's GPU time by kernel, ours (atomic sh_conv) next to cuequivariance-jax's
(segmented_polynomial, SH from e3nn-jax as in benchmarks/conv.py), one call each under jax's profiler
(tools/kernel_times.py): where the peer that leads this row spends its time, pass by pass.

    cd tools && python3 profile_force_peers.py
"""
import os
import sys

import jax
import jax.numpy as jnp
from conv_problem import force_loss, m, n, pos, r, s, tp, w, x
from kernel_times import kernel_table

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from benchmarks import cue_tp  # noqa: E402
from jaxbatmobile._src import reference  # noqa: E402


def cue_force_loss():
    conv = cue_tp.channelwise(tp, "uniform_1d", graph=(s, r, n))
    if conv is None:
        return None

    def loss(x, w, pos):  # conv_problem.force_loss's step on cue's conv, SH from e3nn-jax
        def energy(pos):
            vec = pos[r] - pos[s]
            y = reference.spherical_harmonics(vec, 3, True, "component")
            out = conv(x, y, w * jnp.exp(-0.01 * jnp.sum(vec**2, -1))[:, None])
            return jnp.sum(out[:, :m] ** 2)
        return jnp.sum(jax.grad(energy)(pos) ** 2)
    return loss


for name, loss in (("jaxbatmobile", force_loss(False)), ("cuequivariance", cue_force_loss())):
    if loss is None:
        print(f"== {name}: not available")
        continue
    step = jax.jit(jax.grad(loss, argnums=(0, 1)))
    jax.block_until_ready(step(x, w, pos))
    kernel_table(step, x, w, pos)  # warm the profiler
    rows = kernel_table(step, x, w, pos)
    print(f"== {name}: {sum(t for t, _, _ in rows):.3f} ms GPU in {sum(c for _, c, _ in rows)} events")
    for ms, count, kernel in rows:
        if ms >= 0.005:
            print(f"  {ms:7.3f} ms {count:3d}x {kernel[:140]}")
