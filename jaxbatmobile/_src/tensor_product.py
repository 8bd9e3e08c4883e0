"""Clebsch-Gordan tensor products as one jax primitive, with every derivative on the same kernels.

The weighted TP is the 4-linear form ``T(x, y, w, z) = Σ c·x·y·w·z`` (csrc/core/tp.h). The primitive
``tp_p`` takes three of the four operands and returns the gradient of ``T`` with respect to the fourth
(the *slot*): slot z is the forward product ``z = TP(x, y; w)``; slots x, y and w are its transposes.
Hence:

* JVP: ``T`` is linear in each operand, so the tangent is the sum of the same call with one operand
  replaced by its tangent (symbolic zeros skipped);
* transpose with respect to operand t, given the cotangent of the output slot s: the same primitive
  with slot t, the cotangent taking slot s's place.

Every derivative of every order is therefore a ``tp_p`` call (cuEquivariance's idea), so grad-of-grad
(force training) runs on our kernels.

Conventions, normalisation and the flat weight layout are those of
``e3nn_jax.legacy.FunctionalTensorProduct``: we build one to read its normalised path weights, and
take the real CG coefficients from ``e3nn_jax.clebsch_gordan``.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import e3nn_jax as e3nn
import e3nn_jax.legacy
from e3nn_jax.legacy import FunctionalTensorProduct as _E3nnFunctionalTensorProduct  # bound at import: see e3nn.py
import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir

from jaxbatmobile._src import ffi, tables as coefficient_tables
from jaxbatmobile._src.sh import _NORMALIZATIONS as sh_normalizations, sh_jvp_p

SLOT_X, SLOT_Y, SLOT_W, SLOT_Z = 0, 1, 2, 3
_SLOT_NAMES = ("x", "y", "weights", "output")
_MODES = {"uvu": 0, "uvw": 1}
_MODE_OUTER = 2  # internal (csrc/core/tp.h, TpMode::kOuter): the uvw route, _UvwGemm
_PATH_FIELDS = 14  # csrc/core/tp.h, TpPath
KERNEL_GENERIC, KERNEL_UVU = 0, 1  # csrc/core/tp.h, TpKernel


@dataclasses.dataclass(frozen=True, eq=False)
class _Tables:
    """Problem tables handed to the kernels (identity-hashed: one per TensorProduct)."""

    paths: np.ndarray  # int32 [P, 14], grouped by output block
    cg_ijk: np.ndarray  # int32 [E, 3]
    cg_coef: np.ndarray  # float64 [E], e3nn's real CG coefficients
    path_weight: np.ndarray  # float64 [P], e3nn's path normalisation
    paths_by_x: np.ndarray  # the same paths grouped by x block (the x-gradient kernel sums over runs)
    path_weight_by_x: np.ndarray
    num_items: int
    dims: tuple  # (dim_x, dim_y, dim_z, num_w)
    kernel: int  # KERNEL_GENERIC or KERNEL_UVU (csrc/core/tp.h, TpKernel)
    zero_fill: int  # bit s: operand s has elements that no path writes (csrc/core/tp.h, TpCall)
    yc_width: int  # elements of one row's y-contracted CG blocks (csrc/core/tp.h, TpCall)
    uvu_shape: int = 0  # shape code of a full channelwise problem (csrc/core/tp_uvu_shape.h), else 0


class TensorProduct:
    """A weighted Clebsch-Gordan tensor product, equal to ``e3nn_jax.legacy.FunctionalTensorProduct``.

    Args:
        irreps_in1, irreps_in2, irreps_out: ``e3nn_jax.Irreps`` or strings.
        instructions: ``(i_in1, i_in2, i_out, mode, has_weight[, path_weight])`` with mode ``"uvu"``
            (channelwise: MACE, NequIP) or ``"uvw"`` (fully connected); see
            :func:`channelwise_instructions` for the usual uvu list.
        irrep_normalization, path_normalization, gradient_normalization: as in e3nn-jax
            (defaults from ``e3nn_jax.config``).
        in1_var, in2_var, out_var: per-irrep variances, as in ``e3nn_jax.legacy.FunctionalTensorProduct``
            (default 1).

    Call ``tp(x, y, weights)`` with ``x [..., irreps_in1.dim]``, ``y [..., irreps_in2.dim]`` and weights
    either shared ``[weight_numel]`` or one row per batch row ``[..., weight_numel]``, laid out as
    e3nn-jax's flat weight vector (the weighted instructions' weights concatenated in order).
    """

    def __init__(self, irreps_in1, irreps_in2, irreps_out, instructions: Sequence[tuple], *,
                 irrep_normalization: str | None = None, path_normalization=None,
                 gradient_normalization=None, in1_var=None, in2_var=None, out_var=None):
        self.irreps_in1 = e3nn.Irreps(irreps_in1)
        self.irreps_in2 = e3nn.Irreps(irreps_in2)
        self.irreps_out = e3nn.Irreps(irreps_out)
        instructions = [tuple(ins) for ins in instructions]
        _check_instructions(self.irreps_in1, self.irreps_in2, self.irreps_out, instructions)
        self.e3nn = _E3nnFunctionalTensorProduct(
            self.irreps_in1, self.irreps_in2, self.irreps_out, instructions,
            in1_var=in1_var, in2_var=in2_var, out_var=out_var, irrep_normalization=irrep_normalization, path_normalization=path_normalization,
            gradient_normalization=gradient_normalization)
        self.instructions = self.e3nn.instructions
        self.weight_numel = sum(int(np.prod(i.path_shape)) for i in self.instructions if i.has_weight)
        self._tables = _build_tables(self)
        # uvw paths as CG product + GEMM (None: no uvw path contributes, the kernels take it all).
        uvw = any(i.connection_mode == "uvw" and _contributes(self, i) for i in self.instructions)
        self._uvw_gemm = _UvwGemm(self) if uvw else None

    def __repr__(self):
        return (f"TensorProduct({self.irreps_in1} x {self.irreps_in2} -> {self.irreps_out}, "
                f"{len(self.instructions)} paths, {self.weight_numel} weights)")

    def __call__(self, x, y, weights, *, shared_weights: bool | None = None) -> jax.Array:
        x, y, weights, shared = _check_call(self, x, y, weights, shared_weights)
        batch = jnp.broadcast_shapes(x.shape[:-1], y.shape[:-1], () if shared else weights.shape[:-1])
        x = jnp.broadcast_to(x, batch + x.shape[-1:])
        y = jnp.broadcast_to(y, batch + y.shape[-1:])
        if not shared:
            weights = jnp.broadcast_to(weights, batch + weights.shape[-1:])
        if self._uvw_gemm is not None and (shared or _UVW_GEMM_PER_ROW):
            return self._uvw_gemm(x, y, weights, shared)
        return _bind(self._tables, SLOT_Z, shared, x, y, weights)


def channelwise_instructions(irreps_in1, irreps_in2, irreps_out) -> list[tuple]:
    """Every valid uvu path (one weight per channel and path): MACE/NequIP's convolution TP.

    A path ``(i1, i2, io)`` is valid when ``irreps_out[io]`` is in ``ir1 ⊗ ir2`` (parity included) and has
    the multiplicity of ``irreps_in1[i1]``.
    """
    irreps_in1, irreps_in2, irreps_out = e3nn.Irreps(irreps_in1), e3nn.Irreps(irreps_in2), e3nn.Irreps(irreps_out)
    return [
        (i1, i2, io, "uvu", True)
        for i1, (mul1, ir1) in enumerate(irreps_in1)
        for i2, (_, ir2) in enumerate(irreps_in2)
        for io, (mulo, iro) in enumerate(irreps_out)
        if iro in ir1 * ir2 and mulo == mul1
    ]


def _check_instructions(in1, in2, out, instructions):
    for n, ins in enumerate(instructions):
        if len(ins) not in (5, 6):
            raise ValueError(f"TensorProduct: instruction {n} must be (i_in1, i_in2, i_out, mode, has_weight"
                             f"[, path_weight]), got {ins!r}")
        i1, i2, io, mode, has_weight = ins[:5]
        for i, irreps, name in ((i1, in1, "irreps_in1"), (i2, in2, "irreps_in2"), (io, out, "irreps_out")):
            if not isinstance(i, (int, np.integer)) or not 0 <= i < len(irreps):
                raise ValueError(f"TensorProduct: instruction {n} indexes {name}[{i}], which has {len(irreps)} entries")
        if mode not in _MODES:
            raise ValueError(f"TensorProduct: instruction {n} has mode {mode!r}; supported: 'uvu', 'uvw'")
        (mul1, ir1), (mul2, ir2), (mulo, iro) = in1[i1], in2[i2], out[io]
        if iro not in ir1 * ir2:
            raise ValueError(f"TensorProduct: instruction {n}: {iro} is not in {ir1} x {ir2} "
                             "(degree or parity selection rule)")
        if mode == "uvu" and mulo != mul1:
            raise ValueError(f"TensorProduct: instruction {n} is uvu, so irreps_out[{io}] needs multiplicity "
                             f"{mul1} (that of irreps_in1[{i1}]), got {mulo}")
        if mode == "uvw" and not has_weight:
            raise ValueError(f"TensorProduct: instruction {n}: uvw paths must have weights")


# Per-row uvw weights through _UvwGemm too (a batched product per row) instead of the item kernel.
# H100, fp32, B = 50k, "FC uvw per-row" (16 channels, tools/ab_rows.py, benchmarks/NOTES.md session 12):
# fwd 2.87 ms against 4.24, fwd+bwd 5.90 against 33.1.
_UVW_GEMM_PER_ROW = True


class _UvwGemm:
    """The uvw paths of a call as a CG product followed by matrix products.

    With one weight tensor for the batch, a uvw path is ``out[r, w, k] = Σ_uv W[uv, w] T[r, k, uv]``
    where ``T[r, k, uv] = pw · Σ_ij C_ijk x[r, u, i] y[r, v, j]`` has no weights: our kernel computes T
    for every such path (mode outer, csrc/core/tp.h, component-major so that each path's block is a
    [dim_out, mul1·mul2] matrix) and XLA multiplies it with W as one GEMM per path ([rows·dim_out,
    mul1·mul2] × [mul1·mul2, mul_out], fp32 accumulation: precision HIGHEST), as e3nn-jax does. The item
    loop would instead read every weight once per row and add every contribution atomically (benchmarks/
    NOTES.md, session 11: 14.6 ms forward against e3nn-jax's 0.58 for FullyConnectedTensorProduct).
    Gradients are jax's of this composition: the weight gradient is the GEMM Tᵀ·G, the x and y gradients
    our kernel's transposes of T. The other paths (uvu) stay on ``rest``, the problem's own kernel.
    Per-row weights take the same route with a batched product per row (_UVW_GEMM_PER_ROW).
    """

    def __init__(self, tp: TensorProduct):
        routed = lambda ins: ins.connection_mode == "uvw"  # noqa: E731
        rows, degrees, path_weight, self.blocks = [], [], [], []
        off_t = 0
        for ins, (mul1, ir1), (mul2, ir2), (mulo, iro), off1, off2, _, off_w in _instruction_layout(tp):
            if routed(ins) and _contributes(tp, ins):
                a = mul1 * mul2
                rows.append([_MODE_OUTER, mul1, mul2, a, off1, off2, off_t, -1, ir1.dim, ir2.dim, iro.dim])
                degrees.append((ir1.l, ir2.l, iro.l))
                path_weight.append(ins.path_weight)
                # (T columns, weight offset, channel pairs, output channels, dim_out, output irrep index)
                self.blocks.append((off_t, off_w, a, mulo, iro.dim, ins.i_out))
                off_t += a * iro.dim
        self.irreps_out = tp.irreps_out
        self.outer = _tables_from_rows(rows, degrees, path_weight, (tp.irreps_in1.dim, tp.irreps_in2.dim, off_t, 0))
        rest = _build_tables(tp, keep=lambda ins: not routed(ins))
        self.rest = rest if len(rest.paths) else None

    def __call__(self, x, y, w, shared=True):
        batch, dtype = x.shape[:-1], x.dtype
        out = _bind(self.rest, SLOT_Z, shared, x, y, w) if self.rest is not None else None
        t = _bind(self.outer, SLOT_Z, True, x, y, jnp.zeros((0,), dtype))
        batched = () if shared else tuple(range(len(batch)))  # per-row weights: a batched product
        per_irrep = [None] * len(self.irreps_out)
        for off_t, off_w, a, mulo, dim, i_out in self.blocks:
            t_p = t[..., off_t:off_t + a * dim].reshape(batch + (dim, a))
            w_p = w[..., off_w:off_w + a * mulo].reshape(w.shape[:-1] + (a, mulo))
            o = jax.lax.dot_general(t_p, w_p, (((len(batch) + 1,), (len(batched),)), (batched, batched)),
                                    precision=jax.lax.Precision.HIGHEST)  # [..., dim, mulo]
            o = jnp.swapaxes(o, -1, -2)
            per_irrep[i_out] = o if per_irrep[i_out] is None else per_irrep[i_out] + o
        pieces = [jnp.zeros(batch + (m.dim,), dtype) if o is None else o.reshape(batch + (m.dim,))
                  for o, m in zip(per_irrep, self.irreps_out)]
        uvw_out = jnp.concatenate(pieces, axis=-1) if pieces else jnp.zeros(batch + (0,), dtype)
        return uvw_out if out is None else out + uvw_out


def _instruction_layout(tp: TensorProduct):
    """Per instruction: (ins, (mul1, ir1), (mul2, ir2), (mul_out, ir_out), off1, off2, off_out, off_w), the
    offsets of its irreps blocks in x, y and z rows and of its weights in e3nn's flat weight row."""
    off1, off2, offo = (np.concatenate([[0], np.cumsum([m.dim for m in irreps])]).astype(int)
                        for irreps in (tp.irreps_in1, tp.irreps_in2, tp.irreps_out))
    off_w = 0
    for ins in tp.instructions:
        yield (ins, tp.irreps_in1[ins.i_in1], tp.irreps_in2[ins.i_in2], tp.irreps_out[ins.i_out],
               int(off1[ins.i_in1]), int(off2[ins.i_in2]), int(offo[ins.i_out]), off_w)
        off_w += int(np.prod(ins.path_shape)) if ins.has_weight else 0
    assert off_w == tp.weight_numel


def _build_tables(tp: TensorProduct, kernel: str = "auto", keep=lambda ins: True) -> _Tables:
    """Flatten the instructions for the kernels. ``kernel="generic"`` forces the generic kernel (tests);
    ``keep(ins)`` selects the instructions to include (the others still own their weights' offsets)."""
    paths, cg, path_weight = [], [], []
    for ins, (mul1, ir1), (mul2, ir2), (mulo, iro), off1, off2, offo, off_w in _instruction_layout(tp):
        if keep(ins) and _contributes(tp, ins):
            paths.append([_MODES[ins.connection_mode], mul1, mul2, mulo, off1, off2, offo,
                          off_w if ins.has_weight else -1, ir1.dim, ir2.dim, iro.dim])
            cg.append((ir1.l, ir2.l, iro.l))
            path_weight.append(ins.path_weight)
    dims = (tp.irreps_in1.dim, tp.irreps_in2.dim, tp.irreps_out.dim, tp.weight_numel)
    tables = _tables_from_rows(paths, cg, path_weight, dims, kernel)
    if tables.kernel == KERNEL_UVU and len(paths) == len(tp.instructions):  # not a subset (the uvw route's rest)
        tables = dataclasses.replace(tables, uvu_shape=_uvu_shape(tp))
    return tables


def _uvu_shape(tp: TensorProduct) -> int:
    """The shape code (csrc/core/tp_uvu_shape.h) of a "full channelwise" problem, else 0: x and the output
    of one multiplicity, y one channel per irrep, each list in increasing degree without repeats (l ≤ 3),
    and the instructions exactly ``channelwise_instructions`` of the three, all contributing. Such a
    problem is fixed by its irreps up to the multiplicity; the GPU runs its forward as straight-line code
    when it was compiled for that shape (MACE-large, MACE-medium), else on the table-driven kernel."""

    def code(irreps, mul):
        degrees = [ir.l for _, ir in irreps]
        if any(m != mul for m, _ in irreps) or degrees != sorted(set(degrees)) or max(degrees) > coefficient_tables.CG_MAX_L:
            return None
        return sum((1 if ir.p == 1 else 2) << (2 * ir.l) for _, ir in irreps)

    if not (len(tp.irreps_in1) and len(tp.irreps_in2) and len(tp.irreps_out)):
        return 0
    mul = tp.irreps_in1[0].mul
    codes = code(tp.irreps_in1, mul), code(tp.irreps_in2, 1), code(tp.irreps_out, mul)
    given = [(i.i_in1, i.i_in2, i.i_out, i.connection_mode, i.has_weight) for i in tp.instructions]
    if (None in codes or given != channelwise_instructions(tp.irreps_in1, tp.irreps_in2, tp.irreps_out)
            or not all(_contributes(tp, ins) for ins in tp.instructions)):
        return 0
    x, y, out = codes
    return x | y << 8 | out << 16


def _contributes(tp, ins) -> bool:
    muls = (tp.irreps_in1[ins.i_in1].mul, tp.irreps_in2[ins.i_in2].mul, tp.irreps_out[ins.i_out].mul)
    return min(muls) > 0 and ins.path_weight != 0


def _tables_from_rows(rows, degrees, path_weight, dims, kernel="auto") -> _Tables:
    """_Tables from path rows (the first 11 fields of csrc/core/tp.h's TpPath) and each path's degrees
    (l1, l2, l_out): appends the CG entries and numbers the items."""
    paths, ijk, coef = [], [], []
    for row, (l1, l2, lo) in zip(rows, degrees):
        entries = coefficient_tables.cg_entries(l1, l2, lo)
        begin = len(coef)
        ijk.extend([i, j, k] for i, j, k, _ in entries)
        coef.extend(c for *_, c in entries)
        paths.append(list(row) + [begin, len(coef), 0])
    paths = np.asarray(paths, np.int32).reshape(-1, _PATH_FIELDS)
    path_weight = np.asarray(path_weight, np.float64)
    num_items = int(_path_items(paths).sum())
    if num_items >= 2**31:
        raise ValueError(f"TensorProduct: {num_items} work items per row is more than the kernels support")
    # The channelwise kernel sums the paths that write one irrep block in registers, over runs of
    # consecutive paths: group them by output block (x block for the x gradient).
    paths, path_weight = _grouped(paths, path_weight, column=6)
    paths_by_x, path_weight_by_x = _grouped(paths, path_weight, column=4)
    # The unrolled channelwise kernel serves problems whose every path is uvu with a single-channel y
    # irrep (MACE, NequIP, Nequix) and degrees it has CG blocks for (csrc/core/tp_uvu.h).
    uvu = len(paths) > 0 and all(
        p[0] == _MODES["uvu"] and p[2] == 1 and max(p[8], p[9], p[10]) <= 2 * coefficient_tables.CG_MAX_L + 1
        for p in paths)
    return _Tables(
        zero_fill=_zero_fill(paths, (dims[0], dims[1], dims[3], dims[2])),
        paths=paths,
        cg_ijk=np.asarray(ijk, np.int32).reshape(-1, 3),
        cg_coef=np.asarray(coef, np.float64),
        path_weight=path_weight,
        paths_by_x=paths_by_x,
        path_weight_by_x=path_weight_by_x,
        num_items=num_items,
        dims=dims,
        kernel=KERNEL_UVU if uvu and kernel == "auto" else KERNEL_GENERIC,
        # Elements of one row's y-contracted CG blocks (csrc/core/tp_uvu.h, uvu_contracted_stride).
        yc_width=int(sum((p[8] * p[10] + 3) // 4 * 4 for p in paths)),
    )


def _path_items(paths):
    """Items per path (csrc/core/tp.h, tp_path_items)."""
    return np.where(paths[:, 0] == _MODES["uvw"], paths[:, 1] * paths[:, 2] * paths[:, 3],
                    paths[:, 1] * paths[:, 2]).astype(np.int64)


def _grouped(paths, path_weight, column):
    """Paths (and their weights) stably sorted by one offset column, items renumbered in the new order."""
    order = np.argsort(paths[:, column], kind="stable")
    paths, path_weight = paths[order].copy(), path_weight[order]
    items = _path_items(paths)
    paths[:, 13] = np.concatenate([[0], np.cumsum(items)[:-1]]) if len(paths) else items
    return paths, path_weight


def _zero_fill(paths, widths) -> int:
    """Bitmask over slots (x, y, w, z): operands with elements that no path writes, which a kernel
    storing only what paths produce must zero first (e.g. an output irrep no instruction reaches)."""
    mask = 0
    for s, width in enumerate(widths):
        covered = np.zeros(width, bool)
        for p in paths:
            mode, mul1, mul2, mulo, off1, off2, offo, off_w, d1, d2, do = (int(v) for v in p[:11])
            start, size = ((off1, mul1 * d1), (off2, mul2 * d2),
                           (off_w, mul1 * mul2 * (mulo if mode == _MODES["uvw"] else 1)),
                           (offo, (mul1 if mode == _MODES["uvu"] else mulo) * do))[s]
            if start >= 0:
                covered[start:start + size] = True
        mask |= int(not covered.all()) << s
    return mask


def _check_call(tp, x, y, w, shared_weights):
    arrays = []
    for name, a in (("x", x), ("y", y), ("weights", w)):
        a = a if hasattr(a, "dtype") else jnp.asarray(a)
        if jnp.dtype(a.dtype) not in (jnp.float32, jnp.float64):
            raise TypeError(f"TensorProduct: `{name}` must be float32 or float64, got {a.dtype}")
        if a.ndim < 1:
            raise ValueError(f"TensorProduct: `{name}` must have at least one dimension")
        arrays.append(a)
    x, y, w = arrays
    if not x.dtype == y.dtype == w.dtype:
        raise TypeError(f"TensorProduct: `x`, `y` and `weights` must share one dtype, got {x.dtype}, {y.dtype}, {w.dtype}")
    for name, a, dim, irreps in (("x", x, tp.irreps_in1.dim, tp.irreps_in1), ("y", y, tp.irreps_in2.dim, tp.irreps_in2)):
        if a.shape[-1] != dim:
            raise ValueError(f"TensorProduct: `{name}` must have shape [..., {dim}] ({irreps}), got {tuple(a.shape)}")
    if w.shape[-1] != tp.weight_numel:
        raise ValueError(f"TensorProduct: `weights` must have shape [..., {tp.weight_numel}] (weight_numel), "
                         f"got {tuple(w.shape)}")
    if shared_weights is None:
        shared_weights = w.ndim == 1 and max(x.ndim, y.ndim) > 1
    if shared_weights and w.ndim != 1:
        raise ValueError(f"TensorProduct: shared `weights` must have shape [{tp.weight_numel}], got {tuple(w.shape)}")
    try:
        jnp.broadcast_shapes(x.shape[:-1], y.shape[:-1], () if shared_weights else w.shape[:-1])
    except ValueError:
        raise ValueError(f"TensorProduct: batch shapes of `x` {x.shape[:-1]}, `y` {y.shape[:-1]} and "
                         f"`weights` {w.shape[:-1]} do not broadcast") from None
    return x, y, w, bool(shared_weights)


# ---- the primitive -------------------------------------------------------------------------------

tp_p = Primitive("jbm_tensor_product")
# The same contraction over a graph (jaxbatmobile._src.conv): operands (a, b, c, senders, receivers);
# x rows are gathered by sender and z rows by receiver from arrays of ``num_nodes`` rows, so an output
# in slot x or z is a scatter-sum over edges. Every rule below serves both primitives.
conv_p = Primitive("jbm_conv")


def _prim(num_nodes):
    return tp_p if num_nodes is None else conv_p


def _bind(tables: _Tables, slot: int, shared: bool, *operands_by_slot, graph=None, sh=None):
    """``operands_by_slot``: the three operands other than ``slot``, in slot order; ``graph``:
    ``(senders, receivers, num_nodes, deterministic)`` for the convolution; ``sh``: ``(l_max, normalize,
    normalization)`` when y's slot holds edge vectors whose spherical harmonics the kernel computes.

    Parameter ``unweighted``: whether paths without weights contribute; true while w's slot holds the
    weights, false once it holds a tangent or cotangent (those paths don't depend on w).
    """
    params = dict(tables=tables, slot=slot, shared=shared, unweighted=True, sh=sh)
    if graph is None:
        return tp_p.bind(*operands_by_slot, num_nodes=None, deterministic=False, **params)
    senders, receivers, num_nodes, deterministic = graph
    return conv_p.bind(*operands_by_slot, senders, receivers, num_nodes=num_nodes,
                       deterministic=bool(deterministic), **params)


def _slots_of(slot):
    return [s for s in range(4) if s != slot]


def _width(tables, s):
    return tables.dims[(0, 1, 3, 2)[s]]  # dims are (x, y, z, w)


def _abstract(*ops, tables, slot, shared, num_nodes, **params):
    slots = _slots_of(slot)
    dtype = ops[0].dtype
    batch = None
    for s, op in zip(slots, ops[:3]):
        if op.dtype != dtype:
            raise TypeError(f"tensor product operands must share a dtype, got {op.dtype} and {dtype}")
        if not (s == SLOT_W and shared):
            batch = op.shape[:-1]
    if slot == SLOT_W and shared:
        return jax.core.ShapedArray((_width(tables, slot),), dtype)
    if num_nodes is not None:
        batch = (num_nodes,) if slot in (SLOT_X, SLOT_Z) else ops[3].shape
    return jax.core.ShapedArray(batch + (_width(tables, slot),), dtype)


for _p in (tp_p, conv_p):
    _p.def_abstract_eval(_abstract)
    ffi.define_impl(_p)


# Edges per piece of a node's list on the GPU's sorted-list channelwise kernel (TpCall::seg_pieces): a
# node with more edges (e.g. the padding node of a jraph batch, holding every padding edge) is summed by
# several blocks, whose partial rows are added in a fixed order. Short pieces also give small graphs
# enough blocks: Nequix's training graph (256 nodes, ~44 edges each) ran its x gradient in 0.59 ms with
# pieces of 64 edges and 0.34 ms with 32 (H100, tools/sweep_pieces.py; benchmarks/NOTES.md, session 8).
SEGMENT_PIECE_EDGES = 32


def _edge_lists(targets, num_nodes):
    """The deterministic scatter's edge lists (csrc/core/tp.h, TpCall::seg_offsets): edges stably sorted
    by target node, where each node's run starts, and the prefix sums of each node's extra pieces
    (TpCall::seg_pieces). Out-of-range targets sort last, in no node's run."""
    # A graph held as constants (indices closed over by a jitted function) would have XLA constant-fold
    # this sort at compile time, seconds per sort on 150k edges (first call of the force step: 2.7 s
    # atomic / 6 s deterministic on the H100); the barrier keeps it runtime work (µs).
    targets = jax.lax.optimization_barrier(targets)
    # Keys as narrow as the node count allows (num_nodes itself marks out-of-range targets): the GPU's
    # radix sort (cub, through XLA's sort rewriter) makes one pass per 8 key bits (H100, 150k edges, 5k
    # nodes: 0.035 ms with int32 keys, 0.018 with uint16; benchmarks/NOTES.md, session 19).
    key_dtype = next(d for d in (jnp.uint8, jnp.uint16, jnp.uint32, jnp.int64) if num_nodes <= jnp.iinfo(d).max)
    key = jnp.where((targets >= 0) & (targets < num_nodes), targets, num_nodes).astype(key_dtype)
    sorted_key, order = jax.lax.sort((key, jax.lax.iota(jnp.int32, key.shape[0])), num_keys=1, is_stable=True)
    # Node n's run starts at the first sorted key >= n (a binary search per node, one fused pass).
    nodes = jnp.arange(num_nodes + 1, dtype=key_dtype)
    offsets = jnp.searchsorted(sorted_key, nodes, side="left", method="scan_unrolled").astype(jnp.int32)
    extra = jnp.maximum(jnp.diff(offsets) - 1, 0) // SEGMENT_PIECE_EDGES
    pieces = jnp.concatenate([jnp.zeros((1,), jnp.int32), jnp.cumsum(extra, dtype=jnp.int32)])
    return offsets, order, pieces


def _piece_scratch_rows(num_edges):
    """Scratch rows for the later pieces of split lists (_edge_lists' pieces): at most the sum over nodes
    of (count - 1) // SEGMENT_PIECE_EDGES <= E // SEGMENT_PIECE_EDGES."""
    return num_edges // SEGMENT_PIECE_EDGES


def _tables_and_attrs(tables, by_x, dtype, *, shared, unweighted, num_nodes, sh):
    """The FFI operands holding the problem tables, and the attributes (csrc/ffi/tp_problem.h)."""
    paths, path_weight = (tables.paths_by_x, tables.path_weight_by_x) if by_x else (tables.paths, tables.path_weight)
    consts = [jnp.asarray(paths), jnp.asarray(tables.cg_ijk), jnp.asarray(tables.cg_coef.astype(dtype)),
              jnp.asarray(path_weight.astype(dtype))]
    dim_x, dim_y, dim_z, num_w = tables.dims
    sh_lmax, sh_normalize, sh_normalization = (-1, False, "component") if sh is None else sh
    attrs = dict(shared_w=np.int32(shared), with_unweighted=np.int32(unweighted),
                 dim_x=np.int32(dim_x), dim_y=np.int32(dim_y), dim_z=np.int32(dim_z), num_w=np.int32(num_w),
                 num_items=np.int64(tables.num_items), kernel=np.int32(tables.kernel | tables.uvu_shape << 4),
                 zero_fill=np.int32(tables.zero_fill), num_nodes=np.int64(-1 if num_nodes is None else num_nodes),
                 sh_lmax=np.int32(sh_lmax), sh_normalize=np.int32(sh_normalize),
                 sh_normalization=np.int32(sh_normalizations[sh_normalization]), yc_width=np.int32(tables.yc_width))
    return consts, attrs


def tp_call_args(a, b, c, graph, out_shape, *, tables, slot, shared, unweighted, num_nodes, deterministic, sh):
    """One jbm_tp call: (operands, attributes, result shapes) for the three input slots a, b, c and the
    graph (senders, receivers) or (). The lowering binds exactly these; tools/dump_tp_call.py writes
    them out for the JAX-free kernel driver (tools/kernel_driver/), which ncu can profile."""
    dtype = a.dtype
    consts, attrs = _tables_and_attrs(tables, slot == SLOT_X, dtype, shared=shared, unweighted=unweighted,
                                      num_nodes=num_nodes, sh=sh)
    empty = jnp.zeros((0,), jnp.int32)
    senders, receivers = graph if graph else (empty, empty)
    seg, scratch_rows = (empty, empty, empty), 0
    # The x gradient scatters to senders, which are rarely sorted: atomics would then hit a new row
    # at every edge, so the channelwise kernel takes the sender-sorted lists in both modes.
    if graph and slot in (SLOT_X, SLOT_Z) and (deterministic or (slot == SLOT_X and tables.kernel == KERNEL_UVU)):
        seg = _edge_lists(receivers if slot == SLOT_Z else senders, num_nodes)
        scratch_rows = _piece_scratch_rows(senders.shape[0]) if tables.kernel == KERNEL_UVU else 0
    results = (jax.ShapeDtypeStruct(out_shape, dtype), jax.ShapeDtypeStruct((scratch_rows * out_shape[-1],), dtype))
    return (a, b, c, senders, receivers, *seg, *consts), dict(slot=np.int32(slot), **attrs), results


def _lowering(ctx, a, b, c, *graph, **params):
    def body(a, b, c, *graph):
        operands, attrs, results = tp_call_args(a, b, c, graph, ctx.avals_out[0].shape, **params)
        out, _ = jax.ffi.ffi_call("jbm_tp", results)(*operands, **attrs)
        return [out]

    return mlir.lower_fun(body, multiple_results=True)(ctx, a, b, c, *graph)


ffi.register_lowering_rule(tp_p, _lowering, "jbm_tp")
ffi.register_lowering_rule(conv_p, _lowering, "jbm_tp")


# ---- derivatives ----------------------------------------------------------------------------------
#
# The tangent of a call is a sum of calls, one per non-zero operand tangent. With one tangent that is a
# single call; with several, the sum is bound as ``tp_lin_p`` (operands, then the tangents, then the
# graph), whose transpose sees every cotangent asked for at once and can fuse them: the x, y and weight
# gradients of a channelwise product share their reads of the operands, and run as one kernel
# (``tp_grads_p``, FFI target jbm_tp_grads) — the fwd+bwd and force-training steps' largest pieces.


def _term_params(params, target):
    """Parameters of the term whose operand in slot ``target`` holds a tangent."""
    if target == SLOT_W:  # paths without weights don't depend on w
        params = dict(params, unweighted=False)
    if target == SLOT_Y and params["sh"] is not None:  # the tangent of y = Y(vectors) is data (J·t)
        params = dict(params, sh=None)
    return params


def _zero_like(x):
    return ad.Zero(jax.typeof(x).to_tangent_aval())


def _operand_tangent(ops, k, t, params):
    """Tangent that operand k's term takes in its slot (through the SH Jacobian when y is vectors)."""
    if _slots_of(params["slot"])[k] == SLOT_Y and params["sh"] is not None:
        l_max, normalize, normalization = params["sh"]
        return sh_jvp_p.bind(ops[k], t, l_max=l_max, normalize=normalize, normalization=normalization)
    return t


def _bind_term(ops, graph, k, t, params):
    """The call with operand k replaced by its tangent t (one term of the tangent sum)."""
    term = list(ops)
    term[k] = t
    return _prim(params["num_nodes"]).bind(*term, *graph, **_term_params(params, _slots_of(params["slot"])[k]))


def _jvp(primals, tangents, **params):
    out = _prim(params["num_nodes"]).bind(*primals, **params)
    return out, _tangent(primals, tangents, out, **params)


def _tangent(primals, tangents, out, **params):
    """The tangent of the call at ``primals`` whose primal output is ``out``."""
    ops, graph = list(primals[:3]), list(primals[3:])
    which = [k for k in range(3) if type(tangents[k]) is not ad.Zero]
    ts = [_operand_tangent(ops, k, tangents[k], params) for k in which]
    if not which:
        return _zero_like(out)
    if len(which) == 1:
        return _bind_term(ops, graph, which[0], ts[0], params)
    return tp_lin_p.bind(*ops, *ts, *graph, which=tuple(which), **params)


ad.primitive_jvps[tp_p] = _jvp
ad.primitive_jvps[conv_p] = _jvp


def _transpose_term(ct, by_slot, target, graph, params):
    """Cotangent of the operand in slot ``target`` given the cotangent ``ct`` of the output slot:
    the same contraction with ``ct`` in the output's place (``by_slot``: the call's operands by slot)."""
    slot = params["slot"]
    by_slot = {s: op for s, op in by_slot.items() if s != target}
    by_slot[slot] = ct
    # A cotangent moving into w's slot is not the weights: paths without weights drop out.
    if slot == SLOT_W:
        params = dict(params, unweighted=False)
    params = dict(params, slot=target)
    # The GPU sums a shared-weight gradient across blocks with atomics; the deterministic mode takes
    # the per-edge gradients instead and reduces them in XLA (a fixed-order reduction).
    per_row = target == SLOT_W and params["shared"] and params["deterministic"]
    if per_row:
        params["shared"] = False
    result = _prim(params["num_nodes"]).bind(*[by_slot[s] for s in _slots_of(target)], *graph, **params)
    return result.sum(axis=0) if per_row else result


def _transpose(ct, *ops, **params):
    slots = _slots_of(params["slot"])
    graph = list(ops[3:])
    ops = ops[:3]
    undefined = [k for k, op in enumerate(ops) if ad.is_undefined_primal(op)]
    if len(undefined) != 1 or any(ad.is_undefined_primal(g) for g in graph):
        raise ValueError("the tensor product is multilinear: transpose needs exactly one unknown operand")
    (k,) = undefined
    target = slots[k]
    if target == SLOT_Y and params["sh"] is not None:
        raise ValueError("spherical harmonics computed in the kernel are not linear in the edge vectors")
    if type(ct) is ad.Zero:
        result = ad.Zero(ops[k].aval)
    elif _fused_grads(params, [target]):
        (result,) = _bind_grads(ct, dict(zip(slots, ops)), graph, params, (target,))
    else:
        result = _transpose_term(ct, dict(zip(slots, ops)), target, graph, params)
    return [result if j == k else None for j in range(3)] + [None] * len(graph)


ad.primitive_transposes[tp_p] = _transpose
ad.primitive_transposes[conv_p] = _transpose


# ---- tp_lin_p: the sum of a call's tangent terms -------------------------------------------------

tp_lin_p = Primitive("jbm_tensor_product_linearized")


def _lin_split(args, which):
    n = len(which)
    return list(args[:3]), list(args[3:3 + n]), list(args[3 + n:])


def _lin_sum(*args, which, **params):
    """Σ over the tangents: the call with operand ``which[i]`` replaced by tangent ``i``."""
    ops, ts, graph = _lin_split(args, which)
    total = None
    for k, t in zip(which, ts):
        out = _bind_term(ops, graph, k, t, params)
        total = out if total is None else total + out
    return total


def _lin_abstract(*args, which, **params):
    ops, _, graph = _lin_split(args, which)
    return _abstract(*ops, *graph, **params)


def _lin_jvp(primals, tangents, *, which, **params):
    ops, ts, graph = _lin_split(primals, which)
    dops, dts, _ = _lin_split(tangents, which)
    out, tangent = 0, None
    for k, t, dt in zip(which, ts, dts):
        term, dterm = list(ops), list(dops)
        term[k], dterm[k] = t, dt
        o, to = _jvp(term + graph, dterm + [None] * len(graph), **_term_params(params, _slots_of(params["slot"])[k]))
        out = out + o
        tangent = to if tangent is None else ad.add_tangents(tangent, to)
    return out, tangent


# Shape codes with compile-time kernels (csrc/core/tp_uvu_shape.h, kCompiledShapes).
_COMPILED_UVU_SHAPES = frozenset(ffi.build_info()["uvu_shapes"])
# The order of tp_grads_p's results: dy, dw, dx (those asked for).
_GRADS_ORDER = (SLOT_Y, SLOT_W, SLOT_X)


def _fused_grads(params, targets):
    """The transposes of one call (to the slots ``targets``) that run as one tp_grads_p pass, in
    _GRADS_ORDER; empty if none. The pass computes gradients in x, y and w from the four operands of
    the 4-linear form (the call's cotangent in its output slot), so any call's transposes qualify:

    * products of a compiled shape (csrc/core/tp_uvu_shape.h): dy and dw, with dx if asked for (the
      whole backward); on a graph, dx alone as well, where the slot-x call would take the table-driven
      sender-list kernel. The pass walks the edges in sender order: dx is summed over each sender's run
      and added to its row by atomic adds, or in the deterministic mode summed over each sender's list
      (pieces of it) in that order and stored. dx and dw without dy stay two passes: one saves little
      (H100, MACE-medium conv: 0.638 ms against 0.365 + 0.314) and keeps the buffers of both gradients'
      operands live at once (the force step's peak memory, 2.58 → 3.14 GB);
    * other channelwise problems: dy and dw of a forward or x-slot call (the edge-chunk kernel).
    """
    tables, graph = params["tables"], params["num_nodes"] is not None
    if params["shared"] or tables.kernel != KERNEL_UVU:
        return ()
    targets = set(targets) - {SLOT_Z}
    if tables.uvu_shape not in _COMPILED_UVU_SHAPES:
        yw = {SLOT_Y, SLOT_W} <= targets and params["slot"] in (SLOT_X, SLOT_Z)
        return (SLOT_Y, SLOT_W) if yw else ()
    if {SLOT_Y, SLOT_W} <= targets:
        return tuple(t for t in _GRADS_ORDER if t in targets)
    return (SLOT_X,) if graph and SLOT_X in targets else ()


def _bind_grads(ct, by_slot, graph, params, grads):
    """The cotangents of the slots ``grads`` (_fused_grads) of a call with operands ``by_slot`` whose
    output's cotangent is ``ct``: one tp_grads_p pass over the 4-linear form's operands."""
    operands = {**by_slot, params["slot"]: ct}
    for s, op in operands.items():  # the unknown operand of a plain transpose: a gradient's slot, unread
        if ad.is_undefined_primal(op):
            operands[s] = jnp.zeros(op.aval.shape, op.aval.dtype)
    return tp_grads_p.bind(*(operands[s] for s in range(4)), *graph, tables=params["tables"],
                           unweighted=params["unweighted"] and params["slot"] != SLOT_W,
                           num_nodes=params["num_nodes"], deterministic=params["deterministic"], sh=params["sh"],
                           grads=grads)


def _lin_transpose(ct, *args, which, **params):
    ops, ts, graph = _lin_split(args, which)
    if any(ad.is_undefined_primal(a) for a in ops + graph):
        raise ValueError("the tensor product's linearization is linear in its tangents only")
    slots = _slots_of(params["slot"])
    undefined = {slots[k]: i for i, k in enumerate(which) if ad.is_undefined_primal(ts[i])}
    cts = [None] * len(ts)
    if type(ct) is ad.Zero:
        cts = [ad.Zero(t.aval) if ad.is_undefined_primal(t) else None for t in ts]
        return [None] * 3 + cts + [None] * len(graph)
    by_slot = dict(zip(slots, ops))
    fused = _fused_grads(params, undefined)
    for target, g in zip(fused, _bind_grads(ct, by_slot, graph, params, fused) if fused else ()):
        cts[undefined.pop(target)] = g
    for target, i in undefined.items():
        term_params = _term_params(params, target)
        cts[i] = _transpose_term(ct, by_slot, target, graph, term_params)
    return [None] * 3 + cts + [None] * len(graph)


def _lin_batch(args, dims, *, which, **params):
    f = lambda *a: _lin_sum(*a, which=which, **params)  # noqa: E731
    return jax.vmap(f, in_axes=tuple(dims))(*args), 0


tp_lin_p.def_abstract_eval(_lin_abstract)
ffi.define_impl(tp_lin_p)
for _platform in ("cpu", "cuda"):
    mlir.register_lowering(tp_lin_p, mlir.lower_fun(_lin_sum, multiple_results=False), platform=_platform)
ad.primitive_jvps[tp_lin_p] = _lin_jvp
ad.primitive_transposes[tp_lin_p] = _lin_transpose
batching.primitive_batchers[tp_lin_p] = _lin_batch


# ---- tp_grads_p: gradients in x, y and w in one pass ----------------------------------------------
#
# Operands x, y, w, z (the 4-linear form's: one of them a cotangent), then the graph; param ``grads``: the
# slots whose gradients it returns, in _GRADS_ORDER (see _fused_grads): dy (the slot-y call on x, w, z),
# dw (slot w on x, y, z), dx (slot x on y, w, z; on a graph summed over each sender's edges, node
# features' shape). Per-row weights. y may be edge vectors (sh): dw and dx read its spherical
# harmonics, and dy is the gradient with respect to their values.

tp_grads_p = Primitive("jbm_tensor_product_grads")
tp_grads_p.multiple_results = True

_GRADS_OPERANDS = {SLOT_Y: (0, 2, 3), SLOT_W: (0, 1, 3), SLOT_X: (1, 2, 3)}  # positions among (x, y, w, z)


def _grads_calls(x, y, w, z, *graph, tables, unweighted, num_nodes, deterministic, sh, grads):
    """The calls tp_grads_p fuses: (operand positions among (x, y, w, z), operands, params) each."""
    base = dict(tables=tables, shared=False, num_nodes=num_nodes, deterministic=deterministic)
    params = {SLOT_Y: dict(base, slot=SLOT_Y, unweighted=unweighted, sh=None),
              SLOT_W: dict(base, slot=SLOT_W, unweighted=False, sh=sh),
              SLOT_X: dict(base, slot=SLOT_X, unweighted=unweighted, sh=sh)}
    args = (x, y, w, z)
    return [(_GRADS_OPERANDS[t], tuple(args[i] for i in _GRADS_OPERANDS[t]), params[t]) for t in grads]


def _grads_split(*args, **params):
    graph = list(args[4:])
    return [_prim(params["num_nodes"]).bind(*ops, *graph, **p) for _, ops, p in _grads_calls(*args, **params)]


def _grads_abstract(x, y, w, z, *graph, tables, num_nodes, grads, **params):
    rows = graph[0].shape if graph else x.shape[:-1]
    shapes = {SLOT_Y: rows + (tables.dims[1],), SLOT_W: rows + (tables.dims[3],), SLOT_X: x.shape}  # dx: nodes
    return [jax.core.ShapedArray(shapes[t], x.dtype) for t in grads]


def _grads_jvp(primals, tangents, **params):
    """The primal outputs from the fused call itself (one pass: the force-training step differentiates
    the forces' fused y and weight gradients once more, so this call runs in its forward); the tangents
    term by term, as the separate calls' tangents."""
    graph = list(primals[4:])
    outs = tp_grads_p.bind(*primals, **params)
    if _second_order_fusable(params, tangents):
        which = tuple(s for s in range(4) if type(tangents[s]) is not ad.Zero)
        tans = tp_grads_lin_p.bind(*primals[:4], *(tangents[s] for s in which), *graph, which=which, **params)
        return outs, list(tans)
    tans = [_tangent(list(ops) + graph, [tangents[i] for i in pos] + [None] * len(graph), out, **p)
            for out, (pos, ops, p) in zip(outs, _grads_calls(*primals, **params))]
    return outs, tans


def _grads_transpose(cts, *args, **params):
    graph = list(args[4:])
    result = [None] * 4
    for ct, (pos, ops, p) in zip(cts, _grads_calls(*args, **params)):
        if type(ct) is ad.Zero:
            continue
        for i, r in zip(pos, _transpose(ct, *ops, *graph, **p)[:3]):
            if r is not None and type(r) is not ad.Zero:
                result[i] = r if result[i] is None else result[i] + r
    return result + [None] * len(graph)


def _grads_batch(args, dims, **params):
    f = lambda *a: _grads_split(*a, **params)  # noqa: E731
    return jax.vmap(f, in_axes=tuple(dims))(*args), [0] * len(params["grads"])


def _grads_lowering(ctx, x, y, w, z, *graph, tables, unweighted, num_nodes, deterministic, sh, grads):
    dtype = ctx.avals_in[0].dtype
    consts, attrs = _tables_and_attrs(tables, False, dtype, shared=False, unweighted=unweighted,
                                      num_nodes=num_nodes, sh=sh)

    def body(x, y, w, z, *graph):
        empty = jnp.zeros((0,), jnp.int32)
        senders, receivers = graph if graph else (empty, empty)
        # dx of a graph: the edges taken in sender order (dx summed over each sender's run in registers);
        # deterministic, each sender's list summed in pieces (seg_pieces; their scratch rows) and stored.
        lists, scratch_rows = (empty, empty, empty), 0
        if graph and SLOT_X in grads:
            offsets, order, pieces = _edge_lists(senders, num_nodes)
            lists = (offsets, order, pieces if deterministic else empty)
            scratch_rows = _piece_scratch_rows(senders.shape[0]) if deterministic else 0
        # The handler's results dy, dw, dx (empty where not asked for) and the pieces' scratch rows.
        shapes = dict(zip(grads, (aval.shape for aval in ctx.avals_out)))
        outs = [jax.ShapeDtypeStruct(shapes.get(t, (0,)), dtype) for t in _GRADS_ORDER]
        scratch = jax.ShapeDtypeStruct((scratch_rows * x.shape[-1],), dtype)
        results = jax.ffi.ffi_call("jbm_tp_grads", outs + [scratch])(
            x, y, w, z, senders, receivers, *lists, *consts, deterministic=np.int32(bool(deterministic)), **attrs)
        return [results[_GRADS_ORDER.index(t)] for t in grads]

    return mlir.lower_fun(body, multiple_results=True)(ctx, x, y, w, z, *graph)


ffi.register_lowering_rule(tp_grads_p, _grads_lowering, "jbm_tp_grads")
tp_grads_p.def_abstract_eval(_grads_abstract)
ffi.define_impl(tp_grads_p)
ad.primitive_jvps[tp_grads_p] = _grads_jvp
ad.primitive_transposes[tp_grads_p] = _grads_transpose
batching.primitive_batchers[tp_grads_p] = _grads_batch


def _batch(args, dims, *, tables, slot, shared, unweighted, num_nodes, deterministic, sh):
    slots = _slots_of(slot)
    size = next(a.shape[d] for a, d in zip(args, dims) if d is not None)
    w_batched = any(s == SLOT_W and d is not None for s, d in zip(slots, dims))
    # A vmapped shared weight vector becomes one weight row per batch element: per-row weights.
    new_shared = shared and not w_batched and not (slot == SLOT_W)
    per_row_out_w = slot == SLOT_W and shared  # gradient of shared weights, per vmapped element
    row_shape = None
    for s, a, d in zip(slots, args, dims):
        if not (s == SLOT_W and shared):
            row_shape = (a.shape[:d] + a.shape[d + 1:])[:-1] if d is not None else a.shape[:-1]
    new_args = []
    for s, a, d in zip(slots, args, dims):
        a = jnp.moveaxis(a, d, 0) if d is not None else a[None]
        if s == SLOT_W and shared and not new_shared:
            a = jnp.broadcast_to(a.reshape((a.shape[0],) + (1,) * len(row_shape) + a.shape[-1:]),
                                 (size,) + row_shape + a.shape[-1:])
        elif not (s == SLOT_W and new_shared):
            a = jnp.broadcast_to(a, (size,) + a.shape[1:])
        else:
            a = a[0]
        new_args.append(a)
    out = tp_p.bind(*new_args, tables=tables, slot=slot, shared=new_shared, unweighted=unweighted, num_nodes=None,
                    deterministic=deterministic, sh=sh)
    if per_row_out_w:
        out = out.reshape((size, -1, out.shape[-1])).sum(axis=1)
    return out, 0


batching.primitive_batchers[tp_p] = _batch


# ---- tp_grads_lin_p / tp_grads2_p: the second-order pass of the force-training step -----------------
#
# A force-training step differentiates the forces' fused y and weight gradients (tp_grads_p with grads
# (y, w): dy = T_y(x, w, z), dw = T_w(x, Y, z), z the energy's cotangent) once more. Term by term their
# tangents are five contractions, and transposed one by one they are five passes over the edges (H100,
# MACE-medium, session 20: 1.64 ms of a 5.4 ms step; cuequivariance-jax runs them as one kernel in 1.03).
# tp_grads_lin_p is that tangent as one primitive with both outputs, so that its transpose sees both
# cotangents (c_dy, c_dw) and binds tp_grads2_p, which computes in one pass
#     c_x = T_x(c_dy, w, z) + T_x(Y, c_dw, z)     (scattered to senders)
#     c_w = T_w(x, c_dy, z)                       (per edge)
#     c_z = T_z(x, c_dy, w) + T_z(x, Y, c_dw)     (scattered to receivers)
# — those asked for (param ``outs``). Both primitives are defined by their term-by-term form (the calls
# the step ran before): that is their CPU lowering and every other rule (JVP, transpose, batching), and
# the GPU runs tp_grads2_p as one kernel (FFI jbm_tp_grads2) for the compiled shapes.

tp_grads_lin_p = Primitive("jbm_tensor_product_grads_linearized")
tp_grads_lin_p.multiple_results = True
tp_grads2_p = Primitive("jbm_tensor_product_grads2")
tp_grads2_p.multiple_results = True


def _second_order_fusable(params, tangents):
    """Whether the tangent of tp_grads_p(params) with these operand tangents runs as tp_grads_lin_p:
    the forces' gradients (dy, dw) of a graph call of a compiled shape in atomic mode, y held constant
    (positions are not differentiated a second time), some other tangent non-zero."""
    return (params["grads"] == (SLOT_Y, SLOT_W) and params["num_nodes"] is not None
            and not params["deterministic"] and params["tables"].uvu_shape in _COMPILED_UVU_SHAPES
            and type(tangents[SLOT_Y]) is ad.Zero and any(type(t) is not ad.Zero for t in tangents[:4]))


def _grads_lin_split_args(args, which):
    n = len(which)
    return list(args[:4]), list(args[4:4 + n]), list(args[4 + n:])


def _grads_lin_terms(*args, which, **params):
    """tp_grads_lin_p's outputs as the separate calls' tangents (``which``: the slots whose operand
    tangents follow the four operands)."""
    ops, ts, graph = _grads_lin_split_args(args, which)
    tangents = [_zero_like(op) for op in ops]
    for s, t in zip(which, ts):
        tangents[s] = t
    outs = []
    for aval, (pos, call_ops, p) in zip(_grads_abstract(*ops, *graph, **params), _grads_calls(*ops, *graph, **params)):
        call_tangents = [tangents[i] for i in pos]
        if all(type(t) is ad.Zero for t in call_tangents):
            outs.append(jnp.zeros(aval.shape, aval.dtype))
        else:
            outs.append(_tangent(list(call_ops) + graph, call_tangents + [None] * len(graph), None, **p))
    return outs


def _grads_lin_abstract(*args, which, **params):
    ops, _, graph = _grads_lin_split_args(args, which)
    return _grads_abstract(*ops, *graph, **params)


def _grads2_terms(x, y, w, z, c_dy, c_dw, *graph, outs, **params):
    """tp_grads2_p's outputs as the transposes of the separate calls' tangents (tp_grads_lin_p's terms)."""
    def tangent(*ts):
        return _grads_lin_terms(x, y, w, z, *ts, *graph, which=outs, **params)
    examples = [jax.ShapeDtypeStruct(op.shape, op.dtype) for op in (x, y, w, z)]
    return list(jax.linear_transpose(tangent, *(examples[s] for s in outs))([c_dy, c_dw]))


def _grads2_abstract(x, y, w, z, c_dy, c_dw, *graph, outs, **params):
    return [jax.core.ShapedArray((x, y, w, z)[s].shape, x.dtype) for s in outs]


def _grads_lin_transpose(cts, *args, which, **params):
    ops, ts, graph = _grads_lin_split_args(args, which)
    if any(ad.is_undefined_primal(a) for a in ops + graph):
        raise ValueError("the linearized gradients are linear in their tangents only")
    undefined = tuple(s for s, t in zip(which, ts) if ad.is_undefined_primal(t))
    result = [None] * len(ts)
    if undefined and not all(type(ct) is ad.Zero for ct in cts):
        avals = _grads_abstract(*ops, *graph, **params)
        c_dy, c_dw = (jnp.zeros(a.shape, a.dtype) if type(ct) is ad.Zero else ct for ct, a in zip(cts, avals))
        for s, r in zip(undefined, tp_grads2_p.bind(*ops, c_dy, c_dw, *graph, outs=undefined, **params)):
            result[which.index(s)] = r
    return [None] * 4 + result + [None] * len(graph)


def _linear_in_split(split, nonlinear):
    """Rules of a primitive given by ``split`` (its computation in other primitives): JVP by split's own
    JVP, transpose (of the operands from position ``nonlinear`` on, in which it is linear) by split's
    transpose, batching by split under vmap."""
    def jvp(primals, tangents, **params):
        tangents = tuple(ad.instantiate_zeros(t) for t in tangents)
        return jax.jvp(lambda *a: split(*a, **params), tuple(primals), tangents)

    def transpose(cts, *args, **params):
        fixed, linear = list(args[:nonlinear]), list(args[nonlinear:])
        undefined = [i for i, a in enumerate(linear) if ad.is_undefined_primal(a)]
        if any(ad.is_undefined_primal(a) for a in fixed):
            raise ValueError("transpose of a non-linear operand")

        def f(*lin):
            full = list(linear)
            for i, a in zip(undefined, lin):
                full[i] = a
            return split(*fixed, *full, **params)
        examples = [jax.ShapeDtypeStruct(linear[i].aval.shape, linear[i].aval.dtype) for i in undefined]
        cts = [ad.instantiate_zeros(ct) for ct in cts]
        res = jax.linear_transpose(f, *examples)(cts)
        out = [None] * len(args)
        for i, r in zip(undefined, res):
            out[nonlinear + i] = r
        return out

    def batch(args, dims, **params):
        outs = jax.vmap(lambda *a: split(*a, **params), in_axes=tuple(dims))(*args)
        return outs, [0] * len(outs)

    return jvp, transpose, batch


def _grads2_lowering(ctx, x, y, w, z, c_dy, c_dw, *graph, tables, unweighted, num_nodes, deterministic, sh, grads,
                     outs):
    dtype = ctx.avals_in[0].dtype
    consts, attrs = _tables_and_attrs(tables, False, dtype, shared=False, unweighted=unweighted,
                                      num_nodes=num_nodes, sh=sh)

    def body(x, y, w, z, c_dy, c_dw, senders, receivers):
        shapes = dict(zip(outs, (aval.shape for aval in ctx.avals_out)))
        results = [jax.ShapeDtypeStruct(shapes.get(s, (0,)), dtype) for s in (SLOT_X, SLOT_W, SLOT_Z)]
        no_lists = [jnp.zeros((0,), jnp.int32)] * 3  # (atomic mode: edges in their order)
        # c_w is written into c_dw's buffer (each element read, then written, by one thread): in the force
        # step c_dw (the energy's per-edge scale times the weights) has no other use, and a third array of
        # the weights' size live at once would raise the step's peak by 614 MB (H100, MACE-medium).
        aliases = {5: 1} if SLOT_W in outs else None
        got = jax.ffi.ffi_call("jbm_tp_grads2", results, input_output_aliases=aliases)(
            x, y, w, z, c_dy, c_dw, senders, receivers, *no_lists, *consts, **attrs)
        return [got[(SLOT_X, SLOT_W, SLOT_Z).index(s)] for s in outs]

    return mlir.lower_fun(body, multiple_results=True)(ctx, x, y, w, z, c_dy, c_dw, *graph)


tp_grads_lin_p.def_abstract_eval(_grads_lin_abstract)
ffi.define_impl(tp_grads_lin_p)
mlir.register_lowering(tp_grads_lin_p, mlir.lower_fun(_grads_lin_terms, multiple_results=True))
# (its own transpose, not its terms': that is where the terms fuse into tp_grads2_p)
ad.primitive_jvps[tp_grads_lin_p], _, batching.primitive_batchers[tp_grads_lin_p] = _linear_in_split(
    _grads_lin_terms, 4)
ad.primitive_transposes[tp_grads_lin_p] = _grads_lin_transpose

tp_grads2_p.def_abstract_eval(_grads2_abstract)
ffi.define_impl(tp_grads2_p)
mlir.register_lowering(tp_grads2_p, mlir.lower_fun(_grads2_terms, multiple_results=True), platform="cpu")
ffi.register_cuda_lowering_rule(tp_grads2_p, _grads2_lowering, "jbm_tp_grads2")
ad.primitive_jvps[tp_grads2_p], ad.primitive_transposes[tp_grads2_p], batching.primitive_batchers[tp_grads2_p] = (
    _linear_in_split(_grads2_terms, 4))
