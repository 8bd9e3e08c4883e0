"""GPU time of the conv's sorted-list kernels against the piece length of split node lists
(tensor_product.SEGMENT_PIECE_EDGES): forward and x gradient, both modes, on a Nequix-size graph (256 nodes,
~44 edges per node, 128x(0e+1o+2e+3o) channels) and on MACE-medium (5k nodes, 150k edges). Per-kernel
GPU times from jax's profiler (tools/kernel_times.py), summed over the call. A tool for kernel work.
Usage: python3 tools/sweep_pieces.py [piece lengths, default 64,32,16,12,8] [problems of tools/problems.py, default the three above]"""
import sys

import jax
import numpy as np

import jaxbatmobile as jb
from jaxbatmobile._src import tensor_product
from kernel_times import kernel_table
from problems import PROBLEMS, inputs

SWEPT = ("nequix-train", "nequix-md", "mace-medium")  # of tools/problems.py


def gpu_ms(fn, *args):
    jax.block_until_ready(fn(*args))
    runs = [kernel_table(fn, *args) for _ in range(5)]
    total = np.median([sum(t for t, _, _ in rows) for rows in runs])
    ours = np.median([sum(t for t, _, name in rows if "tp_" in name or "segment" in name) for rows in runs])
    return total, ours


def main(pieces, problems=SWEPT):
    for name in problems:
        tp, (s, r), (x, y, w, dz) = inputs(name)
        n = PROBLEMS[name][2]
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
         sys.argv[2].split(",") if len(sys.argv) > 2 else SWEPT)
