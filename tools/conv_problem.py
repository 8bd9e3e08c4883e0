"""The conv problem of the profiling tools (profile_conv.py, memory_peak.py): MACE-medium irreps,
N=5k nodes, E=150k edges (receiver-sorted, as in GOALS.md), fp32; a small version on the CPU."""
import jax
import jax.numpy as jnp
import numpy as np

import jaxbatmobile as jb

from problems import PROBLEMS, inputs

name = "mace-medium-cpu" if jax.default_backend() == "cpu" else "mace-medium"
tp, (s, r), (x, y, w, dz) = inputs(name)
n = PROBLEMS[name][2]
m = tp.irreps_in1[0].mul
pos = jnp.asarray(np.random.default_rng(1).normal(size=(n, 3)) * 5, jnp.float32)


def force_loss(deterministic: bool):
    """loss(x, w, pos) of the force-training step (benchmarks/conv.py, GOALS.md): energy from sh_conv with
    weights w · exp(-0.01 r²), forces = -dE/dpos, loss = ‖F‖²."""
    def loss(x, w, pos):
        def energy(pos):
            vec = pos[r] - pos[s]
            out = jb.sh_conv(tp, x, vec, w * jnp.exp(-0.01 * jnp.sum(vec**2, -1))[:, None], s, r, num_nodes=n,
                             deterministic=deterministic)
            return jnp.sum(out[:, :m] ** 2)
        return jnp.sum(jax.grad(energy)(pos) ** 2)
    return loss
