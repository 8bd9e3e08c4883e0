"""Tensor product: values, derivatives, transformations and errors against e3nn-jax."""

import e3nn_jax as e3nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import TOL, assert_close, has_gpu
from jax.test_util import check_grads

import jaxbatmobile as jb
from jaxbatmobile._src import reference

SH3 = "0e+1o+2e+3o"


def _problem(name):
    """Small-multiplicity versions of real models' TPs (same structure, CPU-friendly sizes)."""
    if name == "mace-large":
        i1, i2, io = "8x0e+8x1o+8x2e", SH3, "8x0e+8x1o+8x2e+8x3o"
        return i1, i2, io, jb.channelwise_instructions(i1, i2, io)
    if name == "mace-medium":
        i1, i2, io = "8x0e+8x1o", SH3, "8x0e+8x1o+8x2e"
        return i1, i2, io, jb.channelwise_instructions(i1, i2, io)
    if name == "nequip-parity":  # odd and even parity at every l, in every operand
        i1, i2, io = "3x0e+2x0o+3x1o+2x1e+2x2e+2x2o", "0e+1o+2e", "3x0e+2x0o+3x1o+2x1e+2x2e+2x2o"
        return i1, i2, io, jb.channelwise_instructions(i1, i2, io)
    if name == "nequix-nonuniform":
        i1, i2, io = "8x0e+4x1o+2x2e+2x3o", SH3, "8x0e+4x1o+2x2e+2x3o"
        return i1, i2, io, jb.channelwise_instructions(i1, i2, io)
    if name == "uvw-fc":
        i1, i2, io = "3x0e+2x1o+2x2e", "2x0e+1x1o", "2x0e+3x1o+1x2e"
        ins = [(a, b, c, "uvw", True) for a, (_, ir1) in enumerate(e3nn.Irreps(i1))
               for b, (_, ir2) in enumerate(e3nn.Irreps(i2)) for c, (_, iro) in enumerate(e3nn.Irreps(io))
               if iro in ir1 * ir2]
        return i1, i2, io, ins
    if name == "mixed-l4":  # uvu and uvw together, degree 4 in every operand, unweighted and weighted paths
        i1, i2, io = "2x0e+2x4e+3x1o", "0e+4e+1o", "2x4e+2x0e+3x1o+2x3o"
        ins = [(1, 1, 0, "uvu", True), (1, 1, 1, "uvu", False), (0, 1, 0, "uvu", True, 0.5),
               (2, 2, 1, "uvw", True), (1, 2, 3, "uvu", True), (2, 1, 3, "uvw", True), (0, 0, 1, "uvu", True)]
        return i1, i2, io, ins
    raise KeyError(name)


PROBLEMS = ["mace-large", "mace-medium", "nequip-parity", "nequix-nonuniform", "uvw-fc", "mixed-l4"]


@pytest.fixture(scope="module")
def tps():
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = jb.TensorProduct(*_problem(name))
        return cache[name]

    return get


def _inputs(rng, tp, batch, dtype=np.float64, shared=False):
    x = rng.normal(size=batch + (tp.irreps_in1.dim,)).astype(dtype)
    y = rng.normal(size=batch + (tp.irreps_in2.dim,)).astype(dtype)
    w = rng.normal(size=(tp.weight_numel,) if shared else batch + (tp.weight_numel,)).astype(dtype)
    return x, y, w


def _ref(tp, x, y, w, shared):
    f64 = lambda a: jnp.asarray(a, jnp.float64)  # noqa: E731
    return reference.tensor_product(tp, f64(x), f64(y), f64(w), shared)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("name", PROBLEMS)
def test_matches_e3nn(rng, tps, name, shared, dtype):
    tp = tps(name)
    x, y, w = _inputs(rng, tp, (13,), dtype, shared)
    out = tp(x, y, w)
    assert out.shape == (13, tp.irreps_out.dim) and out.dtype == dtype
    assert_close(out, _ref(tp, x, y, w, shared), TOL[dtype] * 5)


