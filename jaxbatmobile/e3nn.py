"""Drop-in replacements for e3nn-jax functions, on jaxbatmobile's kernels.

Change ``import e3nn_jax as e3nn`` calls of these functions to ``jaxbatmobile.e3nn`` and keep the model:
same signatures, same ``e3nn_jax.IrrepsArray`` inputs and outputs (layout ``mul_ir``), same numbers.

* :func:`spherical_harmonics` — ``e3nn_jax.spherical_harmonics`` (``algorithm`` accepted and ignored).
* :func:`tensor_product` — ``e3nn_jax.tensor_product`` (the channelwise ``x ⊗ sh`` of NequIP/Nequix/MACE).
* :class:`FunctionalTensorProduct` — ``e3nn_jax.legacy.FunctionalTensorProduct`` with ``left_right``
  (same instructions, normalisations and weight list / flat weight format).
* :func:`message_passing` — the fused ``scatter_sum(tensor_product(x[senders], edge_attrs) * w, receivers)``,
  never materialising per-edge messages; :func:`sh_message_passing` also computes the spherical harmonics
  of the edge vectors inside the kernel.

What our kernels do not cover (spherical harmonics above l = 8, dtypes other than float32/float64,
``FunctionalTensorProduct`` modes other than ``uvu``/``uvw``) is passed on to e3nn-jax itself, so models
keep working; set ``jaxbatmobile.e3nn.FALLBACK_TO_E3NN = False`` to get a ``NotImplementedError``
instead (our tests do, to count what runs on our kernels).

Differences a model cannot observe through values: results carry no ``zero_flags`` except where
e3nn-jax's own would (tensor_product keeps them; message_passing computes densely), and all functions
also accept batched inputs where the legacy ``left_right`` required ``jax.vmap``.
"""

from __future__ import annotations

import dataclasses
import functools

import e3nn_jax
import e3nn_jax.legacy
import jax
import jax.numpy as jnp
import numpy as np

from jaxbatmobile._src.conv import SH_CONV_MAX_L, conv, sh_conv
from jaxbatmobile._src.sh import spherical_harmonics as _sh
from jaxbatmobile._src.tables import SH_MAX_L
from jaxbatmobile._src.tensor_product import TensorProduct

__all__ = ["FALLBACK_TO_E3NN", "FunctionalTensorProduct", "message_passing", "sh", "sh_message_passing",
           "spherical_harmonics", "tensor_product"]

#: Pass what our kernels do not cover on to e3nn-jax (True) or raise NotImplementedError (False).
FALLBACK_TO_E3NN = True

_FLOATS = (jnp.dtype(jnp.float32), jnp.dtype(jnp.float64))

# e3nn-jax's own functions, bound at import: fallbacks must reach them even where a user (or the
# e3nn-jax test harness, tools/run_e3nn_tests.py) has patched e3nn_jax's names with ours.
_e3nn_spherical_harmonics = e3nn_jax.spherical_harmonics
_e3nn_tensor_product = e3nn_jax.tensor_product


def _fallback(what: str, reason: str):
    if not FALLBACK_TO_E3NN:
        raise NotImplementedError(f"jaxbatmobile.e3nn.{what}: {reason} (FALLBACK_TO_E3NN is False)")


def _float_dtype(*arrays) -> jnp.dtype:
    """e3nn-jax's rule: the promoted dtype, integers computed in the default float type."""
    dtype = jnp.result_type(*[a.dtype for a in arrays])
    return jnp.dtype(jnp.result_type(float)) if jnp.issubdtype(dtype, jnp.integer) else jnp.dtype(dtype)


# ---- spherical harmonics ------------------------------------------------------------------------

