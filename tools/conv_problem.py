"""The conv problem of the profiling tools (profile_conv.py, memory_peak.py): MACE-medium irreps,
N=5k nodes, E=150k edges (receiver-sorted, as in GOALS.md), fp32; a small version on the CPU."""
import jax
import jax.numpy as jnp
import numpy as np

from problems import PROBLEMS, inputs

name = "mace-medium-cpu" if jax.default_backend() == "cpu" else "mace-medium"
tp, (s, r), (x, y, w, dz) = inputs(name)
n = PROBLEMS[name][2]
m = tp.irreps_in1[0].mul
pos = jnp.asarray(np.random.default_rng(1).normal(size=(n, 3)) * 5, jnp.float32)
