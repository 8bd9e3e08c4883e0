"""Batmobile's API (L_max = 3, features as ``[..., C, 16]``), on jaxbatmobile's kernels, done right.

Batmobile sums all 34 SO(3)-allowed Clebsch-Gordan paths ``(l1, l2, l_out)`` with every degree ≤ 3,
with no path normalisation. Eleven of those paths have ``l1 + l2 + l_out`` odd: they turn two
natural-parity inputs (a scalar, a vector, … as spherical harmonics are) into a pseudo-tensor and add it
to the true tensor of the same degree, so Batmobile's output is equivariant under rotations but not
under inversion. Here the features are O(3) irreps ``0e + 1o + 2e + 3o`` (the parity of the spherical
harmonics), so only the **23 parity-allowed paths** exist, and each output block is normalised as
e3nn-jax does (``irrep_normalization="component"``, ``path_normalization="element"``): the results are
those of ``e3nn_jax.legacy.FunctionalTensorProduct`` with these instructions, and all derivatives
(including the weight gradient, which Batmobile gets wrong on 15 paths, and double backward) come from
the same verified kernels.

Layout: one 16-vector ``[Y_0, Y_1(3), Y_2(5), Y_3(7)]`` per channel, i.e. ``x[..., c, l*l + m]``.

Fused SH + TP (Batmobile's ``fused_sh_tp_simple``): the spherical harmonics of the edge vectors
(e3nn-jax's, ``normalize=True``, ``"component"``) are evaluated inside the TP kernel and never stored;
``fused_sh_tp_scatter`` also sums the messages into their target nodes in the same kernel (the fused
convolution, :func:`jaxbatmobile.sh_conv`), so not even the messages are stored. Both differentiate
in the edge vectors (forces), the node features, and to second order.
"""

from __future__ import annotations

import functools

import e3nn_jax as e3nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxbatmobile._src import tensor_product as tpm
from jaxbatmobile._src.conv import sh_conv
from jaxbatmobile._src.tensor_product import SLOT_Z, TensorProduct

L_MAX = 3
DIM = (L_MAX + 1) ** 2
_IRREPS = e3nn.Irreps("0e+1o+2e+3o")


@functools.lru_cache(maxsize=None)
def _paths() -> tuple[tuple[int, int, int], ...]:
    return tuple(
        (l1, l2, lo)
        for l1 in range(L_MAX + 1)
        for l2 in range(L_MAX + 1)
        for lo in range(abs(l1 - l2), min(L_MAX, l1 + l2) + 1)
        if (l1 + l2 + lo) % 2 == 0
    )


def get_tp_num_paths() -> int:
    """Number of CG paths: 23 (the parity-allowed ones among Batmobile's 34)."""
    return len(_paths())


def get_tp_path_info() -> np.ndarray:
    """``[num_paths, 3]`` int array of ``(l1, l2, l_out)``, in the order of the weights' first axis."""
    return np.asarray(_paths(), dtype=np.int32).reshape(-1, 3)


@functools.lru_cache(maxsize=None)
def _tp(c_in: int | None, c_out: int | None) -> TensorProduct:
    irreps_out = _IRREPS if c_out is None else e3nn.Irreps([(c_out, ir) for _, ir in _IRREPS])
    irreps_in1 = _IRREPS if c_in is None else e3nn.Irreps([(c_in, ir) for _, ir in _IRREPS])
    # Unweighted, mul 1: uvu without weights. Weighted: uvw, one (C_in, 1, C_out) block per path.
    if c_out is None:  # also channelwise: c_in channels, each with the same y
        irreps_out = irreps_in1
        ins = [(l1, l2, lo, "uvu", False) for l1, l2, lo in _paths()]
    else:
        ins = [(l1, l2, lo, "uvw", True) for l1, l2, lo in _paths()]
    return TensorProduct(irreps_in1, _IRREPS, irreps_out, ins)


def _to_mul_ir(x: jax.Array) -> jax.Array:
    """``[..., C, 16]`` → e3nn's mul_ir layout of ``C x (0e + 1o + 2e + 3o)``."""
    return jnp.concatenate(
        [x[..., l * l:(l + 1) ** 2].reshape(x.shape[:-2] + (-1,)) for l in range(L_MAX + 1)], axis=-1)


def _from_mul_ir(z: jax.Array, c: int) -> jax.Array:
    blocks, start = [], 0
    for l in range(L_MAX + 1):
        n = c * (2 * l + 1)
        blocks.append(z[..., start:start + n].reshape(z.shape[:-1] + (c, 2 * l + 1)))
        start += n
    return jnp.concatenate(blocks, axis=-1)


def _check_rows(name: str, a) -> jax.Array:
    a = a if hasattr(a, "dtype") else jnp.asarray(a)
    if a.ndim < 1 or a.shape[-1] != DIM:
        raise ValueError(f"batmobile: `{name}` must have shape [..., {DIM}], got {tuple(a.shape)}")
    return a


def tensor_product_simple(input1: jax.Array, input2: jax.Array) -> jax.Array:
    """Unweighted CG contraction of two ``[..., 16]`` arrays → ``[..., 16]`` (the 23 parity-allowed paths)."""
    input1, input2 = _check_rows("input1", input1), _check_rows("input2", input2)
    tp = _tp(None, None)
    return tp(input1, input2, jnp.zeros((0,), input1.dtype), shared_weights=True)