def _sh_irreps(irreps_out, input) -> e3nn_jax.Irreps:
    """Resolve ``irreps_out`` as e3nn-jax does (an int or a list of degrees take the input's parity)."""
    if isinstance(irreps_out, range):
        irreps_out = list(irreps_out)
    if isinstance(irreps_out, int) or (isinstance(irreps_out, (list, tuple)) and not isinstance(irreps_out, e3nn_jax.Irreps)
                                       and all(isinstance(l, int) for l in irreps_out)):
        if not isinstance(input, e3nn_jax.IrrepsArray):
            raise ValueError("spherical_harmonics: if irreps_out is an int or a list of int, `input` must be "
                             "an IrrepsArray (1x1o or 1x1e)")
        p = _vector_parity(input.irreps)
        ls = [irreps_out] if isinstance(irreps_out, int) else irreps_out
        return e3nn_jax.Irreps([(1, (l, p**l)) for l in ls])
    irreps_out = e3nn_jax.Irreps(irreps_out)
    if not all(l % 2 == 1 or p == 1 for _, (l, p) in irreps_out):
        raise ValueError(f"spherical_harmonics: even degrees must have even parity, got {irreps_out}")
    odd = {p for _, (l, p) in irreps_out if l % 2 == 1}
    if len(odd) > 1:
        raise ValueError(f"spherical_harmonics: odd degrees must share one parity, got {irreps_out}")
    if isinstance(input, e3nn_jax.IrrepsArray) and odd and odd != {_vector_parity(input.irreps)}:
        raise ValueError(f"spherical_harmonics: input ({input.irreps}) and output ({irreps_out}) must have a "
                         "compatible parity")
    return irreps_out


def _vector_parity(irreps: e3nn_jax.Irreps) -> int:
    if len(irreps) != 1 or irreps[0].mul != 1 or irreps[0].ir.l != 1:
        raise ValueError(f"spherical_harmonics: `input` must be a single vector (1x1o or 1x1e), got {irreps}")
    return irreps[0].ir.p


def spherical_harmonics(irreps_out, input, normalize: bool, normalization: str | None = None, *,
                        algorithm=None) -> e3nn_jax.IrrepsArray:
    """``e3nn_jax.spherical_harmonics`` on our SH kernel (degrees up to 8; ``algorithm`` is ignored).

    Args:
        irreps_out: ``Irreps`` (or string) of the output, an ``int`` degree or a list of degrees (then
            ``input`` must be an IrrepsArray, whose parity the odd degrees take).
        input: ``[..., 3]`` array or ``IrrepsArray`` ``1x1o``/``1x1e`` of Cartesian vectors.
        normalize: evaluate on ``input / |input|`` (the zero vector gives ``[1, 0, ...]``).
        normalization: ``"component"`` (e3nn-jax's default), ``"norm"`` or ``"integral"``.
    """
    del algorithm
    if normalization is None:
        normalization = e3nn_jax.config("spherical_harmonics_normalization")
    if normalization not in ("component", "norm", "integral"):
        raise ValueError(f"spherical_harmonics: `normalization` must be 'component', 'norm' or 'integral', "
                         f"got {normalization!r}")
    irreps_out = _sh_irreps(irreps_out, input)
    x = input.array if isinstance(input, e3nn_jax.IrrepsArray) else jnp.asarray(input)
    if x.ndim < 1 or x.shape[-1] != 3:
        raise ValueError(f"spherical_harmonics: `input` must have shape [..., 3], got {tuple(x.shape)}")
    x = x.astype(_float_dtype(x))
    if irreps_out.num_irreps == 0:
        return e3nn_jax.IrrepsArray(irreps_out, jnp.zeros(x.shape[:-1] + (0,), x.dtype))
    if x.dtype not in _FLOATS or irreps_out.lmax > SH_MAX_L:
        _fallback("spherical_harmonics", f"degree {irreps_out.lmax} > {SH_MAX_L} or dtype {x.dtype}")
        return _e3nn_spherical_harmonics(irreps_out, input, normalize, normalization)
    y = _sh(x, irreps_out.lmax, normalize=bool(normalize), normalization=normalization)
    if [(mul, ir.l) for mul, ir in irreps_out] != [(1, l) for l in range(irreps_out.lmax + 1)]:
        reps = (1,) * (y.ndim - 1)
        y = jnp.concatenate([jnp.tile(y[..., ir.l**2:(ir.l + 1) ** 2], reps + (mul,)) for mul, ir in irreps_out],
                            axis=-1)
    return e3nn_jax.IrrepsArray(irreps_out, y)


def sh(irreps_out, input, normalize: bool, normalization: str | None = None, *, algorithm=None) -> jax.Array:
    """``e3nn_jax.sh``: :func:`spherical_harmonics` of a plain ``[..., 3]`` array, returning the array."""
    return spherical_harmonics(irreps_out, e3nn_jax.IrrepsArray("1e", jnp.asarray(input)), normalize,
                               normalization, algorithm=algorithm).array


