"""Fused equivariant convolution: gather by sender → tensor product → scatter-sum by receiver, one pass.

``out[r] = Σ_{e : receivers[e] = r} TP(node_feats[senders[e]], edge_attrs[e]; edge_weights[e])``

The primitive is the tensor product's own contraction with rows that are edges (tensor_product.conv_p):
x rows are read at ``senders[e]``, z rows at ``receivers[e]``, so per-edge messages never exist in
memory, forward or backward. Moving the output role to x (the gradient with respect to node features)
turns the gather by sender into a scatter to senders: the same kernel, the same AD rules as the plain
product (JVP = one call per tangent, transpose = permuted slot), hence derivatives of every order.

Two ways to sum over edges on the GPU:

* atomic (default): a block takes a chunk of consecutive edges (in the given order), sums the edges of
  each run of equal receiver in registers and adds the run's row with atomic adds — one atomic per
  element and run, so receiver-sorted edges are cheapest; edges in any order, but the float summation
  order (hence the last bits) may change from run to run;
* ``deterministic=True``: one block per target node sums its edges in a fixed order in registers and
  stores the row once — bitwise-identical results on every run, forward and backward. The edge lists
  (edges stably sorted by receiver, and by sender for the node-feature gradient) are computed in the
  graph with two integer sorts; XLA shares them between calls on the same indices within one jit.
  Edges need no particular order. The node-feature gradient (a scatter to senders, which are rarely
  sorted) of channelwise products takes the sender-sorted lists in both modes. A node with more than
  32 edges (e.g. the padding node of a jraph batch) is summed in pieces by several blocks, whose
  partial rows are added in a fixed order: still deterministic, and no block holds up the kernel.

On the GPU, channelwise (uvu) products contract y with each path's CG block once per edge in shared
memory (csrc/core/tp_uvu.h, uvu_contract_y); every channel then runs a small dense product. Products of
a compiled shape (MACE's full channelwise paths, csrc/core/tp_uvu_shape.h) run straight-line
per-channel code instead, forward and backward; their whole backward (node features, edge attributes
or vectors, edge weights) is one pass over the edges, taken in sender order so that the node-feature
gradient is summed over each sender's run of edges in registers and added to its row once per run
(atomic adds), or, in the deterministic mode, summed over each sender's list (pieces of long lists, as
above) and stored. The same pass serves those gradients alone too, which is what the force-training
step's second derivatives are made of in the deterministic mode; in atomic mode the derivatives of the
forces' fused y and weight gradients (five contractions) are one pass over the edges
(tensor_product.tp_grads2_p).

When a gradient asks for both edge_attrs (or edge_vectors) and edge_weights, the two come from one
pass over the edges (tensor_product.tp_grads_p): x, the output cotangent and the weights are read once.

On the CPU both modes sum in a fixed order (edge order, or node by node), so results are reproducible.

``sh_conv`` is the same with ``edge_attrs = spherical_harmonics(edge_vectors)`` evaluated in the kernel
(shared memory, never device memory); its gradient in the vectors is the y gradient chained through
the SH Jacobian (jaxbatmobile._src.sh), so force training works through it.
"""

from __future__ import annotations

import e3nn_jax as e3nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.interpreters import batching

from jaxbatmobile._src import tensor_product as tpm
from jaxbatmobile._src.sh import _NORMALIZATIONS as sh_normalizations
from jaxbatmobile._src.tensor_product import SLOT_W, SLOT_X, SLOT_Z, TensorProduct, conv_p


# Highest SH degree sh_conv evaluates in the kernel (csrc/core/tp.h, kTpShMaxL).
SH_CONV_MAX_L = 4


def conv(tp: TensorProduct, node_feats, edge_attrs, edge_weights, senders, receivers, *, num_nodes: int,
         deterministic: bool = False) -> jax.Array:
    """Fused message passing with the tensor product ``tp``.

    Args:
        tp: a :class:`TensorProduct` (uvu, uvw, any irreps).
        node_feats: ``[num_nodes, tp.irreps_in1.dim]``.
        edge_attrs: ``[E, tp.irreps_in2.dim]`` (e.g. spherical harmonics of the edge vectors).
        edge_weights: ``[E, tp.weight_numel]`` (per edge, e.g. from a radial MLP) or shared ``[weight_numel]``.
        senders, receivers: ``[E]`` int32 or int64 node indices, in any order. An edge with an index
            outside ``[0, num_nodes)`` is dropped: it contributes nothing, and its gradients are zero
            (never a read or write outside the arrays).
        num_nodes: number of output rows (static).
        deterministic: sum each node's edges in a fixed order without atomics, so that results (and
            every derivative) are bitwise identical from run to run (see the module docstring).

    Returns ``[num_nodes, tp.irreps_out.dim]``. Differentiable to any order in node_feats, edge_attrs
    and edge_weights; ``jax.vmap`` batches several graphs.
    """
    x, y, w, senders, receivers, shared = _check("conv", tp, node_feats, edge_attrs, tp.irreps_in2.dim,
                                                 edge_weights, senders, receivers, num_nodes)
    return tpm._bind(tp._tables, SLOT_Z, shared, x, y, w,
                     graph=(senders, receivers, int(num_nodes), _flag("deterministic", deterministic)))