def test_path_weights_and_normalizations(rng):
    i1, i2, io = "3x0e+2x1o", "0e+1o", "3x0e+2x1o+3x1o"
    ins = [(0, 0, 0, "uvu", True, 2.0), (1, 1, 0, "uvw", True), (0, 1, 2, "uvu", True), (1, 0, 1, "uvu", True)]
    for irrep_norm in ["component", "norm"]:
        for path_norm in ["element", "path"]:
            for grad_norm in ["element", "path"]:
                tp = jb.TensorProduct(i1, i2, io, ins, irrep_normalization=irrep_norm,
                                      path_normalization=path_norm, gradient_normalization=grad_norm)
                x, y, w = _inputs(rng, tp, (4,))
                assert_close(tp(x, y, w), _ref(tp, x, y, w, False), 1e-12)


@pytest.mark.parametrize("name", ["nequip-parity", "mixed-l4", "uvw-fc"])
def test_equivariance(rng, tps, name):
    tp = tps(name)
    x, y, w = _inputs(rng, tp, (6,))
    angles = rng.uniform(0, 2 * np.pi, size=3)
    for k in (0, 1):  # rotation, then rotation with inversion
        d1, d2, do = (np.asarray(ir.D_from_angles(*angles, k)) for ir in (tp.irreps_in1, tp.irreps_in2, tp.irreps_out))
        assert_close(tp(x @ d1.T, y @ d2.T, w), np.asarray(tp(x, y, w)) @ do.T, 1e-12)


@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("name", ["mace-medium", "nequip-parity", "mixed-l4", "uvw-fc"])
def test_gradients_match_e3nn(rng, tps, name, shared):
    tp = tps(name)
    x, y, w = _inputs(rng, tp, (5,), shared=shared)
    g = rng.normal(size=(5, tp.irreps_out.dim))
    ours = jax.vjp(lambda x, y, w: tp(x, y, w), x, y, w)[1](g)
    ref = jax.vjp(lambda x, y, w: _ref(tp, x, y, w, shared), x, y, w)[1](g)
    for a, b in zip(ours, ref):
        assert_close(a, b, 1e-12)


@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("name", PROBLEMS)
def test_check_grads_order2(rng, tps, name, shared):
    tp = tps(name)
    x, y, w = _inputs(rng, tp, (3,), shared=shared)
    check_grads(lambda x, y, w: jnp.sin(tp(x, y, w)), (x, y, w), order=2, modes=("fwd", "rev"))


def test_third_order(rng, tps):
    tp = tps("nequip-parity")
    x, y, w = _inputs(rng, tp, (2,))
    check_grads(lambda x, y, w: jnp.sin(tp(x, y, w)), (x, y, w), order=3, modes=("rev",))


def test_force_style_second_order(rng, tps):
    """d/dw of |d E/d y|^2 (forces through the edge attributes), against e3nn-jax."""
    tp = tps("mace-medium")
    x, y, w = _inputs(rng, tp, (4,))

    def loss(w, x, f):
        forces = jax.grad(lambda y: jnp.sum(f(x, y, w) ** 2))(y)
        return jnp.sum(forces**2)

    ours = jax.grad(loss, argnums=(0, 1))(w, x, lambda x, y, w: tp(x, y, w))
    ref = jax.grad(loss, argnums=(0, 1))(w, x, lambda x, y, w: _ref(tp, x, y, w, False))
    for a, b in zip(ours, ref):
        assert_close(a, b, 1e-11)


