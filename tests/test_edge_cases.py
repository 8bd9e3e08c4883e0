"""Edge cases of issue 7 not covered by the per-op files: non-finite inputs, sizes that are no multiple of
any block or chunk size, very large multiplicities, and (GPU only) operands of more than 2^31 elements."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import TOL, assert_close, has_gpu

import jaxbatmobile as jb
from jaxbatmobile._src import reference

SH3 = "0e+1o+2e+3o"


def _channelwise(i1, i2, io):
    return jb.TensorProduct(i1, i2, io, jb.channelwise_instructions(i1, i2, io))


def _uvw():  # the generic kernel
    return jb.TensorProduct("3x0e+2x1o", "0e+1o", "2x0e+2x1o", [(0, 0, 0, "uvw", True), (0, 1, 1, "uvw", True),
                                                                (1, 0, 1, "uvw", True), (1, 1, 0, "uvw", True)])


def _f64(*arrays):
    return tuple(jnp.asarray(a, jnp.float64) for a in arrays)


# ---- non-finite inputs: they propagate to the rows that read them, and to no other row ----------------

def _poison(a, rows, value):
    a = np.array(a)
    a[rows, 0] = value
    return a


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_sh_non_finite_vectors_stay_in_their_rows(rng, value):
    v = rng.normal(size=(70, 3))
    bad = [3, 41]
    vb = _poison(v, bad, value)
    y = np.asarray(jb.spherical_harmonics(jnp.asarray(vb), 3))
    ref = np.asarray(reference.spherical_harmonics(jnp.asarray(vb), 3, True, "component"))
    good = np.setdiff1d(np.arange(70), bad)
    assert_close(y[good], ref[good], TOL[np.float64])
    # the poisoned rows: the direction is undefined, so the l = 1 components are not finite (as in e3nn-jax;
    # which higher components come out as NaN or as a signed zero depends on the polynomials' form)
    assert not np.any(np.isfinite(y[bad][:, 1:4]) & ~np.isfinite(ref[bad][:, 1:4]))
    assert not np.all(np.isfinite(y[bad][:, 1:4]), axis=1).any()
    # gradients: the other rows' are untouched
    g = rng.normal(size=y.shape)
    gv = jax.vjp(lambda v: jb.spherical_harmonics(v, 3), jnp.asarray(vb))[1](jnp.asarray(g))[0]
    gv_ref = jax.vjp(lambda v: reference.spherical_harmonics(v, 3, True, "component"), jnp.asarray(v))[1](
        jnp.asarray(g))[0]
    assert_close(np.asarray(gv)[good], np.asarray(gv_ref)[good], TOL[np.float64])


@pytest.mark.parametrize("name", ["channelwise", "uvw"])
def test_tp_nan_stays_in_its_row(rng, name):
    tp = _channelwise("5x0e+4x1o+3x2e", SH3, "5x0e+4x1o+3x2e") if name == "channelwise" else _uvw()
    b = 37
    x = rng.normal(size=(b, tp.irreps_in1.dim))
    y = rng.normal(size=(b, tp.irreps_in2.dim))
    w = rng.normal(size=(b, tp.weight_numel))
    bad_x, bad_y, bad_w = [2], [17], [30]
    xb, yb, wb = _poison(x, bad_x, np.nan), _poison(y, bad_y, np.nan), _poison(w, bad_w, np.nan)
    out = np.asarray(tp(*_f64(xb, yb, wb)))
    ref = np.asarray(reference.tensor_product(tp, *_f64(x, y, w), False))
    bad = bad_x + bad_y + bad_w
    good = np.setdiff1d(np.arange(b), bad)
    assert_close(out[good], ref[good], TOL[np.float64])
    for r in bad:
        assert np.isnan(out[r]).any(), f"row {r}: a NaN input gave a finite row"
    # the backward: a NaN cotangent row, NaN inputs: every other row's gradients are exact
    g = _poison(rng.normal(size=out.shape), [9], np.nan)
    grads = jax.vjp(lambda x, y, w: tp(x, y, w), *_f64(xb, yb, wb))[1](jnp.asarray(g))
    refs = jax.vjp(lambda x, y, w: reference.tensor_product(tp, x, y, w, False), *_f64(x, y, w))[1](
        jnp.asarray(np.nan_to_num(g)))
    good = np.setdiff1d(good, [9])
    for got, want in zip(grads, refs):
        assert_close(np.asarray(got)[good], np.asarray(want)[good], TOL[np.float64])


@pytest.mark.parametrize("deterministic", [False, True])
@pytest.mark.parametrize("name", ["channelwise", "uvw"])
def test_conv_nan_reaches_only_its_receivers(rng, name, deterministic):
    tp = _channelwise("4x0e+3x1o", SH3, "4x0e+3x1o+2x2e") if name == "channelwise" else _uvw()
    n, e = 20, 90
    senders = rng.integers(0, n, e).astype(np.int32)
    receivers = rng.integers(0, n, e).astype(np.int32)
    x = rng.normal(size=(n, tp.irreps_in1.dim))
    y = rng.normal(size=(e, tp.irreps_in2.dim))
    w = rng.normal(size=(e, tp.weight_numel))
    sick = 5  # a node whose features are NaN
    senders[:3] = sick
    xb = _poison(x, [sick], np.nan)
    out = np.asarray(jb.conv(tp, *_f64(xb, y, w), senders, receivers, num_nodes=n, deterministic=deterministic))
    ref = np.asarray(reference.conv(tp, *_f64(x, y, w), senders, receivers, n, False))
    hit = np.unique(receivers[senders == sick])
    clean = np.setdiff1d(np.arange(n), hit)
    assert_close(out[clean], ref[clean], TOL[np.float64])
    assert all(np.isnan(out[r]).any() for r in hit)


def test_sh_conv_zero_and_huge_edge_vectors_are_finite(rng):
    """A zero-length edge (a self-loop) and extreme lengths: finite values and gradients, as in e3nn-jax."""
    tp = _channelwise("4x0e+3x1o", SH3, "4x0e+3x1o+2x2e")
    n, e = 12, 40
    senders = rng.integers(0, n, e).astype(np.int32)
    receivers = rng.integers(0, n, e).astype(np.int32)
    x = rng.normal(size=(n, tp.irreps_in1.dim))
    w = rng.normal(size=(e, tp.weight_numel))
    vec = rng.normal(size=(e, 3))
    vec[0] = 0.0
    vec[1] *= 1e150
    vec[2] *= 1e-150

    def ours(x, vec, w):
        return jb.sh_conv(tp, x, vec, w, senders, receivers, num_nodes=n)

    def ref(x, vec, w):
        return reference.conv(tp, x, reference.spherical_harmonics(vec, 3, True, "component"), w, senders,
                              receivers, n, False)

    args = _f64(x, vec, w)
    assert_close(ours(*args), ref(*args), TOL[np.float64])
    g = jnp.asarray(rng.normal(size=(n, tp.irreps_out.dim)))
    for got, want in zip(jax.vjp(ours, *args)[1](g), jax.vjp(ref, *args)[1](g)):
        assert_close(got, want, TOL[np.float64])  # also asserts finiteness


# ---- sizes that are no multiple of any block, chunk or piece size ----------------------------------

@pytest.mark.parametrize("batch", [1, 31, 33, 127, 129, 1031])
def test_odd_batch_sizes(rng, batch):
    tp = _channelwise("6x0e+5x1o", SH3, "6x0e+5x1o+4x2e")
    x, y, w = (rng.normal(size=(batch, d)) for d in (tp.irreps_in1.dim, 16, tp.weight_numel))
    assert_close(tp(*_f64(x, y, w)), reference.tensor_product(tp, *_f64(x, y, w), False), TOL[np.float64])
    v = rng.normal(size=(batch, 3))
    assert_close(jb.spherical_harmonics(jnp.asarray(v), 3),
                 reference.spherical_harmonics(jnp.asarray(v), 3, True, "component"), TOL[np.float64])


@pytest.mark.parametrize("deterministic", [False, True])
@pytest.mark.parametrize("degree", [1, 31, 32, 33, 65, 97])
def test_conv_node_degrees_around_chunk_and_piece_sizes(rng, degree, deterministic):
    """One node receives `degree` edges (chunks of 32, node lists cut into pieces of 32), others few."""
    tp = _channelwise("4x0e+3x1o", SH3, "4x0e+3x1o+2x2e")
    n = 9
    receivers = np.concatenate([np.full(degree, 4), rng.integers(0, n, 11)]).astype(np.int32)
    e = receivers.size
    senders = rng.integers(0, n, e).astype(np.int32)
    x, y, w = rng.normal(size=(n, tp.irreps_in1.dim)), rng.normal(size=(e, 16)), rng.normal(size=(e, tp.weight_numel))
    args = _f64(x, y, w)

    def ours(x, y, w):
        return jb.conv(tp, x, y, w, senders, receivers, num_nodes=n, deterministic=deterministic)

    def ref(x, y, w):
        return reference.conv(tp, x, y, w, senders, receivers, n, False)

    assert_close(ours(*args), ref(*args), TOL[np.float64])
    g = jnp.asarray(rng.normal(size=(n, tp.irreps_out.dim)))
    for got, want in zip(jax.vjp(ours, *args)[1](g), jax.vjp(ref, *args)[1](g)):
        assert_close(got, want, TOL[np.float64])


# ---- many rows: more rows than the GPU holds blocks at once, row widths of every alignment -------------

# Odd row widths (x 62, y 9, out 43 elements: no 16-byte chunks) and 16-byte multiples (x 32, y 16,
# out 84); "4x0o" / "4x1e" are output blocks no path writes, "6x3o" an input block no path reads.
_STREAMED = {"odd": ("5x0e+3x1o+2x1e+6x3o", "0e+1o+2e", "5x0e+3x1o+2x2o+3x2e+4x0o"),
             "aligned": ("8x0e+8x1o", SH3, "8x0e+8x1o+8x2e+4x1e")}


@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", sorted(_STREAMED))
def test_tp_many_rows(rng, name, dtype, shared):
    tp = _channelwise(*_STREAMED[name])
    b = 5003
    x, y = (rng.normal(size=(b, d)).astype(dtype) for d in (tp.irreps_in1.dim, tp.irreps_in2.dim))
    w = rng.normal(size=(tp.weight_numel,) if shared else (b, tp.weight_numel)).astype(dtype)
    g = rng.normal(size=(b, tp.irreps_out.dim)).astype(dtype)
    out, vjp = jax.vjp(jax.jit(tp), x, y, w)
    want, ref_vjp = jax.vjp(lambda *a: reference.tensor_product(tp, *a, shared), *_f64(x, y, w))
    assert_close(out, want, TOL[dtype])
    dx, dy, dw = vjp(g)
    dx_ref, dy_ref, dw_ref = ref_vjp(jnp.asarray(g, jnp.float64))
    assert_close(dx, dx_ref, TOL[dtype])
    assert_close(dy, dy_ref, TOL[dtype])
    # A shared weight's gradient sums 5003 rows: in fp32 its rounding error grows like sqrt(rows) * eps
    # (~4e-6 relative), so it is held to the fp32 bound (1e-5) rather than the per-row 2e-6.
    assert_close(dw, dw_ref, 1e-5 if shared and dtype == np.float32 else TOL[dtype])


# ---- very large multiplicities: more channels than threads per block, no multiple of a warp -----------

@pytest.mark.parametrize("mul", [1000, 2051])
def test_large_multiplicity(rng, mul):
    tp = _channelwise(f"{mul}x0e+{mul}x1o", "0e+1o", f"{mul}x0e+{mul}x1o")
    b = 5
    x, y, w = (rng.normal(size=(b, d)) for d in (tp.irreps_in1.dim, tp.irreps_in2.dim, tp.weight_numel))
    args = _f64(x, y, w)
    assert_close(tp(*args), reference.tensor_product(tp, *args, False), TOL[np.float64])
    g = jnp.asarray(rng.normal(size=(b, tp.irreps_out.dim)))
    grads = jax.vjp(tp, *args)[1](g)
    refs = jax.vjp(lambda x, y, w: reference.tensor_product(tp, x, y, w, False), *args)[1](g)
    for got, want in zip(grads, refs):
        assert_close(got, want, TOL[np.float64])


# ---- more than 2^31 elements in one operand (int64 offsets): GPU only, ~10 GB per operand ---------------

_BIG = 2**31 + 4096  # elements


def _gpu_free_bytes():
    stats = jax.devices("gpu")[0].memory_stats() or {}
    return stats.get("bytes_limit", 0) - stats.get("bytes_in_use", 0)


big_gpu = pytest.mark.skipif(not (has_gpu() and _gpu_free_bytes() >= 48e9), reason="needs a GPU with ~48 GB free")


def _tail(a, k):
    return np.asarray(a[-k:])


@big_gpu
def test_sh_over_2_31_elements():
    n = _BIG // 16 + 1
    v = jax.random.normal(jax.random.key(0), (n, 3), jnp.float32)
    y = jax.jit(lambda v: jb.spherical_harmonics(v, 3))(v)
    assert y.shape == (n, 16) and y.size > 2**31
    k = 1000
    ref = reference.spherical_harmonics(jnp.asarray(_tail(v, k), jnp.float64), 3, True, "component")
    assert_close(_tail(y, k), ref, TOL[np.float32])
    del y


@big_gpu
def test_tp_over_2_31_elements():
    tp = _channelwise("64x0e+64x1o", "0e+1o", "64x0e+64x1o")
    rows = _BIG // tp.irreps_in1.dim + 1
    k = 600
    keys = jax.random.split(jax.random.key(1), 3)
    x = jax.random.normal(keys[0], (rows, tp.irreps_in1.dim), jnp.float32)
    y = jax.random.normal(keys[1], (rows, 4), jnp.float32)
    w = jax.random.normal(keys[2], (rows, tp.weight_numel), jnp.float32)
    assert x.size > 2**31 and w.size > 2**31
    tail = _f64(_tail(x, k), _tail(y, k), _tail(w, k))
    out_tail = jax.jit(lambda x, y, w: tp(x, y, w)[-k:])(x, y, w)
    assert_close(out_tail, reference.tensor_product(tp, *tail, False), TOL[np.float32])
    # the x gradient of the last rows: its rows, too, lie beyond 2^31 elements
    dx = jax.jit(jax.grad(lambda x, y, w: jnp.sum(tp(x, y, w)[-k:] ** 2)))(x, y, w)
    want = jax.grad(lambda x: jnp.sum(reference.tensor_product(tp, x, tail[1], tail[2], False) ** 2))(tail[0])
    assert_close(_tail(dx, k), want, 1e-5)


@big_gpu
@pytest.mark.parametrize("deterministic", [False, True])
def test_conv_over_2_31_weight_elements(deterministic):
    """Edge weights [E, 64] with E * 64 > 2^31: all edges but the last k are dropped (receiver -1), so the
    reference is cheap while the kernels index the weights past 2^31 elements."""
    tp = _channelwise("64x0e", "0e", "64x0e")
    e, n, k = _BIG // 64 + 1, 50, 700
    keys = jax.random.split(jax.random.key(2), 3)
    x = jax.random.normal(keys[0], (n, 64), jnp.float32)
    y = jax.random.normal(keys[1], (e, 1), jnp.float32)
    w = jax.random.normal(keys[2], (e, 64), jnp.float32)
    assert w.size > 2**31
    rng = np.random.default_rng(3)
    s_tail = rng.integers(0, n, k).astype(np.int32)
    r_tail = np.sort(rng.integers(0, n, k)).astype(np.int32)
    senders = jnp.concatenate([jnp.zeros(e - k, jnp.int32), jnp.asarray(s_tail)])
    receivers = jnp.concatenate([jnp.full(e - k, -1, jnp.int32), jnp.asarray(r_tail)])  # sorted

    def ours(x, w):
        return jb.conv(tp, x, y, w, senders, receivers, num_nodes=n, deterministic=deterministic)

    out, vjp = jax.vjp(jax.jit(ours), x, w)
    y_tail = jnp.asarray(_tail(y, k), jnp.float64)
    want, ref_vjp = jax.vjp(lambda x, w: reference.conv(tp, x, y_tail, w, s_tail, r_tail, n, False),
                            *_f64(x, _tail(w, k)))
    assert_close(out, want, 1e-5)
    g = jax.random.normal(jax.random.key(4), out.shape, jnp.float32)
    dx, dw = vjp(g)
    dx_ref, dw_ref = ref_vjp(jnp.asarray(g, jnp.float64))
    assert_close(dx, dx_ref, 1e-5)
    assert_close(_tail(dw, k), dw_ref, 1e-5)
    assert not np.any(np.asarray(dw[e - k - 1000:e - k]))  # dropped edges: zero gradient