# ---- channelwise tensor product (e3nn_jax.tensor_product) ---------------------------------------

@dataclasses.dataclass(frozen=True)
class _Plan:
    """``e3nn_jax.tensor_product(x, y)`` as one of our uvu TensorProducts.

    Each ``(mul2, ir2)`` entry of y is split into ``mul2`` single-channel entries (the same memory), so
    every path is uvu; the output entries are built directly in e3nn-jax's sorted order, so that when y
    has single channels (spherical harmonics: the usual case) our output *is* e3nn-jax's array. With
    several y channels e3nn-jax orders a block's channels ``(u, v)`` and we produce ``(v, u)``:
    ``out_perm``/``channel_perm`` (None when the identity) move between the two.
    """

    tp: TensorProduct | None  # None: no path (the output is zero)
    irreps_unsorted: e3nn_jax.Irreps  # e3nn-jax's output before sort (for zero_flags)
    unsorted_computed: tuple  # per unsorted entry: False where an input chunk is zero (e3nn-jax: None)
    unsorted_offsets: tuple  # offset of each unsorted entry in e3nn-jax's sorted output
    irreps_out: e3nn_jax.Irreps
    out_perm: np.ndarray | None  # e3nn element i = ours[out_perm[i]]
    channel_perm: np.ndarray | None  # our weight channel c = e3nn channel channel_perm[c]


@functools.lru_cache(maxsize=256)
def _plan(irreps1, irreps2, filter_ir_out, irrep_normalization, regroup_output, zero1, zero2, weighted) -> _Plan:
    split2, first = [], []  # y entries split into single channels; index of each entry's first one
    for mul2, ir2 in irreps2:
        first.append(len(split2))
        split2.extend([(1, ir2)] * mul2)
    entries = []  # e3nn-jax's unsorted output entries: (mul1, mul2, ir_out, i1, i2, computed)
    for i1, (mul1, ir1) in enumerate(irreps1):
        for i2, (mul2, ir2) in enumerate(irreps2):
            for ir_out in ir1 * ir2:
                if filter_ir_out is None or ir_out in filter_ir_out:
                    entries.append((mul1, mul2, ir_out, i1, i2, not (zero1[i1] or zero2[i2])))
    irreps_unsorted = e3nn_jax.Irreps([(m1 * m2, ir) for m1, m2, ir, *_ in entries])
    sort = irreps_unsorted.sort()
    order = sort.inv  # sorted entry k is unsorted entry order[k]
    irreps_out = sort.irreps
    if regroup_output:
        irreps_out = irreps_out.regroup()

    out_irreps, instructions, out_perm, channel_perm = [], [], [], []
    sorted_offset, unsorted_offsets = 0, [0] * len(entries)
    for k in order:
        mul1, mul2, ir_out, i1, i2, computed = entries[k]
        unsorted_offsets[k] = sorted_offset
        d = ir_out.dim
        first_out = len(out_irreps)
        for v in range(mul2):
            if computed:
                instructions.append((i1, first[i2] + v, len(out_irreps), "uvu", weighted))
            out_irreps.append((mul1, ir_out))
        # e3nn-jax: element ((u * mul2 + v) * d + m); ours: block v, then (u * d + m)
        u, v, m = np.meshgrid(np.arange(mul1), np.arange(mul2), np.arange(d), indexing="ij")
        out_perm.append(sorted_offset + (v * mul1 + u) * d + m)
        ch_base = sum(mul for mul, _ in out_irreps[:first_out])
        vv, uu = np.meshgrid(np.arange(mul2), np.arange(mul1), indexing="ij")
        channel_perm.append(ch_base + uu * mul2 + vv)
        sorted_offset += mul1 * mul2 * d
    out_perm = np.concatenate([p.ravel() for p in out_perm]).astype(np.int32) if out_perm else np.zeros(0, np.int32)
    channel_perm = (np.concatenate([p.ravel() for p in channel_perm]).astype(np.int32)
                    if channel_perm else np.zeros(0, np.int32))
    identity = all(mul2 <= 1 for _, mul2, *_ in entries)
    tp = None
    if instructions:
        # path normalisation "element" with one path per output entry and one y channel is 1, and
        # gradient normalisation "path" puts sqrt(alpha) in the forward pass: the path weight is then
        # e3nn-jax's factor (sqrt(ir_out.dim) for "component", sqrt(dim1 * dim2) for "norm").
        tp = TensorProduct(irreps1, e3nn_jax.Irreps(split2), e3nn_jax.Irreps(out_irreps), instructions,
                           irrep_normalization=irrep_normalization, path_normalization="element",
                           gradient_normalization="path")
    return _Plan(tp=tp, irreps_unsorted=irreps_unsorted, unsorted_computed=tuple(e[-1] for e in entries),
                 unsorted_offsets=tuple(unsorted_offsets),
                 irreps_out=irreps_out, out_perm=None if identity else out_perm,
                 channel_perm=None if identity else channel_perm)