@pytest.mark.parametrize("in_axes", [(0, 0, 0), (None, 0, 0), (0, None, None), (1, 0, None), (0, 0, 1)])
def test_vmap(rng, tps, in_axes):
    tp = tps("mixed-l4")
    x, y, w = _inputs(rng, tp, (3, 4))  # vmapped axis of size 3 (or 4 when in_axes is 1)
    args = []
    for a, ax in zip((x, y, w), in_axes):
        args.append(a[0] if ax is None else (np.swapaxes(a, 0, 1) if ax == 1 else a))
    out = jax.vmap(lambda x, y, w: tp(x, y, w), in_axes=in_axes)(*args)
    full = [np.broadcast_to(a, (3, 4, a.shape[-1])) if ax is None else (np.swapaxes(a, 0, 1) if ax == 1 else a)
            for a, ax in zip(args, in_axes)]
    assert_close(out, _ref(tp, *full, False), 1e-12)


def test_vmap_shared_weights_and_weight_gradient(rng, tps):
    tp = tps("mixed-l4")
    x, y, _ = _inputs(rng, tp, (3, 4))
    ws = rng.normal(size=(3, tp.weight_numel))  # one shared weight vector per vmapped graph
    out = jax.vmap(lambda x, y, w: tp(x, y, w))(x, y, ws)
    ref = jnp.stack([_ref(tp, x[i], y[i], ws[i], True) for i in range(3)])
    assert_close(out, ref, 1e-12)
    g = rng.normal(size=out.shape)
    gw = jax.vmap(lambda x, y, w, g: jax.grad(lambda w: jnp.sum(g * tp(x, y, w)))(w))(x, y, ws, g)
    gw_ref = jnp.stack([jax.grad(lambda w: jnp.sum(g[i] * _ref(tp, x[i], y[i], w, True)))(ws[i]) for i in range(3)])
    assert_close(gw, gw_ref, 1e-12)


def test_linear_transpose(rng, tps):
    tp = tps("uvw-fc")
    x, y, w = _inputs(rng, tp, (4,))
    g = rng.normal(size=(4, tp.irreps_out.dim))
    (ct_x,) = jax.linear_transpose(lambda x: tp(x, y, w), x)(g)
    (ref_x,) = jax.linear_transpose(lambda x: _ref(tp, x, y, w, False), x)(g)
    assert_close(ct_x, ref_x, 1e-12)


def test_jit_lowers_to_our_kernel(rng, tps):
    tp = tps("mace-medium")
    x, y, w = _inputs(rng, tp, (4,), np.float32)
    f = jax.jit(lambda x, y, w: tp(x, y, w))
    assert "jbm_tp" in f.lower(x, y, w).as_text()
    assert_close(f(x, y, w), _ref(tp, x, y, w, False), 1e-5)


def test_broadcast_and_unbatched(rng, tps):
    tp = tps("mace-medium")
    x, y, w = _inputs(rng, tp, (2, 3))
    assert_close(tp(x, y[0, 0], w), _ref(tp, x, np.broadcast_to(y[0, 0], y.shape), w, False), 1e-12)
    assert_close(tp(x[0, 0], y[0, 0], w[0, 0]), _ref(tp, x[:1, 0], y[:1, 0], w[:1, 0], False)[0], 1e-12)


@pytest.mark.parametrize("shared", [False, True])
def test_empty_batch(tps, shared):
    tp = tps("mace-medium")
    x, y, w = _inputs(np.random.default_rng(0), tp, (0,), np.float32, shared)
    out = tp(x, y, w)
    assert out.shape == (0, tp.irreps_out.dim)
    gw = jax.grad(lambda w: jnp.sum(tp(x, y, w)))(w)
    assert gw.shape == w.shape and np.all(np.asarray(gw) == 0)


def test_bad_calls(tps):
    tp = tps("mace-medium")
    x, y, w = _inputs(np.random.default_rng(0), tp, (4,), np.float32)
    with pytest.raises(ValueError, match="`x`"):
        tp(x[:, :-1], y, w)
    with pytest.raises(ValueError, match="`y`"):
        tp(x, y[:, :3], w)
    with pytest.raises(ValueError, match="`weights`"):
        tp(x, y, w[:, :-1])
    with pytest.raises(TypeError, match="share one dtype"):
        tp(x, y.astype(np.float64), w)
    with pytest.raises(TypeError, match="`x`"):
        tp(x.astype(np.int32), y, w)
    with pytest.raises(ValueError, match="do not broadcast"):
        tp(x, y[:3], w)
    with pytest.raises(ValueError, match="shared `weights`"):
        tp(x, y, w, shared_weights=True)


