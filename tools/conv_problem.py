"""The conv problem of the profiling tools (profile_conv.py, time_conv_parts.py): MACE-medium irreps,
N=5k nodes, E=150k edges (receiver-sorted, as in GOALS.md), fp32; a small version on the CPU."""
import jax
import jax.numpy as jnp
import numpy as np

import jaxbatmobile as jb

m, n, e = (8, 50, 1500) if jax.default_backend() == "cpu" else (128, 5000, 150_000)
i1, sh, io = f"{m}x0e+{m}x1o", "0e+1o+2e+3o", f"{m}x0e+{m}x1o+{m}x2e"
tp = jb.TensorProduct(i1, sh, io, jb.channelwise_instructions(i1, sh, io))
rng = np.random.default_rng(0)
s = jnp.asarray(rng.integers(0, n, e), jnp.int32)
r = jnp.asarray(np.sort(rng.integers(0, n, e)), jnp.int32)
x = jnp.asarray(rng.normal(size=(n, tp.irreps_in1.dim)), jnp.float32)
y = jnp.asarray(rng.normal(size=(e, 16)), jnp.float32)
w = jnp.asarray(rng.normal(size=(e, tp.weight_numel)), jnp.float32)
dz = jnp.asarray(rng.normal(size=(n, tp.irreps_out.dim)), jnp.float32)
pos = jnp.asarray(rng.normal(size=(n, 3)) * 5, jnp.float32)