def _filter_key(filter_ir_out):
    if filter_ir_out is None:
        return None
    if isinstance(filter_ir_out, str):
        filter_ir_out = e3nn_jax.Irreps(filter_ir_out)
    if isinstance(filter_ir_out, e3nn_jax.Irrep):
        filter_ir_out = [filter_ir_out]
    if isinstance(filter_ir_out, e3nn_jax.Irreps):
        return tuple(ir for _, ir in filter_ir_out)
    return tuple(e3nn_jax.Irrep(ir) for ir in filter_ir_out)


def _irrep_normalization(value):
    value = e3nn_jax.config("irrep_normalization") if value is None else value
    if value not in ("component", "norm", "none"):
        raise ValueError(f"irrep_normalization must be 'component', 'norm' or 'none', got {value!r}")
    return value


def tensor_product(input1, input2, *, filter_ir_out=None, irrep_normalization: str | None = None,
                   regroup_output: bool = True):
    """``e3nn_jax.tensor_product`` (every ``ir1 ⊗ ir2`` path, ``mul1 * mul2`` channels, no weights).

    Inputs are ``IrrepsArray`` (or arrays, read as scalars) with broadcastable leading shapes; with two
    ``Irreps`` (or strings) it returns the output irreps, like e3nn-jax. Scale the result's channels with
    per-edge radial weights as usual (``tensor_product(x, sh) * w``), or use :func:`message_passing`
    to fuse gather, product, weights and scatter.
    """
    if all(isinstance(a, (str, e3nn_jax.Irreps)) for a in (input1, input2)):
        return _e3nn_tensor_product(input1, input2, filter_ir_out=filter_ir_out,
                                       irrep_normalization=irrep_normalization, regroup_output=regroup_output)
    x1, x2 = e3nn_jax.as_irreps_array(input1), e3nn_jax.as_irreps_array(input2)
    dtype = _float_dtype(x1, x2)
    if dtype not in _FLOATS:
        _fallback("tensor_product", f"dtype {dtype}")
        return _e3nn_tensor_product(input1, input2, filter_ir_out=filter_ir_out,
                                       irrep_normalization=irrep_normalization, regroup_output=regroup_output)
    x1, x2 = x1.astype(dtype), x2.astype(dtype)
    leading = jnp.broadcast_shapes(x1.shape[:-1], x2.shape[:-1])
    if regroup_output:
        x1, x2 = x1.regroup(), x2.regroup()
    plan = _plan(x1.irreps, x2.irreps, _filter_key(filter_ir_out), _irrep_normalization(irrep_normalization),
                 bool(regroup_output), tuple(x1.zero_flags), tuple(x2.zero_flags), False)
    if plan.tp is None:
        out = jnp.zeros(leading + (plan.irreps_out.dim,), dtype)
    else:
        out = plan.tp(x1.array, x2.array, jnp.zeros((0,), dtype), shared_weights=True)  # broadcasts x1, x2
    if plan.out_perm is not None:
        out = out[..., plan.out_perm]
    if not any(x1.zero_flags) and not any(x2.zero_flags):
        return e3nn_jax.IrrepsArray(plan.irreps_out, out)
    # Zero chunks: rebuild e3nn-jax's chunk list so that its zero_flags come out the same.
    chunks = []
    for (n, ir_out), computed, off in zip(plan.irreps_unsorted, plan.unsorted_computed, plan.unsorted_offsets):
        chunks.append(out[..., off:off + n * ir_out.dim].reshape(leading + (n, ir_out.dim)) if computed else None)
    result = e3nn_jax.from_chunks(plan.irreps_unsorted, chunks, leading, dtype).sort()
    return result.regroup() if regroup_output else result