def test_bad_problems():
    with pytest.raises(ValueError, match="selection rule"):
        jb.TensorProduct("2x0e", "1o", "2x0e", [(0, 0, 0, "uvu", True)])  # parity violation
    with pytest.raises(ValueError, match="selection rule"):
        jb.TensorProduct("2x1o", "1o", "2x3e", [(0, 0, 0, "uvu", True)])  # |l1-l2| <= l <= l1+l2
    with pytest.raises(ValueError, match="irreps_out\\[3\\]"):
        jb.TensorProduct("2x0e", "0e", "2x0e", [(0, 0, 3, "uvu", True)])
    with pytest.raises(ValueError, match="mode"):
        jb.TensorProduct("2x0e", "0e", "2x0e", [(0, 0, 0, "uuu", True)])
    with pytest.raises(ValueError, match="multiplicity"):
        jb.TensorProduct("2x0e", "0e", "3x0e", [(0, 0, 0, "uvu", True)])
    with pytest.raises(ValueError, match="uvw paths must have weights"):
        jb.TensorProduct("2x0e", "0e", "3x0e", [(0, 0, 0, "uvw", False)])


def test_channelwise_instructions():
    ins = jb.channelwise_instructions("4x0e+4x1o", SH3, "4x0e+4x1o+4x2e")
    # 0e x {0e, 1o, 2e} -> 0e, 1o, 2e (3o has no slot);  1o x 0e -> 1o;  1o x 1o -> 0e, 2e;
    # 1o x 2e -> 1o;  1o x 3o -> 2e.  Eight paths.
    assert (0, 0, 0, "uvu", True) in ins and (1, 3, 2, "uvu", True) in ins
    assert all(e3nn.Irreps("4x0e+4x1o+4x2e")[c].ir in e3nn.Irreps("4x0e+4x1o")[a].ir * e3nn.Irreps(SH3)[b].ir
               for a, b, c, *_ in ins)
    assert len(ins) == 8


