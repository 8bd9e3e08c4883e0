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

from jaxbatmobile._src import tensor_product as tpm
from problems import PROBLEMS, inputs

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
    tp, graph, by_slot = inputs(args.problem, jnp.dtype(args.dtype))
    tables, slot, nodes = tp._tables, SLOTS[args.slot], PROBLEMS[args.problem][2]
    ops = [op for s, op in enumerate(by_slot) if s != slot]  # by_slot is (x, y, w, z): indexed by slot
    out_shape = by_slot[slot].shape
    params = dict(tables=tables, slot=slot, shared=False, unweighted=True, num_nodes=nodes,
                  deterministic=args.det and nodes is not None, sh=None)
    operands, attrs, results = tpm.tp_call_args(*ops, graph, out_shape, **params)
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