# ---- legacy FunctionalTensorProduct ---------------------------------------------------------------

class FunctionalTensorProduct(e3nn_jax.legacy.FunctionalTensorProduct):
    """``e3nn_jax.legacy.FunctionalTensorProduct`` whose ``left_right`` runs on our kernels.

    Same constructor (instructions ``(i_in1, i_in2, i_out, mode, has_weight[, path_weight])``, variances,
    normalisations) and the same ``instructions`` attribute, so weights initialised from
    ``ins.path_shape``/``ins.weight_std`` carry over. Modes ``uvu`` and ``uvw`` run on our kernels; the
    others (``uvv``, ``uuw``, ``uuu``, ``uvuv``) on e3nn-jax's einsums (see ``FALLBACK_TO_E3NN``).
    """

    def __init__(self, irreps_in1, irreps_in2, irreps_out, instructions, in1_var=None, in2_var=None,
                 out_var=None, irrep_normalization=None, path_normalization=None, gradient_normalization=None):
        super().__init__(irreps_in1, irreps_in2, irreps_out, instructions, in1_var=in1_var, in2_var=in2_var,
                         out_var=out_var, irrep_normalization=irrep_normalization,
                         path_normalization=path_normalization, gradient_normalization=gradient_normalization)
        modes = {ins.connection_mode for ins in self.instructions}
        self._unsupported = sorted(modes - {"uvu", "uvw"})
        self._tp = None if self._unsupported else TensorProduct(
            irreps_in1, irreps_in2, irreps_out, instructions, in1_var=in1_var, in2_var=in2_var, out_var=out_var,
            irrep_normalization=irrep_normalization, path_normalization=path_normalization,
            gradient_normalization=gradient_normalization)

    def left_right(self, weights, input1, input2=None, *, custom_einsum_jvp=None, fused=None, sparse=None):
        """``e3nn_jax.legacy.FunctionalTensorProduct.left_right``: weights as a list (one array of
        ``ins.path_shape`` per weighted instruction) or flat ``[weight_numel]`` (or ``[..., weight_numel]``,
        one row per batch row); ``left_right(input1, input2)`` when no instruction has weights. The
        inputs are ``IrrepsArray`` of ``irreps_in1``/``irreps_in2`` (or arrays ``[..., dim]``); leading
        dimensions broadcast (e3nn-jax requires unbatched inputs and ``jax.vmap``)."""
        if input2 is None:
            weights, input1, input2 = [], weights, input1
        if self._tp is None:
            _fallback("FunctionalTensorProduct", f"connection modes {self._unsupported}")
            return super().left_right(weights, input1, input2, custom_einsum_jvp=custom_einsum_jvp,
                                      fused=fused, sparse=sparse)
        num_weighted = sum(ins.has_weight for ins in self.instructions)
        if isinstance(weights, (list, tuple)):
            if len(weights) != num_weighted:
                raise ValueError(f"FunctionalTensorProduct.left_right: {num_weighted} weight arrays expected "
                                 f"(one per weighted instruction), got {len(weights)}")
            shapes = [ins.path_shape for ins in self.instructions if ins.has_weight]
            for n, (w, shape) in enumerate(zip(weights, shapes)):
                if tuple(jnp.shape(w)) != tuple(shape):
                    raise ValueError(f"FunctionalTensorProduct.left_right: weights[{n}] must have shape "
                                     f"{tuple(shape)} (path_shape), got {tuple(jnp.shape(w))}")
            weights = [jnp.asarray(w) for w in weights]
        else:
            weights = jnp.asarray(weights)
        xs = []
        for name, a, irreps in (("input1", input1, self.irreps_in1), ("input2", input2, self.irreps_in2)):
            if isinstance(a, e3nn_jax.IrrepsArray):
                if a.irreps.simplify() != irreps.simplify():
                    raise ValueError(f"FunctionalTensorProduct.left_right: `{name}` has irreps {a.irreps}, "
                                     f"expected {irreps}")
                a = a.array
            xs.append(jnp.asarray(a))
        dtype = _float_dtype(*xs, *(weights if isinstance(weights, list) else [weights]))
        if dtype not in _FLOATS:
            _fallback("FunctionalTensorProduct", f"dtype {dtype}")
            return super().left_right(weights, input1, input2)
        if isinstance(weights, list):
            weights = (jnp.concatenate([w.reshape(-1).astype(dtype) for w in weights]) if weights
                       else jnp.zeros((0,), dtype))
        x, y = (a.astype(dtype) for a in xs)
        leading = jnp.broadcast_shapes(x.shape[:-1], y.shape[:-1])
        if min(self.irreps_in1.dim, self.irreps_in2.dim, self.irreps_out.dim) == 0:
            return e3nn_jax.zeros(self.irreps_out, leading, dtype)
        return e3nn_jax.IrrepsArray(self.irreps_out, self._tp(x, y, weights.astype(dtype)))