@pytest.mark.skipif(not has_gpu(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cpu_and_gpu_agree(rng, tps, dtype):
    tp = tps("nequix-nonuniform")
    x, y, w = _inputs(rng, tp, (257,), dtype)
    g = rng.normal(size=(257, tp.irreps_out.dim)).astype(dtype)

    def run(device):
        args = [jax.device_put(a, device) for a in (x, y, w)]
        out, vjp = jax.vjp(lambda x, y, w: tp(x, y, w), *args)
        return [np.asarray(out)] + [np.asarray(a) for a in vjp(jax.device_put(g, device))]

    for a, b in zip(run(jax.devices("gpu")[0]), run(jax.devices("cpu")[0])):
        assert_close(a, b, TOL[dtype] * 10)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_shared_uvw_route(rng, tps, dtype):
    """Shared-weight uvw paths run as the unweighted product of every channel pair (mode outer) and one
    GEMM per path; the uvu paths of the same problem stay on their kernel. The outer product itself,
    values and both input gradients, against an einsum of e3nn's CG coefficients."""
    from jaxbatmobile._src import tensor_product as tpm

    tp = tps("mixed-l4")
    gemm = tp._uvw_gemm
    assert gemm.outer is not None and gemm.rest is not None
    assert {int(m) for m in gemm.outer.paths[:, 0]} == {tpm._MODE_OUTER}
    assert {int(m) for m in gemm.rest.paths[:, 0]} == {tpm._MODES["uvu"]}
    jaxpr = str(jax.make_jaxpr(lambda x, y, w: tp(x, y, w))(*_inputs(rng, tp, (2,), dtype, shared=True)))
    assert "dot_general" in jaxpr and jaxpr.count("jbm_tensor_product") == 2

    x, y, _ = _inputs(rng, tp, (6,), dtype)
    empty = jnp.zeros((0,), dtype)
    t = tpm._bind(gemm.outer, tpm.SLOT_Z, True, x, y, empty)

    def outer_ref(x, y):
        blocks = []
        for (off_t, _, a, _, dim, _), p, pw in zip(gemm.blocks, gemm.outer.paths, gemm.outer.path_weight):
            mul1, mul2, off1, off2, d1, d2 = (int(p[k]) for k in (1, 2, 4, 5, 8, 9))
            l1, l2, lo = (d1 - 1) // 2, (d2 - 1) // 2, (dim - 1) // 2
            xu = x[:, off1:off1 + mul1 * d1].reshape(-1, mul1, d1)
            yv = y[:, off2:off2 + mul2 * d2].reshape(-1, mul2, d2)
            c = np.asarray(e3nn.clebsch_gordan(l1, l2, lo))
            blocks.append((off_t, pw * jnp.einsum("ijk,bui,bvj->bkuv", c, xu, yv).reshape(len(x), -1)))
        return jnp.concatenate([b for _, b in sorted(blocks, key=lambda b: b[0])], axis=1)

    x64, y64 = (jnp.asarray(a, jnp.float64) for a in (x, y))
    want = outer_ref(x64, y64)
    assert t.shape == want.shape
    assert_close(t, want, TOL[dtype])
    g = rng.normal(size=t.shape).astype(dtype)
    got = jax.vjp(lambda x, y: tpm._bind(gemm.outer, tpm.SLOT_Z, True, x, y, empty), x, y)[1](g)
    ref = jax.vjp(outer_ref, x64, y64)[1](jnp.asarray(g, jnp.float64))
    for a, b in zip(got, ref):
        assert_close(a, b, TOL[dtype])


def test_per_row_uvw_on_the_item_kernel(rng, tps, monkeypatch):
    """Per-row uvw weights with the GEMM route off (the item kernel, as graph calls run them)."""
    from jaxbatmobile._src import tensor_product as tpm

    monkeypatch.setattr(tpm, "_UVW_GEMM_PER_ROW", False)
    tp = tps("uvw-fc")
    x, y, w = _inputs(rng, tp, (5,))
    assert "dot_general" not in str(jax.make_jaxpr(lambda x, y, w: tp(x, y, w))(x, y, w))
    g = rng.normal(size=(5, tp.irreps_out.dim))
    out, vjp = jax.vjp(lambda x, y, w: tp(x, y, w), x, y, w)
    want, ref_vjp = jax.vjp(lambda x, y, w: _ref(tp, x, y, w, False), x, y, w)
    assert_close(out, want, 1e-12)
    for a, b in zip(vjp(g), ref_vjp(g)):
        assert_close(a, b, 1e-12)


def _with_kernel(tp, kernel):
    """The same problem forced onto one kernel (tp_uvu.h or the generic item loop of tp.h)."""
    import copy

    from jaxbatmobile._src import tensor_product as tp_module

    other = copy.copy(tp)
    other._tables = tp_module._build_tables(tp, kernel=kernel)
    return other


def test_kernel_selection(tps):
    from jaxbatmobile._src.tensor_product import KERNEL_GENERIC, KERNEL_UVU

    for name in ("mace-large", "mace-medium", "nequip-parity", "nequix-nonuniform"):
        assert tps(name)._tables.kernel == KERNEL_UVU, name
    for name in ("uvw-fc", "mixed-l4"):  # uvw paths; degree 4 beyond the generated CG blocks
        assert tps(name)._tables.kernel == KERNEL_GENERIC, name


@pytest.mark.parametrize("shared", [False, True])
def test_uvu_kernel_matches_generic_kernel(rng, shared):
    """Both kernels on one uvu problem with unweighted paths, custom path weights, an input irrep no
    path reads (its gradient is zero) and an output irrep no path writes: values, every first
    derivative (vjp) and a jvp whose weight tangent drops the unweighted paths."""
    i1, i2, io = "5x0e+3x1o+2x2e+2x3o+2x0o", SH3, "5x0e+3x1o+2x2e+2x3o+7x4e"
    ins = [(a, b, c, "uvu", (a + b + c) % 3 != 0, 0.7 + 0.1 * n)
           for n, (a, b, c, *_) in enumerate(jb.channelwise_instructions(i1, i2, io))]
    tp = jb.TensorProduct(i1, i2, io, ins)
    fast, generic = _with_kernel(tp, "auto"), _with_kernel(tp, "generic")
    from jaxbatmobile._src.tensor_product import KERNEL_UVU

    assert fast._tables.kernel == KERNEL_UVU and any(not i.has_weight for i in tp.instructions)
    assert fast._tables.zero_fill == 0b1001  # x and z have elements no path touches
    x, y, w = _inputs(rng, tp, (9,), np.float64, shared)
    g = rng.normal(size=(9, tp.irreps_out.dim))
    tangents = tuple(rng.normal(size=a.shape) for a in (x, y, w))
    for kernel_tp in (fast, generic):
        out, vjp = jax.vjp(lambda x, y, w: kernel_tp(x, y, w), x, y, w)
        results = [out, *vjp(g), jax.jvp(lambda x, y, w: kernel_tp(x, y, w), (x, y, w), tangents)[1]]
        if kernel_tp is fast:
            expected = results
        else:
            for a, b in zip(results, expected):
                assert_close(a, b, 1e-13)
    assert_close(expected[0], _ref(tp, x, y, w, shared), 1e-12)


def test_uvu_shape_codes(tps):
    """Full channelwise problems get their compile-time shape code (csrc/core/tp_uvu_shape.h: 2 bits per
    degree, 1 even / 2 odd; x | y << 8 | out << 16), every other problem 0."""
    sh3 = 1 | 2 << 2 | 1 << 4 | 2 << 6
    assert tps("mace-large")._tables.uvu_shape == (1 | 2 << 2 | 1 << 4) | sh3 << 8 | sh3 << 16
    assert tps("mace-medium")._tables.uvu_shape == (1 | 2 << 2) | sh3 << 8 | (1 | 2 << 2 | 1 << 4) << 16
    for name in ("nequip-parity", "nequix-nonuniform", "uvw-fc", "mixed-l4"):
        assert tps(name)._tables.uvu_shape == 0, name
    i1, io = "8x0e+8x1o", "8x0e+8x1o+8x2e"
    full = jb.channelwise_instructions(i1, SH3, io)
    assert jb.TensorProduct(i1, SH3, io, full[:-1])._tables.uvu_shape == 0  # a path missing
    assert jb.TensorProduct(i1, SH3, io, full[::-1])._tables.uvu_shape == 0  # another weight order
    unweighted = [ins[:4] + (n != 2,) for n, ins in enumerate(full)]
    assert jb.TensorProduct(i1, SH3, io, unweighted)._tables.uvu_shape == 0
    assert jb.TensorProduct("8x1o+8x0e", SH3, io, jb.channelwise_instructions("8x1o+8x0e", SH3, io))._tables.uvu_shape == 0


def _shaped_problem(shape, mul):
    if shape == "mace-large":
        i1, io = f"{mul}x0e+{mul}x1o+{mul}x2e", f"{mul}x0e+{mul}x1o+{mul}x2e+{mul}x3o"
    else:
        i1, io = f"{mul}x0e+{mul}x1o", f"{mul}x0e+{mul}x1o+{mul}x2e"
    return jb.TensorProduct(i1, SH3, io, jb.channelwise_instructions(i1, SH3, io))


def test_compiled_shapes_listed():
    """build_info() lists the compiled shape codes (csrc/core/tp_uvu_shape.h): MACE-large's and
    MACE-medium's, the problems whose whole backward Python fuses into one call."""
    codes = {_shaped_problem(s, 4)._tables.uvu_shape for s in ("mace-large", "mace-medium")}
    assert set(jb.build_info()["uvu_shapes"]) == codes


@pytest.mark.parametrize("mul", [1, 40, 130])
@pytest.mark.parametrize("shape", ["mace-large", "mace-medium"])
def test_shaped_backward_matches_e3nn(rng, shape, mul):
    """The backward of compiled shapes in one pass (jbm_tp_grads with dx: core::uvu_shape_channel_grads) at
    multiplicities below, between and above a block's 128 threads: the vjp in (x, y, w) and in (y, w)
    alone against e3nn-jax's, fp64 and fp32, an empty batch, and a second derivative (through the fused
    call's jvp) against e3nn-jax's."""
    tp = _shaped_problem(shape, mul)
    f = lambda x, y, w: tp(x, y, w)  # noqa: E731
    ref = lambda x, y, w: reference.tensor_product(tp, x, y, w, False)  # noqa: E731
    for dtype, batch in ((np.float64, 11), (np.float32, 11), (np.float64, 0)):
        x, y, w = _inputs(rng, tp, (batch,), dtype)
        g = rng.normal(size=(batch, tp.irreps_out.dim)).astype(dtype)
        grads = jax.vjp(f, x, y, w)[1](g)
        expected = jax.vjp(ref, *(jnp.asarray(a, jnp.float64) for a in (x, y, w)))[1](jnp.asarray(g, jnp.float64))
        tol = 1e-12 if dtype == np.float64 else TOL[dtype] * 5
        for a, b in zip(grads, expected):
            assert a.dtype == dtype
            assert_close(a, b, tol)
        grads_yw = jax.vjp(lambda y, w: f(x, y, w), y, w)[1](g)  # x constant: dy and dw only
        for a, b in zip(grads_yw, expected[1:]):
            assert_close(a, b, tol)
    jaxpr = str(jax.make_jaxpr(lambda x, y, w: jax.vjp(f, x, y, w)[1](g))(x, y, w))
    assert "jbm_tensor_product_grads" in jaxpr and "grads=(1, 2, 0)" in jaxpr
    x, y, w = _inputs(rng, tp, (3,), np.float64)
    g = rng.normal(size=(3, tp.irreps_out.dim))

    def second(fn):  # a scalar of the first derivatives, differentiated again in x, y, w
        def loss(x, y, w):
            dx, dy, dw = jax.vjp(fn, x, y, w)[1](g)
            return jnp.sum(dx ** 2) + jnp.sum(jnp.sin(dy)) + jnp.sum(dw * w)
        return jax.grad(loss, argnums=(0, 1, 2))(x, y, w)

    for a, b in zip(second(f), second(ref)):
        assert_close(a, b, 1e-11)


@pytest.mark.parametrize("mul", [1, 40, 130])
@pytest.mark.parametrize("shape", ["mace-large", "mace-medium"])
def test_shaped_kernel_matches_e3nn(rng, shape, mul):
    """The straight-line kernel of compiled shapes (tp_uvu_shape.h) at multiplicities below, between and
    above a block's 128 threads: values (fp64 and fp32, shared and per-row weights) against e3nn-jax,
    and a jvp in every operand (slot z again) against the table-driven channelwise kernel."""
    import dataclasses

    if shape == "mace-large":
        i1, io = f"{mul}x0e+{mul}x1o+{mul}x2e", f"{mul}x0e+{mul}x1o+{mul}x2e+{mul}x3o"
    else:
        i1, io = f"{mul}x0e+{mul}x1o", f"{mul}x0e+{mul}x1o+{mul}x2e"
    tp = jb.TensorProduct(i1, SH3, io, jb.channelwise_instructions(i1, SH3, io))
    assert tp._tables.uvu_shape != 0
    table_driven = _with_kernel(tp, "auto")
    table_driven._tables = dataclasses.replace(table_driven._tables, uvu_shape=0)
    for dtype, shared in ((np.float64, False), (np.float64, True), (np.float32, False)):
        x, y, w = _inputs(rng, tp, (11,), dtype, shared)
        assert_close(tp(x, y, w), _ref(tp, x, y, w, shared), 1e-12 if dtype == np.float64 else TOL[dtype] * 5)
    x, y, w = _inputs(rng, tp, (11,), np.float64)
    tangents = tuple(rng.normal(size=a.shape) for a in (x, y, w))
    jvps = [jax.jvp(lambda x, y, w, t=t: t(x, y, w), (x, y, w), tangents)[1] for t in (tp, table_driven)]
    assert_close(jvps[0], jvps[1], 1e-12)


def test_fused_backward_handler_rejects_dx_without_compiled_shape(tps):
    """jbm_tp_grads computes dx only for products (plain or graph) of a compiled shape (Python asks only
    then); the C++ handler checks it again: asked for another problem's dx it returns an error, raised in
    Python."""
    from jaxbatmobile._src import tensor_product as tpm

    tp = tps("nequip-parity")  # channelwise, but not a compiled shape
    assert tp._tables.uvu_shape == 0
    dim_x, dim_y, dim_z, num_w = tp._tables.dims
    rows = 3
    consts, attrs = tpm._tables_and_attrs(tp._tables, False, np.float64, shared=False, unweighted=True,
                                          num_nodes=None, sh=None)
    empty = jnp.zeros((0,), jnp.int32)
    outs = [jax.ShapeDtypeStruct((rows, width), np.float64) for width in (dim_y, num_w, dim_x)]
    outs.append(jax.ShapeDtypeStruct((0,), np.float64))  # no scratch rows
    operands = [jnp.ones((rows, width), np.float64) for width in (dim_x, dim_y, num_w, dim_z)]
    call = jax.ffi.ffi_call("jbm_tp_grads", outs)
    with pytest.raises(Exception, match="dx of jbm_tp_grads is computed for products of a compiled shape only"):
        with jax.default_device(jax.devices("cpu")[0]):
            jax.block_until_ready(call(*operands, *[empty] * 5, *consts, deterministic=np.int32(0), **attrs))


def test_fused_backward_handler_needs_sender_lists_for_deterministic_dx(tps):
    """The deterministic dx of a graph's gradient call sums each sender's list: the C++ handler refuses the
    call without the sender lists (Python always passes them) instead of reading past empty buffers."""
    from jaxbatmobile._src import tensor_product as tpm

    tp = tps("mace-medium")
    assert tp._tables.uvu_shape != 0
    dim_x, dim_y, dim_z, num_w = tp._tables.dims
    nodes, edges = 4, 6
    consts, attrs = tpm._tables_and_attrs(tp._tables, False, np.float64, shared=False, unweighted=True,
                                          num_nodes=nodes, sh=None)
    empty = jnp.zeros((0,), jnp.int32)
    idx = jnp.zeros((edges,), jnp.int32)
    outs = [jax.ShapeDtypeStruct(shape, np.float64) for shape in ((0,), (0,), (nodes, dim_x), (0,))]
    operands = [jnp.ones(shape, np.float64) for shape in ((nodes, dim_x), (edges, dim_y), (edges, num_w),
                                                          (nodes, dim_z))]
    call = jax.ffi.ffi_call("jbm_tp_grads", outs)
    with pytest.raises(Exception, match="deterministic dx of jbm_tp_grads needs the sender lists"):
        with jax.default_device(jax.devices("cpu")[0]):
            jax.block_until_ready(call(*operands, idx, idx, *[empty] * 3, *consts, deterministic=np.int32(1), **attrs))
