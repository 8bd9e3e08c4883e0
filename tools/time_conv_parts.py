"""Times each kernel role of the conv (MACE-medium, N=5k, E=150k, fp32) on its own: the forward (slot z),
and the gradients in x (slot x, scatter to senders), y (slot y) and w (slot w), each jitted alone so XLA
keeps one call, and dy+dw together (the fused call). Medians of 20 runs after warm-up. A tool for kernel work, not a peer benchmark."""
import time

import jax
import jax.numpy as jnp
import numpy as np

import jaxbatmobile as jb
from conv_problem import dz, n, r, s, tp, w, x, y


def median_ms(f, *args):
    jax.block_until_ready(f(*args))
    times = []
    for _ in range(20):
        t0 = time.perf_counter()
        jax.block_until_ready(f(*args))
        times.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(times))


for det in (False, True):
    conv = lambda x, y, w, det=det: jb.conv(tp, x, y, w, s, r, num_nodes=n, deterministic=det)  # noqa: E731
    row = {"fwd (z)": median_ms(jax.jit(conv), x, y, w)}
    for name, k in (("dx", 0), ("dy", 1), ("dw", 2)):
        vjp = jax.jit(lambda x, y, w, dz, k=k: jax.vjp(conv, x, y, w)[1](dz)[k])
        row[name] = median_ms(vjp, x, y, w, dz)
    # dy and dw together: one fused call (tp_yw_p) on channelwise problems
    row["dy+dw"] = median_ms(jax.jit(lambda x, y, w, dz: jax.vjp(lambda y, w: conv(x, y, w), y, w)[1](dz)), x, y, w, dz)
    print(("det   " if det else "atomic") + "  " + "  ".join(f"{k} {v:.3f} ms" for k, v in row.items()), flush=True)
