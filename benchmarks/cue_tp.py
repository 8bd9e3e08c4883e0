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


def channelwise(tp, method: str = "uniform_1d", graph=None):
    """``f(x, y, w)`` on ir_mul x and output (w: e3nn's flat layout), or None if cue is unavailable
    or the problem is not channelwise with single-channel y. With ``graph = (senders, receivers,
    num_nodes)``, the convolution as cue runs it: x gathered by senders and the output scatter-summed
    by receivers inside segmented_polynomial (its indices)."""
    try:
        import cuequivariance as cue
        import cuequivariance_jax as cuex
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
    poly = cue.SegmentedPolynomial.eval_last_operand(d)
    dim_out = tp.irreps_out.dim

    def f(x, y, w):
        if graph is None:
            shape, indices = x.shape[:-1] + (dim_out,), None
        else:
            senders, receivers, num_nodes = graph
            shape, indices = (num_nodes, dim_out), [None, senders, None, receivers]
        return cuex.segmented_polynomial(poly, [w, x, y], [jax.ShapeDtypeStruct(shape, x.dtype)], indices,
                                         method=method)[0]

    return f