def sh_conv(tp: TensorProduct, node_feats, edge_vectors, edge_weights, senders, receivers, *, num_nodes: int,
            normalize: bool = True, normalization: str = "component", deterministic: bool = False) -> jax.Array:
    """:func:`conv` with ``edge_attrs = spherical_harmonics(edge_vectors, l_max, normalize=normalize,
    normalization=normalization)`` computed inside the kernel (the SH never reach device memory).

    ``tp.irreps_in2`` must be the spherical harmonics irreps ``0e + 1o + ... + l_max`` (each degree once,
    e3nn's ``Irreps.spherical_harmonics(l_max)``), with ``l_max <= 4``. ``edge_vectors``: ``[E, 3]``
    (e.g. ``positions[receivers] - positions[senders]``); everything else as in :func:`conv`.
    Differentiable in node_feats, edge_weights and edge_vectors (forces), to any order in the first two
    and second order overall (what force training needs).
    """
    l_max = _sh_degree(tp)
    normalization = "component" if normalization is None else normalization
    if normalization not in sh_normalizations:
        raise ValueError(f"sh_conv: `normalization` must be 'component', 'norm' or 'integral', got {normalization!r}")
    x, v, w, senders, receivers, shared = _check("sh_conv", tp, node_feats, edge_vectors, 3, edge_weights,
                                                 senders, receivers, num_nodes, y_name="edge_vectors")
    return tpm._bind(tp._tables, SLOT_Z, shared, x, v, w,
                     graph=(senders, receivers, int(num_nodes), _flag("deterministic", deterministic)),
                     sh=(l_max, _flag("normalize", normalize), normalization))


def _flag(name, value) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"conv: `{name}` must be a bool, got {value!r}")
    return bool(value)


def _sh_degree(tp) -> int:
    l_max = tp.irreps_in2.lmax if len(tp.irreps_in2) else -1
    if l_max < 0 or tp.irreps_in2 != e3nn.Irreps.spherical_harmonics(l_max) or l_max > SH_CONV_MAX_L:
        raise ValueError(f"sh_conv: tp.irreps_in2 must be spherical harmonics irreps "
                         f"{e3nn.Irreps.spherical_harmonics(max(0, min(l_max, SH_CONV_MAX_L)))} (degrees 0..l_max, "
                         f"each once, l_max <= {SH_CONV_MAX_L}), got {tp.irreps_in2}")
    return l_max


def _check(op, tp, x, y, y_width, w, senders, receivers, num_nodes, y_name="edge_attrs"):
    if not isinstance(num_nodes, (int, np.integer)) or isinstance(num_nodes, bool) or num_nodes < 0:
        raise ValueError(f"{op}: `num_nodes` must be a non-negative int (static), got {num_nodes!r}")
    if num_nodes >= 2**31:
        raise ValueError(f"{op}: at most 2**31 - 1 nodes are supported, got num_nodes={num_nodes}")
    arrays = []
    for name, a in (("node_feats", x), (y_name, y), ("edge_weights", w)):
        a = a if hasattr(a, "dtype") else jnp.asarray(a)
        if jnp.dtype(a.dtype) not in (jnp.float32, jnp.float64):
            raise TypeError(f"{op}: `{name}` must be float32 or float64, got {a.dtype}")
        arrays.append(a)
    x, y, w = arrays
    if not x.dtype == y.dtype == w.dtype:
        raise TypeError(f"{op}: `node_feats`, `{y_name}` and `edge_weights` must share one dtype, got "
                        f"{x.dtype}, {y.dtype}, {w.dtype}")
    if x.shape != (num_nodes, tp.irreps_in1.dim):
        raise ValueError(f"{op}: `node_feats` must have shape [num_nodes, {tp.irreps_in1.dim}] = "
                         f"({num_nodes}, {tp.irreps_in1.dim}) ({tp.irreps_in1}), got {tuple(x.shape)}")
    if y.ndim != 2 or y.shape[1] != y_width:
        what = "" if y_name == "edge_vectors" else f" ({tp.irreps_in2})"
        raise ValueError(f"{op}: `{y_name}` must have shape [E, {y_width}]{what}, got {tuple(y.shape)}")
    num_edges = y.shape[0]
    if num_edges >= 2**31:
        raise ValueError(f"{op}: at most 2**31 - 1 edges are supported, got {num_edges}")
    indices = []
    for name, idx in (("senders", senders), ("receivers", receivers)):
        idx = idx if hasattr(idx, "dtype") else jnp.asarray(idx)
        if jnp.dtype(idx.dtype) not in (jnp.int32, jnp.int64):
            raise TypeError(f"{op}: `{name}` must be int32 or int64, got {idx.dtype}")
        if idx.shape != (num_edges,):
            raise ValueError(f"{op}: `{name}` must have shape [E] = ({num_edges},) like {y_name}, got {tuple(idx.shape)}")
        # int64 indices beyond int32 would wrap: clamp them to -1 (out of range: the edge is dropped).
        if idx.dtype == jnp.int64:
            idx = jnp.where((idx >= 0) & (idx < num_nodes), idx, -1)
        indices.append(idx.astype(jnp.int32))
    if w.shape == (num_edges, tp.weight_numel):
        shared = False
    elif w.shape == (tp.weight_numel,):
        shared = True
    else:
        raise ValueError(f"{op}: `edge_weights` must have shape [E, {tp.weight_numel}] = ({num_edges}, "
                         f"{tp.weight_numel}) or shared [{tp.weight_numel}], got {tuple(w.shape)}")
    return x, y, w, indices[0], indices[1], shared


def _batch(args, dims, *, tables, slot, shared, unweighted, num_nodes, **params):
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
                      unweighted=unweighted, num_nodes=size * num_nodes, **params)
    if slot in (SLOT_X, SLOT_Z):
        out = out.reshape(size, num_nodes, -1)
    elif slot == SLOT_W and shared:
        out = out.reshape(size, num_edges, -1).sum(axis=1)
    else:
        out = out.reshape(size, num_edges, -1)
    return out, 0


batching.primitive_batchers[conv_p] = _batch
