"""Problems of the kernel tools (conv_problem.py, sweep_pieces.py, dump_tp_call.py) and their random
inputs: channelwise products with l <= 3 spherical harmonics as y, per-row (per-edge) weights."""
import jax.numpy as jnp
import numpy as np

import jaxbatmobile as jb

SH = "0e+1o+2e+3o"
PROBLEMS = {  # name: (input irreps, output irreps, nodes or None for a plain product, edges or batch)
    "mace-medium": ("128x0e+128x1o", "128x0e+128x1o+128x2e", 5000, 150_000),
    "mace-large": ("128x0e+128x1o+128x2e", "128x0e+128x1o+128x2e+128x3o", 5000, 100_000),
    "mace-medium-cpu": ("8x0e+8x1o", "8x0e+8x1o+8x2e", 50, 1500),
    "nequix-train": ("128x0e+128x1o+128x2e+128x3o", "128x0e+128x1o+128x2e+128x3o", 256, 11_253),
    "nequix-md": ("128x0e+128x1o+128x2e+128x3o", "128x0e+128x1o+128x2e+128x3o", 864, 37_800),
    "mace-large-tp": ("128x0e+128x1o+128x2e", "128x0e+128x1o+128x2e+128x3o", None, 50_000),
    "mace-medium-tp": ("128x0e+128x1o", "128x0e+128x1o+128x2e", None, 50_000),
    "small": ("40x0e+40x1o+8x2e", "40x0e+40x1o+8x2e", 30, 400),  # for tests/test_tools.py (CPU)
    "small-tp": ("40x0e+40x1o+8x2e", "40x0e+40x1o+8x2e", None, 300),
}


def inputs(name, dtype=jnp.float32, seed=0):
    """(tp, graph, (x, y, w, z)): graph is (senders, receivers) with receivers sorted, or () for a plain
    product; x and z (the output's shape: a cotangent or the z operand) have a row per node, or per row
    of a plain product; y and w a row per edge (or row)."""
    i1, io, nodes, rows = PROBLEMS[name]
    tp = jb.TensorProduct(i1, SH, io, jb.channelwise_instructions(i1, SH, io))
    rng = np.random.default_rng(seed)
    graph = ()
    if nodes is not None:
        graph = (jnp.asarray(rng.integers(0, nodes, rows), jnp.int32),
                 jnp.asarray(np.sort(rng.integers(0, nodes, rows)), jnp.int32))
    node_rows = rows if nodes is None else nodes
    normal = lambda *shape: jnp.asarray(rng.normal(size=shape), dtype)  # noqa: E731
    operands = (normal(node_rows, tp.irreps_in1.dim), normal(rows, 16), normal(rows, tp.weight_numel),
                normal(node_rows, tp.irreps_out.dim))
    return tp, graph, operands
