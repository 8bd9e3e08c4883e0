"""The same channelwise TP as a cuequivariance-jax segmented polynomial (for the benchmark).

cuequivariance's fast kernel ("uniform_1d") wants the ``ir_mul`` layout (component-major blocks), so
its inputs are converted once, outside the timed function, as a cue user would hold them; outputs are
converted back only to check them. Paths, CG coefficients and path weights are read from our own
``TensorProduct`` (e3nn-jax's), so the numbers must agree with ours and e3nn-jax's.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def to_ir_mul(irreps, a):
    parts, start = [], 0
    for mul, ir in irreps:
        block = a[..., start:start + mul * ir.dim].reshape(a.shape[:-1] + (mul, ir.dim))
        parts.append(jnp.swapaxes(block, -1, -2).reshape(a.shape[:-1] + (-1,)))
        start += mul * ir.dim
    return jnp.concatenate(parts, axis=-1)


def from_ir_mul(irreps, a):
    parts, start = [], 0
    for mul, ir in irreps:
        block = a[..., start:start + mul * ir.dim].reshape(a.shape[:-1] + (ir.dim, mul))
        parts.append(jnp.swapaxes(block, -1, -2).reshape(a.shape[:-1] + (-1,)))
        start += mul * ir.dim
    return jnp.concatenate(parts, axis=-1)


def _polynomial(tp):
    """The channelwise product as a cue SegmentedPolynomial (inputs w, x in ir_mul, y; output in ir_mul),
    or None if cue is unavailable or the problem is not channelwise with single-channel y."""
    try:
        import cuequivariance as cue
        from e3nn_jax import clebsch_gordan
    except Exception:
        return None
    if any(i.connection_mode != "uvu" or not i.has_weight for i in tp.instructions):
        return None
    if any(mul != 1 for mul, _ in tp.irreps_in2):
        return None
    d = cue.SegmentedTensorProduct.from_subscripts("u,iu,j,ku+ijk")
    for mul, ir in tp.irreps_in1:
        d.add_segment(1, (ir.dim, mul))
    for _, ir in tp.irreps_in2:
        d.add_segment(2, (ir.dim,))
    for mul, ir in tp.irreps_out:
        d.add_segment(3, (ir.dim, mul))
    for ins in tp.instructions:
        (mul, ir1), (_, ir2), (_, iro) = tp.irreps_in1[ins.i_in1], tp.irreps_in2[ins.i_in2], tp.irreps_out[ins.i_out]
        c = np.asarray(clebsch_gordan(ir1.l, ir2.l, iro.l)) * ins.path_weight
        w_seg = d.add_segment(0, (mul,))
        d.add_path(w_seg, ins.i_in1, ins.i_in2, ins.i_out, c=c)
    d = d.flatten_coefficient_modes()
    return cue.SegmentedPolynomial.eval_last_operand(d)


def channelwise(tp, method: str = "uniform_1d"):
    """``f(x, y, w)`` on ir_mul x and output (w: e3nn's flat layout), or None (see _polynomial)."""
    poly = _polynomial(tp)
    if poly is None:
        return None
    import cuequivariance_jax as cuex

    dim_out = tp.irreps_out.dim

    def f(x, y, w):
        shape = jax.ShapeDtypeStruct(x.shape[:-1] + (dim_out,), x.dtype)
        return cuex.segmented_polynomial(poly, [w, x, y], [shape], method=method)[0]

    return f


def conv(tp, senders, receivers, num_nodes: int, method: str = "uniform_1d"):
    """The convolution as cue runs it: ``f(x, y, w)`` with x gathered by senders and the output
    scatter-summed by receivers inside segmented_polynomial (its indices); x and the output in ir_mul.
    None if cue is unavailable or the problem does not fit (see _polynomial)."""
    poly = _polynomial(tp)
    if poly is None:
        return None
    import cuequivariance_jax as cuex

    dim_out = tp.irreps_out.dim

    def f(x, y, w):
        shape = jax.ShapeDtypeStruct((num_nodes, dim_out), x.dtype)
        return cuex.segmented_polynomial(poly, [w, x, y], [shape], [None, senders, None, receivers],
                                         method=method)[0]

    return f
