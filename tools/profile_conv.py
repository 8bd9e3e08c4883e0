"""Conv calls (MACE-medium, N=5k, E=150k, fp32) for ncu/nsys, one of each: forward, the gradient in
x, y, w, and the force-training step (benchmarks/conv.py), deterministic and atomic.
E.g. ncu --metrics gpu__time_duration.sum python3 tools/profile_conv.py [fwd,bwd,force] [det,atomic]"""
import sys

import jax
import jax.numpy as jnp
import jaxbatmobile as jb
from conv_problem import force_loss, n, pos, r, s, tp, w, x, y

parts = (sys.argv[1] if len(sys.argv) > 1 else "fwd,bwd,force").split(",")
modes = (sys.argv[2] if len(sys.argv) > 2 else "det,atomic").split(",")
for mode in modes:
    det = mode == "det"

    def conv(x, y, w, det=det):
        return jb.conv(tp, x, y, w, s, r, num_nodes=n, deterministic=det)

    calls = {"fwd": (jax.jit(conv), (x, y, w)),
             "bwd": (jax.jit(jax.grad(lambda x, y, w: jnp.sum(conv(x, y, w) ** 2), argnums=(0, 1, 2))), (x, y, w)),
             "force": (jax.jit(jax.grad(force_loss(det), argnums=(0, 1))), (x, w, pos))}
    for part in parts:
        f, args = calls[part]
        print(f"== {mode} {part}", file=sys.stderr, flush=True)
        jax.block_until_ready(f(*args))
print("ok", file=sys.stderr)
