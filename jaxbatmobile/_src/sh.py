"""Spherical harmonics as jax primitives lowered to our FFI kernels.

Three primitives, all elementwise over the leading axes of ``vectors [..., 3]``:

* ``sh_p(v)       -> Y  [..., (l_max+1)^2]``
* ``sh_jvp_p(v, dv) -> J(v) dv``   (linear in dv)
* ``sh_vjp_p(v, g)  -> J(v)ᵀ g``    (linear in g)

The JVP of ``sh_p`` is ``sh_jvp_p``; the two linear primitives transpose into each other, so forward
and reverse mode of any order run on our kernels in the linear slot. The only term left is the second
derivative in ``v`` (position Hessians, phonons), taken from the pure-JAX reference: force training
never needs it, because positions are data there, and jax skips it through symbolic zeros.
"""

from __future__ import annotations

import operator

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.core import Primitive
from jax.interpreters import ad, batching

from jaxbatmobile._src import ffi, reference
from jaxbatmobile._src.tables import SH_MAX_L

# Codes shared with csrc/core/common.h (ShNormalization).
_NORMALIZATIONS = {"component": 0, "norm": 1, "integral": 2}


def spherical_harmonics(
    vectors: jax.Array,
    l_max: int,
    *,
    normalize: bool = True,
    normalization: str = "component",
) -> jax.Array:
    """Real spherical harmonics of degrees ``0..l_max`` in e3nn-jax's basis.

    Args:
        vectors: ``[..., 3]`` float32 or float64 array of Cartesian vectors.
        l_max: highest degree, ``0 <= l_max <= 8``.
        normalize: evaluate on ``vectors / |vectors|`` (the zero vector gives ``[1, 0, ...]`` and a
            finite Jacobian, as in e3nn-jax); if False, the homogeneous polynomials of ``vectors``.
        normalization: ``"component"`` (default), ``"norm"`` or ``"integral"``, as in e3nn-jax.

    Returns:
        ``[..., (l_max + 1)**2]`` array, equal to
        ``e3nn_jax.spherical_harmonics(Irreps.spherical_harmonics(l_max), vectors, normalize,
        normalization).array``, in the dtype of ``vectors``.
    """
    vectors = _check_vectors(vectors)
    params = _check_params(l_max, normalize, normalization)
    return sh_p.bind(vectors, **params)


def _check_vectors(vectors) -> jax.Array:
    if not hasattr(vectors, "dtype"):
        vectors = jnp.asarray(vectors)
    dtype = jnp.dtype(vectors.dtype)
    if dtype not in (jnp.float32, jnp.float64):
        raise TypeError(f"spherical_harmonics: `vectors` must be float32 or float64, got {dtype}")
    if vectors.ndim < 1 or vectors.shape[-1] != 3:
        raise ValueError(
            f"spherical_harmonics: `vectors` must have shape [..., 3], got {tuple(vectors.shape)}"
        )
    return vectors


def _check_params(l_max, normalize, normalization) -> dict:
    if isinstance(l_max, bool) or not isinstance(l_max, (int, np.integer)):
        raise TypeError(f"spherical_harmonics: `l_max` must be an int, got {type(l_max).__name__}")
    if not 0 <= l_max <= SH_MAX_L:
        raise ValueError(f"spherical_harmonics: `l_max` must be in [0, {SH_MAX_L}], got {l_max}")
    if normalization is None:
        normalization = "component"
    if normalization not in _NORMALIZATIONS:
        raise ValueError(
            "spherical_harmonics: `normalization` must be 'component', 'norm' or 'integral', "
            f"got {normalization!r}"
        )
    return dict(l_max=operator.index(l_max), normalize=bool(normalize), normalization=normalization)


def _sh_dim(l_max: int) -> int:
    return (l_max + 1) ** 2


# ---- primitives ----------------------------------------------------------------------------------

sh_p = Primitive("jbm_spherical_harmonics")
sh_jvp_p = Primitive("jbm_spherical_harmonics_jvp")
sh_vjp_p = Primitive("jbm_spherical_harmonics_vjp")