# ---- fused message passing ------------------------------------------------------------------------

def _message_plan(op, node_feats, edge_irreps, edge_weights, filter_ir_out, irrep_normalization, regroup_output):
    """``edge_irreps``: already regrouped when ``regroup_output`` (the caller regroups its array)."""
    x = e3nn_jax.as_irreps_array(node_feats)
    if regroup_output:
        x = x.regroup()
    if x.ndim != 2:
        raise ValueError(f"{op}: `node_feats` must have shape [num_nodes, {x.irreps.dim}], got {tuple(x.shape)}")
    no_zeros = (False,)
    plan = _plan(x.irreps, edge_irreps, _filter_key(filter_ir_out), _irrep_normalization(irrep_normalization),
                 bool(regroup_output), no_zeros * len(x.irreps), no_zeros * len(edge_irreps),
                 edge_weights is not None)
    return x, plan


def _weights(op, plan, edge_weights, num_edges, dtype):
    if edge_weights is None:
        return jnp.zeros((0,), dtype)
    w = jnp.asarray(edge_weights)
    channels = plan.irreps_out.num_irreps
    if w.shape != (num_edges, channels):
        raise ValueError(f"{op}: `edge_weights` must have shape [E, num_irreps] = ({num_edges}, {channels}) "
                         f"(one weight per output channel of {plan.irreps_out}), got {tuple(w.shape)}")
    w = w.astype(dtype)
    return w if plan.channel_perm is None else w[:, plan.channel_perm]


def _finish(plan, out, num_nodes):
    if plan.tp is None:
        out = jnp.zeros((num_nodes, plan.irreps_out.dim), out.dtype)
    elif plan.out_perm is not None:
        out = out[:, plan.out_perm]
    return e3nn_jax.IrrepsArray(plan.irreps_out, out)


def message_passing(node_feats, edge_attrs, edge_weights, senders, receivers, *, num_nodes: int | None = None,
                    filter_ir_out=None, irrep_normalization: str | None = None, regroup_output: bool = True,
                    deterministic: bool = False) -> e3nn_jax.IrrepsArray:
    """One fused call for the message passing of NequIP/Nequix/MACE-style models::

        messages = e3nn.tensor_product(node_feats[senders], edge_attrs, filter_ir_out=filter_ir_out)
        messages = messages * edge_weights                     # per-edge radial weights, one per channel
        out = e3nn.scatter_sum(messages, dst=receivers, output_size=num_nodes)

    Args:
        node_feats: ``IrrepsArray [num_nodes, ...]``.
        edge_attrs: ``IrrepsArray [E, ...]`` (e.g. spherical harmonics of the edge vectors).
        edge_weights: ``[E, num_irreps]``, one weight per output channel (``messages.irreps.num_irreps``),
            or None for an unweighted sum.
        senders, receivers: ``[E]`` int32/int64; an edge with an index outside ``[0, num_nodes)`` is dropped.
        num_nodes: output rows (default: ``node_feats.shape[0]``).
        filter_ir_out, irrep_normalization, regroup_output: as in ``e3nn_jax.tensor_product``.
        deterministic: bitwise reproducible sums (see :func:`jaxbatmobile.conv`).

    Returns ``IrrepsArray [num_nodes, ...]`` with the irreps of the tensor product, computed without
    storing per-edge messages; differentiable to any order (forces, force training).
    """
    y = e3nn_jax.as_irreps_array(edge_attrs)
    if regroup_output:
        y = y.regroup()
    x, plan, dtype, num_nodes, w = _message_inputs("message_passing", node_feats, y.irreps, y, edge_weights,
                                                   num_nodes, filter_ir_out, irrep_normalization, regroup_output)
    if plan.tp is None:
        return _finish(plan, jnp.zeros((0,), dtype), num_nodes)
    out = conv(plan.tp, x.array.astype(dtype), y.array.astype(dtype), w, senders, receivers, num_nodes=num_nodes,
               deterministic=deterministic)
    return _finish(plan, out, num_nodes)


