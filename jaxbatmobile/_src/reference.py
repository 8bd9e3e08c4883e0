"""Pure-JAX versions of every op: the oracle of the tests and the source of higher-order terms.

These follow e3nn-jax exactly (they call it), so they are slow but unquestionable.
"""

from __future__ import annotations

import e3nn_jax as e3nn
import jax


def spherical_harmonics(vectors: jax.Array, l_max: int, normalize: bool, normalization: str) -> jax.Array:
    """``e3nn_jax.spherical_harmonics`` of degrees 0..l_max, as a plain array ``[..., (l_max+1)^2]``."""
    irreps = e3nn.Irreps.spherical_harmonics(l_max)
    return e3nn.spherical_harmonics(irreps, vectors, normalize, normalization).array


def tensor_product(tp, x: jax.Array, y: jax.Array, weights: jax.Array, shared_weights: bool) -> jax.Array:
    """``tp.e3nn.left_right`` (e3nn-jax's FunctionalTensorProduct) mapped over the batch axes."""

    def one(w, x, y):
        return tp.e3nn.left_right(w, e3nn.IrrepsArray(tp.irreps_in1, x), e3nn.IrrepsArray(tp.irreps_in2, y)).array

    f = one
    for _ in range(x.ndim - 1):
        f = jax.vmap(f, in_axes=(None if shared_weights else 0, 0, 0))
    return f(weights, x, y)


def conv(tp, node_feats, edge_attrs, edge_weights, senders, receivers, num_nodes: int, shared_weights: bool):
    """The unfused convolution: gather by sender, e3nn-jax TP per edge, ``segment_sum`` by receiver."""
    messages = tensor_product(tp, node_feats[senders], edge_attrs, edge_weights, shared_weights)
    return jax.ops.segment_sum(messages, receivers, num_segments=num_nodes)
