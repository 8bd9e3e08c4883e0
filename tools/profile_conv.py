"""Conv calls (MACE-medium, N=5k, E=150k, fp32) for nsys/ncu: forward, and the gradient in x, y, w,
deterministic and atomic. E.g. nsys profile --stats=true python3 tools/profile_conv.py"""
import sys

import jax
import jax.numpy as jnp
import numpy as np

import jaxbatmobile as jb

m, n, e = 128, 5000, 150_000
i1, sh, io = f"{m}x0e+{m}x1o", "0e+1o+2e+3o", f"{m}x0e+{m}x1o+{m}x2e"
tp = jb.TensorProduct(i1, sh, io, jb.channelwise_instructions(i1, sh, io))
rng = np.random.default_rng(0)
s = jnp.asarray(rng.integers(0, n, e), jnp.int32)
r = jnp.asarray(np.sort(rng.integers(0, n, e)), jnp.int32)
x = jnp.asarray(rng.normal(size=(n, tp.irreps_in1.dim)), jnp.float32)
y = jnp.asarray(rng.normal(size=(e, 16)), jnp.float32)
w = jnp.asarray(rng.normal(size=(e, tp.weight_numel)), jnp.float32)
for det in (True, False):
    def conv(x, y, w, det=det):
        return jb.conv(tp, x, y, w, s, r, num_nodes=n, deterministic=det)
    fwd = jax.jit(conv)
    bwd = jax.jit(jax.grad(lambda x, y, w: jnp.sum(conv(x, y, w) ** 2), argnums=(0, 1, 2)))
    for _ in range(3):
        jax.block_until_ready(fwd(x, y, w))
        jax.block_until_ready(bwd(x, y, w))
print("ok", file=sys.stderr)