def _message_inputs(op, node_feats, edge_irreps, edge_array, edge_weights, num_nodes, filter_ir_out,
                    irrep_normalization, regroup_output):
    """What both message-passing ops prepare: the node features and plan, the common float dtype, the
    node count and the per-edge weight rows for the kernel (``edge_array``: attributes or vectors, [E, ...])."""
    x, plan = _message_plan(op, node_feats, edge_irreps, edge_weights, filter_ir_out, irrep_normalization,
                            regroup_output)
    dtype = _float_dtype(x, edge_array, *([] if edge_weights is None else [jnp.asarray(edge_weights)]))
    num_nodes = x.shape[0] if num_nodes is None else num_nodes
    w = _weights(op, plan, edge_weights, edge_array.shape[0], dtype)
    return x, plan, dtype, num_nodes, w


def sh_message_passing(node_feats, edge_vectors, edge_weights, senders, receivers, *, lmax: int,
                       num_nodes: int | None = None, normalize: bool = True, normalization: str | None = None,
                       filter_ir_out=None, irrep_normalization: str | None = None, regroup_output: bool = True,
                       deterministic: bool = False) -> e3nn_jax.IrrepsArray:
    """:func:`message_passing` with ``edge_attrs = spherical_harmonics(Irreps.spherical_harmonics(lmax),
    edge_vectors, normalize, normalization)`` (degrees ``0..lmax``) evaluated inside the kernel: the
    spherical harmonics never reach device memory.

    ``edge_vectors``: ``[E, 3]`` or ``IrrepsArray`` ``1o``. Above ``lmax = 4`` the harmonics are computed
    first (our SH kernel) and :func:`message_passing` is called.
    """
    vectors = edge_vectors.array if isinstance(edge_vectors, e3nn_jax.IrrepsArray) else jnp.asarray(edge_vectors)
    if not isinstance(lmax, (int, np.integer)) or isinstance(lmax, bool) or not 0 <= lmax <= SH_MAX_L:
        raise ValueError(f"sh_message_passing: `lmax` must be an int in [0, {SH_MAX_L}], got {lmax!r}")
    l_max = int(lmax)
    irreps = e3nn_jax.Irreps.spherical_harmonics(l_max)
    if vectors.ndim != 2 or vectors.shape[1] != 3:
        raise ValueError(f"sh_message_passing: `edge_vectors` must have shape [E, 3], got {tuple(vectors.shape)}")
    normalization = e3nn_jax.config("spherical_harmonics_normalization") if normalization is None else normalization
    if l_max > SH_CONV_MAX_L:
        sh = spherical_harmonics(irreps, vectors, normalize, normalization)
        return message_passing(node_feats, sh, edge_weights, senders, receivers, num_nodes=num_nodes,
                               filter_ir_out=filter_ir_out, irrep_normalization=irrep_normalization,
                               regroup_output=regroup_output, deterministic=deterministic)
    x, plan, dtype, num_nodes, w = _message_inputs("sh_message_passing", node_feats, irreps, vectors, edge_weights,
                                                   num_nodes, filter_ir_out, irrep_normalization, regroup_output)
    if plan.tp is None:
        return _finish(plan, jnp.zeros((0,), dtype), num_nodes)
    out = sh_conv(plan.tp, x.array.astype(dtype), vectors.astype(dtype), w, senders, receivers,
                  num_nodes=num_nodes, normalize=normalize, normalization=normalization, deterministic=deterministic)
    return _finish(plan, out, num_nodes)
