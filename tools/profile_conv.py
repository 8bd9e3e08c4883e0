"""Conv calls (MACE-medium, N=5k, E=150k, fp32) for ncu/nsys, one of each: forward, the gradient in
x, y, w, and the force-training step (benchmarks/conv.py), deterministic and atomic.
E.g. ncu --metrics gpu__time_duration.sum python3 tools/profile_conv.py [fwd,bwd,force] [det,atomic]"""
import sys

import jax
import jax.numpy as jnp
import numpy as np

import jaxbatmobile as jb

parts = (sys.argv[1] if len(sys.argv) > 1 else "fwd,bwd,force").split(",")
modes = (sys.argv[2] if len(sys.argv) > 2 else "det,atomic").split(",")
m, n, e = (8, 50, 1500) if jax.default_backend() == "cpu" else (128, 5000, 150_000)
i1, sh, io = f"{m}x0e+{m}x1o", "0e+1o+2e+3o", f"{m}x0e+{m}x1o+{m}x2e"
tp = jb.TensorProduct(i1, sh, io, jb.channelwise_instructions(i1, sh, io))
rng = np.random.default_rng(0)
s = jnp.asarray(rng.integers(0, n, e), jnp.int32)
r = jnp.asarray(np.sort(rng.integers(0, n, e)), jnp.int32)
x = jnp.asarray(rng.normal(size=(n, tp.irreps_in1.dim)), jnp.float32)
y = jnp.asarray(rng.normal(size=(e, 16)), jnp.float32)
w = jnp.asarray(rng.normal(size=(e, tp.weight_numel)), jnp.float32)
pos = jnp.asarray(rng.normal(size=(n, 3)) * 5, jnp.float32)
for mode in modes:
    det = mode == "det"

    def conv(x, y, w, det=det):
        return jb.conv(tp, x, y, w, s, r, num_nodes=n, deterministic=det)

    def loss(x, w, pos, det=det):
        def energy(pos):
            vec = pos[r] - pos[s]
            out = jb.sh_conv(tp, x, vec, w * jnp.exp(-0.01 * jnp.sum(vec**2, -1))[:, None], s, r, num_nodes=n,
                             deterministic=det)
            return jnp.sum(out[:, :m] ** 2)
        return jnp.sum(jax.grad(energy)(pos) ** 2)

    calls = {"fwd": (jax.jit(conv), (x, y, w)),
             "bwd": (jax.jit(jax.grad(lambda x, y, w: jnp.sum(conv(x, y, w) ** 2), argnums=(0, 1, 2))), (x, y, w)),
             "force": (jax.jit(jax.grad(loss, argnums=(0, 1))), (x, w, pos))}
    for part in parts:
        f, args = calls[part]
        print(f"== {mode} {part}", file=sys.stderr, flush=True)
        jax.block_until_ready(f(*args))
print("ok", file=sys.stderr)
