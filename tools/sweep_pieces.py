"""GPU time of the conv's sorted-list kernels against the piece length of split node lists
(tensor_product.SEGMENT_PIECE_EDGES): forward and x gradient, both modes, on a Nequix-size graph (256 nodes,
~44 edges per node, 128x(0e+1o+2e+3o) channels) and on MACE-medium (5k nodes, 150k edges). Per-kernel
GPU times from jax's profiler (tools/kernel_times.py), summed over the call. A tool for kernel work.
Usage: python3 tools/sweep_pieces.py [piece lengths, default 64,32,16,12,8] [problems, default all]"""
import sys

import jax
import jax.numpy as jnp
import numpy as np

import jaxbatmobile as jb
from jaxbatmobile._src import tensor_product
from kernel_times import kernel_table

PROBLEMS = {  # name: (input irreps, output irreps, nodes, edges)
    "nequix-train": ("128x0e+128x1o+128x2e+128x3o", "128x0e+128x1o+128x2e+128x3o", 256, 11_253),
    "nequix-md": ("128x0e+128x1o+128x2e+128x3o", "128x0e+128x1o+128x2e+128x3o", 864, 37_800),
    "mace-medium": ("128x0e+128x1o", "128x0e+128x1o+128x2e", 5000, 150_000),
}


def gpu_ms(fn, *args):
    jax.block_until_ready(fn(*args))
    runs = [kernel_table(fn, *args) for _ in range(5)]
    total = np.median([sum(t for t, _, _ in rows) for rows in runs])
    ours = np.median([sum(t for t, _, name in rows if "tp_" in name or "segment" in name) for rows in runs])
    return total, ours


def main(pieces, problems=tuple(PROBLEMS)):
    rng = np.random.default_rng(0)
    sh = "0e+1o+2e+3o"
    for name in problems:
        i1, io, n, e = PROBLEMS[name]
        tp = jb.TensorProduct(i1, sh, io, jb.channelwise_instructions(i1, sh, io))
        s = jnp.asarray(rng.integers(0, n, e), jnp.int32)
        r = jnp.asarray(np.sort(rng.integers(0, n, e)), jnp.int32)
        x = jnp.asarray(rng.normal(size=(n, tp.irreps_in1.dim)), jnp.float32)
        y = jnp.asarray(rng.normal(size=(e, 16)), jnp.float32)
        w = jnp.asarray(rng.normal(size=(e, tp.weight_numel)), jnp.float32)
        dz = jnp.asarray(rng.normal(size=(n, tp.irreps_out.dim)), jnp.float32)
        for p in pieces:
            tensor_product.SEGMENT_PIECE_EDGES = p
            for det in (False, True):
                conv = lambda x, det=det: jb.conv(tp, x, y, w, s, r, num_nodes=n, deterministic=det)  # noqa: E731
                fwd = gpu_ms(jax.jit(conv), x)
                dx = gpu_ms(jax.jit(lambda x, dz, conv=conv: jax.vjp(conv, x)[1](dz)[0]), x, dz)
                print(f"{name:12s} P={p:3d} {'det   ' if det else 'atomic'} fwd {fwd[1]:.3f} ms (call {fwd[0]:.3f})"
                      f"  dx {dx[1]:.3f} ms (call {dx[0]:.3f})", flush=True)


if __name__ == "__main__":
    main([int(p) for p in sys.argv[1].split(",")] if len(sys.argv) > 1 else [64, 32, 16, 12, 8],
         sys.argv[2].split(",") if len(sys.argv) > 2 else tuple(PROBLEMS))
