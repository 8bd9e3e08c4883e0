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