def _abstract_rows(width_of):
    def abstract(v, *rest, l_max, normalize, normalization):
        del normalize, normalization
        for r in rest:
            if r.dtype != v.dtype:
                raise TypeError(f"spherical_harmonics: tangent/cotangent dtype {r.dtype} != {v.dtype}")
        return jax.core.ShapedArray(v.shape[:-1] + (width_of(l_max),), v.dtype)

    return abstract


sh_p.def_abstract_eval(_abstract_rows(_sh_dim))
sh_jvp_p.def_abstract_eval(_abstract_rows(_sh_dim))
sh_vjp_p.def_abstract_eval(_abstract_rows(lambda l_max: 3))


def _attributes(l_max, normalize, normalization):
    return dict(
        l_max=np.int32(l_max),
        normalize=np.int32(normalize),
        normalization=np.int32(_NORMALIZATIONS[normalization]),
    )


ffi.register_lowering(sh_p, "jbm_sh_fwd", _attributes)
ffi.register_lowering(sh_jvp_p, "jbm_sh_jvp", _attributes)
ffi.register_lowering(sh_vjp_p, "jbm_sh_vjp", _attributes)


# ---- differentiation -----------------------------------------------------------------------------


def _reference(params):
    return lambda v: reference.spherical_harmonics(v, params["l_max"], params["normalize"], params["normalization"])


# e3nn-jax's JVP of the SH is an einsum: at XLA's default precision an fp32 dot runs in TF32 on recent
# GPUs, which put these terms 3.6e-4 off the fp64 values (H100, measured). "highest" keeps them fp32.
def _second_order_jvp(tv, v, dv, **params):
    """d/dv [J(v) dv] · tv, from the reference (only needed for Hessians in the vectors)."""
    ref = _reference(params)
    with jax.default_matmul_precision("highest"):
        return jax.jvp(lambda v_: jax.jvp(ref, (v_,), (dv,))[1], (v,), (tv,))[1]


def _second_order_vjp(tv, v, g, **params):
    """d/dv [J(v)ᵀ g] · tv, from the reference."""
    ref = _reference(params)
    with jax.default_matmul_precision("highest"):
        return jax.jvp(lambda v_: jax.vjp(ref, v_)[1](g)[0], (v,), (tv,))[1]


ad.defjvp(sh_p, lambda dv, v, **p: sh_jvp_p.bind(v, dv, **p))
ad.defjvp(sh_jvp_p, _second_order_jvp, lambda ddv, v, dv, **p: sh_jvp_p.bind(v, ddv, **p))
ad.defjvp(sh_vjp_p, _second_order_vjp, lambda dg, v, g, **p: sh_vjp_p.bind(v, dg, **p))


def _transpose_into(other):
    """Transpose rule of a primitive linear in its second operand: the adjoint is ``other``."""

    def transpose(ct, v, lin, **params):
        if ad.is_undefined_primal(v):
            raise ValueError("spherical_harmonics derivatives are not linear in the vectors")
        if type(ct) is ad.Zero:
            return None, ad.Zero(lin.aval)
        return None, other.bind(v, ct, **params)

    return transpose


ad.primitive_transposes[sh_jvp_p] = _transpose_into(sh_vjp_p)
ad.primitive_transposes[sh_vjp_p] = _transpose_into(sh_jvp_p)


# ---- batching ------------------------------------------------------------------------------------


def _batch_rowwise(primitive):
    """Every operand is a stack of rows over the same leading axes: put the batch axis first."""

    def rule(args, dims, **params):
        size = next(a.shape[d] for a, d in zip(args, dims) if d is not None)
        args = [
            jnp.moveaxis(a, d, 0) if d is not None else jnp.broadcast_to(a, (size,) + a.shape)
            for a, d in zip(args, dims)
        ]
        return primitive.bind(*args, **params), 0

    batching.primitive_batchers[primitive] = rule


for _p in (sh_p, sh_jvp_p, sh_vjp_p):
    ffi.define_impl(_p)
    _batch_rowwise(_p)
