"""Fused equivariant convolution: gather by sender → tensor product → scatter-sum by receiver, one pass.

``out[r] = Σ_{e : receivers[e] = r} TP(node_feats[senders[e]], edge_attrs[e]; edge_weights[e])``

The primitive is the tensor product's own contraction with rows that are edges (tensor_product.conv_p):
x rows are read at ``senders[e]``, z rows at ``receivers[e]``, so per-edge messages never exist in
memory, forward or backward. Moving the output role to x (the gradient with respect to node features)
turns the gather by sender into a scatter to senders: the same kernel, the same AD rules as the plain
product (JVP = one call per tangent, transpose = permuted slot), hence derivatives of every order.

Sums over edges use atomic adds on the GPU (edges in any order; the float summation order, hence the
last bits, may vary between runs). On the CPU edges are summed in order, so results are reproducible.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.interpreters import batching

from jaxbatmobile._src import tensor_product as tpm
from jaxbatmobile._src.tensor_product import SLOT_W, SLOT_X, SLOT_Z, TensorProduct, conv_p


def conv(tp: TensorProduct, node_feats, edge_attrs, edge_weights, senders, receivers, *, num_nodes: int) -> jax.Array:
    """Fused message passing with the tensor product ``tp``.

    Args:
        tp: a :class:`TensorProduct` (uvu, uvw, any irreps).
        node_feats: ``[num_nodes, tp.irreps_in1.dim]``.
        edge_attrs: ``[E, tp.irreps_in2.dim]`` (e.g. spherical harmonics of the edge vectors).
        edge_weights: ``[E, tp.weight_numel]`` (per edge, e.g. from a radial MLP) or shared ``[weight_numel]``.
        senders, receivers: ``[E]`` int32 or int64 node indices. An edge with an index outside
            ``[0, num_nodes)`` is dropped: it contributes nothing, and its gradients are zero (never a
            read or write outside the arrays).
        num_nodes: number of output rows (static).

    Returns ``[num_nodes, tp.irreps_out.dim]``. Differentiable to any order in node_feats, edge_attrs
    and edge_weights; ``jax.vmap`` batches several graphs.
    """
    node_feats, edge_attrs, edge_weights, senders, receivers, shared = _check(
        tp, node_feats, edge_attrs, edge_weights, senders, receivers, num_nodes)
    return tpm._bind(tp._tables, SLOT_Z, shared, node_feats, edge_attrs, edge_weights,
                     graph=(senders, receivers, int(num_nodes)))


def _check(tp, x, y, w, senders, receivers, num_nodes):
    if not isinstance(num_nodes, (int, np.integer)) or isinstance(num_nodes, bool) or num_nodes < 0:
        raise ValueError(f"conv: `num_nodes` must be a non-negative int (static), got {num_nodes!r}")
    if num_nodes >= 2**31:
        raise ValueError(f"conv: at most 2**31 - 1 nodes are supported, got num_nodes={num_nodes}")
    arrays = []
    for name, a in (("node_feats", x), ("edge_attrs", y), ("edge_weights", w)):
        a = a if hasattr(a, "dtype") else jnp.asarray(a)
        if jnp.dtype(a.dtype) not in (jnp.float32, jnp.float64):
            raise TypeError(f"conv: `{name}` must be float32 or float64, got {a.dtype}")
        arrays.append(a)
    x, y, w = arrays
    if not x.dtype == y.dtype == w.dtype:
        raise TypeError(f"conv: `node_feats`, `edge_attrs` and `edge_weights` must share one dtype, got "
                        f"{x.dtype}, {y.dtype}, {w.dtype}")
    if x.shape != (num_nodes, tp.irreps_in1.dim):
        raise ValueError(f"conv: `node_feats` must have shape [num_nodes, {tp.irreps_in1.dim}] = "
                         f"({num_nodes}, {tp.irreps_in1.dim}) ({tp.irreps_in1}), got {tuple(x.shape)}")
    if y.ndim != 2 or y.shape[1] != tp.irreps_in2.dim:
        raise ValueError(f"conv: `edge_attrs` must have shape [E, {tp.irreps_in2.dim}] ({tp.irreps_in2}), "
                         f"got {tuple(y.shape)}")
    num_edges = y.shape[0]
    indices = []
    for name, idx in (("senders", senders), ("receivers", receivers)):
        idx = idx if hasattr(idx, "dtype") else jnp.asarray(idx)
        if jnp.dtype(idx.dtype) not in (jnp.int32, jnp.int64):
            raise TypeError(f"conv: `{name}` must be int32 or int64, got {idx.dtype}")
        if idx.shape != (num_edges,):
            raise ValueError(f"conv: `{name}` must have shape [E] = ({num_edges},) like edge_attrs, got {tuple(idx.shape)}")
        # int64 indices beyond int32 would wrap: clamp them to -1 (out of range: the edge is dropped).
        if idx.dtype == jnp.int64:
            idx = jnp.where((idx >= 0) & (idx < num_nodes), idx, -1)
        indices.append(idx.astype(jnp.int32))
    if w.shape == (num_edges, tp.weight_numel):
        shared = False
    elif w.shape == (tp.weight_numel,):
        shared = True
    else:
        raise ValueError(f"conv: `edge_weights` must have shape [E, {tp.weight_numel}] = ({num_edges}, "
                         f"{tp.weight_numel}) or shared [{tp.weight_numel}], got {tuple(w.shape)}")
    return x, y, w, indices[0], indices[1], shared


def _batch(args, dims, *, tables, slot, shared, unweighted, num_nodes):
    """vmap over graphs: one disjoint graph of ``size * num_nodes`` nodes and ``size * E`` edges."""
    slots = tpm._slots_of(slot)
    size = next(a.shape[d] for a, d in zip(args, dims) if d is not None)
    num_edges = args[3].shape[1] if dims[3] is not None else args[3].shape[0]
    w_batched = any(s == SLOT_W and d is not None for s, d in zip(slots, dims))
    new_shared = shared and not w_batched and slot != SLOT_W
    moved = []
    for a, d in zip(args, dims):
        a = jnp.moveaxis(a, d, 0) if d is not None else a[None]
        moved.append(jnp.broadcast_to(a, (size,) + a.shape[1:]))
    new_args = []
    for s, a in zip(slots, moved[:3]):
        if s == SLOT_W and shared:
            if new_shared:
                a = a[0]
            else:  # one weight vector per graph → one row per edge
                a = jnp.broadcast_to(a[:, None, :], (size, num_edges, a.shape[-1])).reshape(size * num_edges, -1)
        else:
            a = a.reshape((-1, a.shape[-1]))
        new_args.append(a)
    offsets = (jnp.arange(size, dtype=jnp.int32) * num_nodes)[:, None]
    for idx in moved[3:]:
        # Each graph's nodes move to their own range; out-of-range indices stay out of range (dropped).
        new_args.append(jnp.where((idx >= 0) & (idx < num_nodes), idx + offsets, -1).reshape(-1))
    out = conv_p.bind(*new_args, tables=tables, slot=slot, shared=new_shared,
                      unweighted=unweighted, num_nodes=size * num_nodes)
    if slot in (SLOT_X, SLOT_Z):
        out = out.reshape(size, num_nodes, -1)
    elif slot == SLOT_W and shared:
        out = out.reshape(size, num_edges, -1).sum(axis=1)
    else:
        out = out.reshape(size, num_edges, -1)
    return out, 0


batching.primitive_batchers[conv_p] = _batch