def tensor_product(input1: jax.Array, input2: jax.Array, weights: jax.Array) -> jax.Array:
    """Weighted, channel-mixing TP: ``input1 [..., C_in, 16]``, ``input2 [..., 16]``,
    ``weights [num_paths, C_in, C_out]`` (shared) → ``[..., C_out, 16]``.

    ``out[c_out, l_out] = Σ_paths Σ_c_in weights[p, c_in, c_out] · norm_p · CG(x[c_in, l1], y[l2])``.
    """
    input1 = jnp.asarray(input1) if not hasattr(input1, "dtype") else input1
    weights = jnp.asarray(weights) if not hasattr(weights, "dtype") else weights
    if input1.ndim < 2 or input1.shape[-1] != DIM:
        raise ValueError(f"batmobile: `input1` must have shape [..., C_in, 16], got {tuple(input1.shape)}")
    input2 = _check_rows("input2", input2)
    c_in = input1.shape[-2]
    if weights.ndim != 3 or weights.shape[:2] != (get_tp_num_paths(), c_in):
        raise ValueError(f"batmobile: `weights` must have shape [{get_tp_num_paths()}, {c_in}, C_out] "
                         f"(paths, C_in, C_out), got {tuple(weights.shape)}")
    c_out = weights.shape[2]
    tp = _tp(c_in, c_out)
    # e3nn's uvw path weights have shape (C_in, 1, C_out) per path, in path order: W flattens into them.
    out = tp(_to_mul_ir(input1), input2, weights.reshape(-1), shared_weights=True)
    return _from_mul_ir(out, c_out)


_SH = (L_MAX, True, "component")  # the fused SH: e3nn-jax's, of the unit vectors, "component" normalized


def _fused_inputs(edge_vectors, node_features, idx_names):
    edge_vectors = edge_vectors if hasattr(edge_vectors, "dtype") else jnp.asarray(edge_vectors)
    node_features = node_features if hasattr(node_features, "dtype") else jnp.asarray(node_features)
    if edge_vectors.ndim != 2 or edge_vectors.shape[1] != 3:
        raise ValueError(f"batmobile: `edge_vectors` must have shape [E, 3], got {tuple(edge_vectors.shape)}")
    if node_features.ndim not in (2, 3) or node_features.shape[-1] != DIM:
        raise ValueError(f"batmobile: `node_features` must have shape [N, 16] or [N, C, 16], got "
                         f"{tuple(node_features.shape)}")
    for name, idx in idx_names:
        if not hasattr(idx, "shape") or idx.shape != (edge_vectors.shape[0],):
            raise ValueError(f"batmobile: `{name}` must have shape [E] = ({edge_vectors.shape[0]},), got "
                             f"{tuple(np.shape(idx))}")
    channels = node_features.shape[1] if node_features.ndim == 3 else None
    x = _to_mul_ir(node_features) if channels else node_features
    return edge_vectors, x, channels


def fused_sh_tp_simple(edge_vectors: jax.Array, node_features: jax.Array, source_idx: jax.Array) -> jax.Array:
    """Per-edge messages ``tensor_product_simple(node_features[source_idx], Y(edge_vectors))`` with the SH
    ``Y`` evaluated in the kernel. ``edge_vectors [E, 3]``, ``node_features [N, 16]`` or ``[N, C, 16]``
    (each channel meets the same SH), ``source_idx [E]`` → ``[E, 16]`` or ``[E, C, 16]``."""
    source_idx = jnp.asarray(source_idx)
    edge_vectors, x, channels = _fused_inputs(edge_vectors, node_features, [("source_idx", source_idx)])
    if edge_vectors.dtype != x.dtype:
        raise TypeError(f"batmobile: `edge_vectors` and `node_features` must share one dtype, got "
                        f"{edge_vectors.dtype} and {x.dtype}")
    tp = _tp(channels, None)
    out = tpm._bind(tp._tables, SLOT_Z, True, x[source_idx], edge_vectors, jnp.zeros((0,), x.dtype), sh=_SH)
    return _from_mul_ir(out, channels) if channels else out


def fused_sh_tp_scatter(edge_vectors: jax.Array, node_features: jax.Array, source_idx: jax.Array,
                        target_idx: jax.Array, num_nodes: int, *, deterministic: bool = False) -> jax.Array:
    """The messages of :func:`fused_sh_tp_simple` summed into their target nodes in the same kernel:
    ``out[n] = Σ_{e: target_idx[e] = n} message[e]``, ``[num_nodes, 16]`` (or ``[num_nodes, C, 16]``);
    no per-edge array is stored. ``deterministic`` as in :func:`jaxbatmobile.conv`."""
    source_idx, target_idx = jnp.asarray(source_idx), jnp.asarray(target_idx)
    edge_vectors, x, channels = _fused_inputs(edge_vectors, node_features,
                                              [("source_idx", source_idx), ("target_idx", target_idx)])
    tp = _tp(channels, None)
    out = sh_conv(tp, x, edge_vectors, jnp.zeros((0,), x.dtype), source_idx, target_idx, num_nodes=num_nodes,
                  deterministic=deterministic)
    return _from_mul_ir(out, channels) if channels else out
