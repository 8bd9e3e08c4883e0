"""Writes one jbm_tp call (operands, attributes, result shapes, and the output JAX computes for it) to a
directory, for the JAX-free kernel driver (tools/kernel_driver/), which Nsight Compute can profile
(ncu segfaults when it attaches to a JAX process on the H100 machine).

Usage: python3 tools/dump_tp_call.py PROBLEM SLOT [--det] [--dtype float32] DIR
  PROBLEM: mace-medium | nequix-train | nequix-md (conv graphs, receiver-sorted, per-edge weights)
           | mace-large-tp | mace-medium-tp (plain products, batch 50k, per-row weights) | small | small-tp
  SLOT:    z (forward) | x | y | w (the gradient with respect to that operand)
The operands are the lowering's own (jaxbatmobile._src.tensor_product.tp_call_args), filled with
random normals. Format of DIR/call.txt, one item per line:
  attr NAME VALUE | operand FILE DTYPE RANK DIMS... | result DTYPE RANK DIMS... | expected FILE
"""
import argparse
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

import jaxbatmobile as jb
from jaxbatmobile._src import tensor_product as tpm

SH = "0e+1o+2e+3o"
PROBLEMS = {  # name: (input irreps, output irreps, nodes or None for a plain product, edges or batch)
    "mace-medium": ("128x0e+128x1o", "128x0e+128x1o+128x2e", 5000, 150_000),
    "nequix-train": ("128x0e+128x1o+128x2e+128x3o", "128x0e+128x1o+128x2e+128x3o", 256, 11_253),
    "nequix-md": ("128x0e+128x1o+128x2e+128x3o", "128x0e+128x1o+128x2e+128x3o", 864, 37_800),
    "mace-large-tp": ("128x0e+128x1o+128x2e", "128x0e+128x1o+128x2e+128x3o", None, 50_000),
    "mace-medium-tp": ("128x0e+128x1o", "128x0e+128x1o+128x2e", None, 50_000),
    "small": ("40x0e+40x1o+8x2e", "40x0e+40x1o+8x2e", 30, 400),  # for the test of this tool (CPU)
    "small-tp": ("40x0e+40x1o+8x2e", "40x0e+40x1o+8x2e", None, 300),
}
SLOTS = {"x": tpm.SLOT_X, "y": tpm.SLOT_Y, "w": tpm.SLOT_W, "z": tpm.SLOT_Z}


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("problem", choices=PROBLEMS)
    ap.add_argument("slot", choices=SLOTS)
    ap.add_argument("dir")
    ap.add_argument("--det", action="store_true", help="deterministic conv (sorted edge lists)")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    args = ap.parse_args(argv)
    if args.dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    i1, io, nodes, rows = PROBLEMS[args.problem]
    tp = jb.TensorProduct(i1, SH, io, jb.channelwise_instructions(i1, SH, io))
    tables, slot, dtype = tp._tables, SLOTS[args.slot], jnp.dtype(args.dtype)
    dim_x, dim_y, dim_z, num_w = tables.dims
    rng = np.random.default_rng(0)
    node_rows = rows if nodes is None else nodes
    shapes = {tpm.SLOT_X: (node_rows, dim_x), tpm.SLOT_Y: (rows, dim_y), tpm.SLOT_W: (rows, num_w),
              tpm.SLOT_Z: (node_rows, dim_z)}
    ops = [jnp.asarray(rng.normal(size=shapes[s]), dtype) for s in (tpm.SLOT_X, tpm.SLOT_Y, tpm.SLOT_W, tpm.SLOT_Z)
           if s != slot]
    graph = ()
    if nodes is not None:
        graph = (jnp.asarray(rng.integers(0, nodes, rows), jnp.int32),
                 jnp.asarray(np.sort(rng.integers(0, nodes, rows)), jnp.int32))
    params = dict(tables=tables, slot=slot, shared=False, unweighted=True, num_nodes=nodes,
                  deterministic=args.det and nodes is not None, sh=None)
    operands, attrs, results = tpm.tp_call_args(*ops, graph, shapes[slot], **params)
    # the same call through JAX (on the GPU if there is one)
    expected = tpm._bind(tables, slot, False, *ops, graph=(*graph, nodes, params["deterministic"]) if graph else None)

    out = pathlib.Path(args.dir)
    out.mkdir(parents=True, exist_ok=True)
    lines = [f"attr {k} {int(v)}" for k, v in attrs.items()]
    for k, op in enumerate(operands):
        a = np.asarray(op)
        a.tofile(out / f"op{k}.bin")
        lines.append(f"operand op{k}.bin {a.dtype.name} {a.ndim} " + " ".join(map(str, a.shape)))
    for r in results:
        lines.append(f"result {jnp.dtype(r.dtype).name} {len(r.shape)} " + " ".join(map(str, r.shape)))
    np.asarray(expected).tofile(out / "expected.bin")
    lines.append("expected expected.bin")
    (out / "call.txt").write_text("\n".join(lines) + "\n")
    print(f"{args.problem} slot {args.slot}{' det' if args.det else ''} {args.dtype}: {len(operands)} operands, "
          f"output {tuple(results[0].shape)}, scratch {tuple(results[1].shape)} -> {out}")


if __name__ == "__main__":
    main()
