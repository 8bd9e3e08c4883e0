"""Fused convolution against the unfused e3nn-jax computation (gather, FunctionalTensorProduct, segment_sum)."""

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


def _tp(name):
    if name == "mace-medium":  # uvu: the channelwise kernel
        i1, i2, io = "6x0e+6x1o", SH3, "6x0e+6x1o+6x2e"
        return jb.TensorProduct(i1, i2, io, jb.channelwise_instructions(i1, i2, io))
    if name == "uvw":  # the generic kernel
        i1, i2, io = "3x0e+2x1o", "0e+1o", "2x0e+2x1o"
        return jb.TensorProduct(i1, i2, io, [(0, 0, 0, "uvw", True), (0, 1, 1, "uvw", True),
                                             (1, 0, 1, "uvw", True), (1, 1, 0, "uvw", True)])
    raise KeyError(name)


def _graph(rng, num_nodes, num_edges):
    """Random edges plus a self-loop and a repeated edge; node 0 receives nothing."""
    senders = rng.integers(0, num_nodes, size=num_edges)
    receivers = rng.integers(1, num_nodes, size=num_edges)
    senders[:2] = [3, 3]
    receivers[:2] = [3, 3]
    return senders.astype(np.int32), receivers.astype(np.int32)


def _inputs(rng, tp, num_nodes, num_edges, dtype=np.float64, shared=False):
    x = rng.normal(size=(num_nodes, tp.irreps_in1.dim)).astype(dtype)
    y = rng.normal(size=(num_edges, tp.irreps_in2.dim)).astype(dtype)
    w = rng.normal(size=(tp.weight_numel,) if shared else (num_edges, tp.weight_numel)).astype(dtype)
    return x, y, w


def _ref(tp, x, y, w, s, r, n):
    f64 = lambda a: jnp.asarray(a, jnp.float64)  # noqa: E731
    return reference.conv(tp, f64(x), f64(y), f64(w), s, r, n, w.ndim == 1)


@pytest.mark.parametrize("deterministic", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("name", ["mace-medium", "uvw"])
def test_matches_unfused(rng, name, shared, dtype, deterministic):
    tp = _tp(name)
    n, e = 11, 40
    s, r = _graph(rng, n, e)
    x, y, w = _inputs(rng, tp, n, e, dtype, shared)
    out = jb.conv(tp, x, y, w, s, r, num_nodes=n, deterministic=deterministic)
    assert out.shape == (n, tp.irreps_out.dim) and out.dtype == dtype
    assert_close(out, _ref(tp, x, y, w, s, r, n), TOL[dtype] * 5)
    assert np.all(np.asarray(out)[0] == 0)  # node 0 receives no edge


@pytest.mark.parametrize("deterministic", [False, True])
@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("name", ["mace-medium", "uvw"])
def test_first_derivatives_match_unfused(rng, name, shared, deterministic):
    tp = _tp(name)
    n, e = 9, 30
    s, r = _graph(rng, n, e)
    x, y, w = _inputs(rng, tp, n, e, shared=shared)
    g = rng.normal(size=(n, tp.irreps_out.dim))
    ours = jax.vjp(lambda *a: jb.conv(tp, *a, s, r, num_nodes=n, deterministic=deterministic), x, y, w)[1](g)
    ref = jax.vjp(lambda *a: _ref(tp, *a, s, r, n), x, y, w)[1](g)
    for a, b in zip(ours, ref):
        assert_close(a, b, 1e-12)


@pytest.mark.parametrize("deterministic", [False, True])
@pytest.mark.parametrize("shared", [False, True])
def test_check_grads_order2(rng, shared, deterministic):
    tp = _tp("mace-medium")
    n, e = 5, 12
    s, r = _graph(rng, n, e)
    x, y, w = _inputs(rng, tp, n, e, shared=shared)
    check_grads(lambda *a: jb.conv(tp, *a, s, r, num_nodes=n, deterministic=deterministic), (x, y, w), order=2,
                modes=("fwd", "rev"))


def test_force_training_step(rng):
    """Energy from the conv of SH(edge vectors), forces = -dE/dpositions, loss = |F|^2, gradient of the
    loss w.r.t. node features and edge weights: equal to the unfused e3nn-jax computation."""
    tp = _tp("mace-medium")
    n, e = 8, 24
    s, r = _graph(rng, n, e)
    pos = rng.normal(size=(n, 3))
    x, _, w = _inputs(rng, tp, n, e)

    def loss(conv_fn, sh_fn):
        def f(x, w):
            def energy(pos):
                vec = pos[r] - pos[s] + 0.1  # self-loops keep a nonzero vector
                out = conv_fn(x, sh_fn(vec), w * jnp.exp(-0.01 * jnp.sum(vec**2, -1))[:, None])
                return jnp.sum(out[:, :6] ** 2)
            forces = -jax.grad(energy)(pos)
            return jnp.sum(forces**2)
        return jax.grad(f, argnums=(0, 1))

    ours = loss(lambda *a: jb.conv(tp, *a, s, r, num_nodes=n), lambda v: jb.spherical_harmonics(v, 3))(x, w)
    ref = loss(lambda *a: _ref(tp, *a, s, r, n), lambda v: reference.spherical_harmonics(v, 3, True, "component"))(x, w)
    for a, b in zip(ours, ref):
        assert_close(a, b, 1e-11)


@pytest.mark.skipif(not has_gpu(), reason="GPU kernels at the benchmark's scale (CPU: the small graphs above)")
@pytest.mark.parametrize("deterministic", [False, True])
def test_sh_conv_at_benchmark_scale(deterministic):
    """MACE-medium at the benchmark's size (N = 5,000, E = 150,000, fp32; random senders, sorted receivers):
    the forward, the whole backward and the force-training step against e3nn-jax in fp64, each run three
    times. Here every GPU block takes full 32-edge chunks and many blocks share each SM: a race of a
    kernel's pipelining shows here that the small graphs miss (a second-order pass through a bulk-copy ring
    gave 28 wrong rows in 4 of 10 force steps while every small test passed)."""
    tp = jb.TensorProduct("128x0e+128x1o", SH3, "128x0e+128x1o+128x2e",
                          jb.channelwise_instructions("128x0e+128x1o", SH3, "128x0e+128x1o+128x2e"))
    n, e = 5000, 150_000
    rng = np.random.default_rng(7)
    s = jnp.asarray(rng.integers(0, n, e), jnp.int32)
    r = jnp.asarray(np.sort(rng.integers(0, n, e)), jnp.int32)
    f32 = lambda *shape: jnp.asarray(rng.normal(size=shape), jnp.float32)  # noqa: E731
    x, vec, w, dz, pos = f32(n, 512), f32(e, 3), f32(e, tp.weight_numel), f32(n, 1152), 3 * f32(n, 3)
    sh = lambda v: reference.spherical_harmonics(v, 3, True, "component")  # noqa: E731
    ours = lambda x, v, w: jb.sh_conv(tp, x, v, w, s, r, num_nodes=n, deterministic=deterministic)  # noqa: E731
    ref = lambda x, v, w: reference.conv(tp, x, sh(v), w, s, r, n, False)  # noqa: E731

    def force_step(conv_fn):
        def loss(x, w, pos):
            def energy(pos):
                v = pos[r] - pos[s]
                return jnp.sum(conv_fn(x, v, w * jnp.exp(-0.01 * jnp.sum(v**2, -1))[:, None])[:, :128] ** 2)
            return jnp.sum(jax.grad(energy)(pos) ** 2)
        return jax.jit(jax.grad(loss, argnums=(0, 1)))

    bwd = lambda f: jax.jit(lambda x, v, w, g: jax.vjp(f, x, v, w)[1](g))  # noqa: E731
    for fn, fn_ref, args in ((jax.jit(ours), jax.jit(ref), (x, vec, w)), (bwd(ours), bwd(ref), (x, vec, w, dz)),
                             (force_step(ours), force_step(ref), (x, w, pos))):
        want = jax.tree.leaves(fn_ref(*(jnp.asarray(a, jnp.float64) for a in args)))
        for _ in range(3):
            for got, expected in zip(jax.tree.leaves(fn(*args)), want):
                assert got.dtype == jnp.float32
                assert_close(got, expected, 1e-5)


_SECOND_ORDER_CASES = [("6x0e+6x1o", varying, sorted_receivers, dtype, 70) for varying in [(0, 1, 2), (0, 2), (1,), (2,)]
                       for sorted_receivers in (False, True) for dtype in (np.float32, np.float64)] + [
    (i1, (0, 1, 2), True, dtype, 70) for i1 in ("5x0e+5x1o+5x2e", "130x0e+130x1o") for dtype in (np.float32, np.float64)] + [
    # fp32, rows of whole 16-byte units, many edges per GPU block
    ("4x0e+4x1o", (0, 1, 2), False, np.float32, 2400), ("4x0e+4x1o", (0, 2), True, np.float32, 2400),
    ("128x0e+128x1o", (0, 1, 2), True, np.float32, 2400)]


@pytest.mark.parametrize("i1, varying, sorted_receivers, dtype, e", _SECOND_ORDER_CASES)
def test_second_order_pass_of_the_fused_gradients(rng, i1, varying, sorted_receivers, dtype, e):
    """The transposed linearization of the fused y and weight gradients (dy, dw) = vjp(z) in (x, w, z),
    the force-training step's second-order calls, runs as one tp_grads2_p pass (one kernel on the GPU)
    and equals e3nn-jax's: the cotangents of x (summed over senders), w (per edge) and z (summed over
    receivers), for any subset of them varying; edges with an out-of-range index contribute nothing.
    Both compiled shapes (MACE-medium's and MACE-large's node irreps), more channels than a GPU block has
    threads (130), and fp32 graphs of 2400 edges (multiplicities 4 and 128: rows of whole 16-byte units,
    tens of edges per GPU block)."""
    io = {"6x0e+6x1o": "6x0e+6x1o+6x2e", "5x0e+5x1o+5x2e": "5x0e+5x1o+5x2e+5x3o", "130x0e+130x1o": "130x0e+130x1o+130x2e",
          "4x0e+4x1o": "4x0e+4x1o+4x2e", "128x0e+128x1o": "128x0e+128x1o+128x2e"}[i1]
    tp = jb.TensorProduct(i1, SH3, io, jb.channelwise_instructions(i1, SH3, io))
    n = 7 if e < 1000 else 40  # several GPU chunks; runs of one receiver longer than a chunk when sorted
    s, r = _graph(rng, n, e)
    if sorted_receivers:
        r = np.sort(r)
    s[5], r[9], s[11] = n + 3, -1, -2
    x, y, w = _inputs(rng, tp, n, e, dtype)
    z = rng.normal(size=(n, tp.irreps_out.dim)).astype(dtype)
    c_dy = rng.normal(size=(e, tp.irreps_in2.dim)).astype(dtype)
    c_dw = rng.normal(size=(e, tp.weight_numel)).astype(dtype)
    keep = np.ones(e, bool)
    keep[[5, 9, 11]] = False

    def cotangents(conv_fn):
        def grads(*vary):  # (dy, dw): the conv's gradients in y and w at output cotangent z
            a = [x, w, z]
            for k, v in zip(varying, vary):
                a[k] = v
            return jax.vjp(lambda y_, w_: conv_fn(a[0], y_, w_), y, a[1])[1](a[2])
        primals = [(x, w, z)[k] for k in varying]
        lin = jax.linearize(grads, *primals)[1]
        return jax.linear_transpose(lin, *primals), lin

    ours, _ = cotangents(lambda x_, y_, w_: jb.conv(tp, x_, y_, w_, s, r, num_nodes=n))
    assert "jbm_tensor_product_grads2" in str(jax.make_jaxpr(ours)((c_dy, c_dw)))
    c_dw_device = jnp.asarray(c_dw)
    got = ours((c_dy, c_dw_device))
    np.testing.assert_array_equal(np.asarray(c_dw_device), c_dw)  # (the GPU writes c_w into c_dw's buffer
    # where XLA may donate it: never a caller's array)
    f64 = lambda a: jnp.asarray(a, jnp.float64)  # noqa: E731  (the reference in fp64)
    x, y, w, z = (f64(a) for a in (x, y, w, z))
    ref, _ = cotangents(lambda x_, y_, w_: reference.conv(tp, x_, y_, w_ * keep[:, None], np.clip(s, 0, n - 1),
                                                          np.clip(r, 0, n - 1), n, False))
    for a, b in zip(got, ref((f64(c_dy), f64(c_dw)))):
        assert_close(a, b, 1e-5 if dtype == np.float32 else 1e-12)
    if 1 in varying:  # dropped edges: zero weight cotangents
        assert not np.any(np.asarray(got[varying.index(1)])[~keep])


@pytest.mark.parametrize("deterministic", [False, True])
def test_vmap_over_graphs(rng, deterministic):
    tp = _tp("mace-medium")
    n, e, b = 6, 14, 3
    graphs = [_graph(rng, n, e) for _ in range(b)]
    s = np.stack([g[0] for g in graphs])
    r = np.stack([g[1] for g in graphs])
    x = rng.normal(size=(b, n, tp.irreps_in1.dim))
    y = rng.normal(size=(b, e, tp.irreps_in2.dim))
    w = rng.normal(size=(tp.weight_numel,))  # shared by every graph
    f = lambda x, y, w, s, r: jb.conv(tp, x, y, w, s, r, num_nodes=n, deterministic=deterministic)  # noqa: E731
    out = jax.vmap(f, in_axes=(0, 0, None, 0, 0))(x, y, w, s, r)
    for k in range(b):
        assert_close(out[k], _ref(tp, x[k], y[k], w, s[k], r[k], n), 1e-12)
    # Gradient of the shared weights, per graph.
    g = jax.vmap(jax.grad(lambda x, y, w, s, r: jnp.sum(f(x, y, w, s, r) ** 2), argnums=2),
                 in_axes=(0, 0, None, 0, 0))(x, y, w, s, r)
    for k in range(b):
        ref = jax.grad(lambda w: jnp.sum(_ref(tp, x[k], y[k], w, s[k], r[k], n) ** 2))(w)
        assert_close(g[k], ref, 1e-12)


def test_jit_int64_indices_and_empty_graph(rng):
    tp = _tp("mace-medium")
    n, e = 7, 10
    s, r = _graph(rng, n, e)
    x, y, w = _inputs(rng, tp, n, e)
    out = jax.jit(lambda *a: jb.conv(tp, *a, num_nodes=n))(x, y, w, s.astype(np.int64), r.astype(np.int64))
    assert_close(out, _ref(tp, x, y, w, s, r, n), 1e-12)
    x0, y0, w0 = _inputs(rng, tp, n, 0)
    empty = jb.conv(tp, x0, y0, w0, np.zeros(0, np.int32), np.zeros(0, np.int32), num_nodes=n)
    assert empty.shape == (n, tp.irreps_out.dim) and not np.any(np.asarray(empty))


@pytest.mark.parametrize("deterministic", [False, True])
@pytest.mark.parametrize("name", ["mace-medium", "uvw"])
def test_out_of_range_indices_drop_the_edge(rng, name, deterministic):
    tp = _tp(name)
    n, e = 6, 12
    s, r = _graph(rng, n, e)
    x, y, w = _inputs(rng, tp, n, e)
    bad_s, bad_r = s.copy(), r.copy()
    bad_s[4], bad_r[5], bad_s[6] = n + 100, -1, -7
    keep = np.ones(e, bool)
    keep[[4, 5, 6]] = False
    out, vjp = jax.vjp(lambda *a: jb.conv(tp, *a, bad_s, bad_r, num_nodes=n, deterministic=deterministic), x, y, w)
    assert_close(out, _ref(tp, x, y[keep], w[keep], s[keep], r[keep], n), 1e-12)
    dx, dy, dw = vjp(np.ones_like(np.asarray(out)))
    ref_dx = jax.vjp(lambda x: _ref(tp, x, y[keep], w[keep], s[keep], r[keep], n), x)[1](np.ones_like(np.asarray(out)))[0]
    assert_close(dx, ref_dx, 1e-12)
    assert not np.any(np.asarray(dy)[~keep]) and not np.any(np.asarray(dw)[~keep])


@pytest.mark.parametrize("deterministic", [False, True])
def test_sorted_receivers_long_runs(rng, deterministic):
    """Receiver-sorted edges: runs of equal receiver longer than a GPU chunk (32 edges), crossing chunk
    boundaries, with dropped edges inside runs; the atomic kernel sums each run in registers."""
    tp = _tp("mace-medium")
    n, e = 7, 300
    r = np.sort(rng.integers(1, n, size=e)).astype(np.int32)  # node 0 receives nothing
    s = rng.integers(0, n, size=e).astype(np.int32)
    x, y, w = _inputs(rng, tp, n, e)
    bad = np.array([5, 31, 32, 33, 100, 299])
    s_bad, r_bad = s.copy(), r.copy()
    s_bad[bad[::2]], r_bad[bad[1::2]] = -1, n
    keep = np.ones(e, bool)
    keep[bad] = False
    conv = lambda x, y, w: jb.conv(tp, x, y, w, s_bad, r_bad, num_nodes=n, deterministic=deterministic)  # noqa: E731
    ref = lambda x, y, w: _ref(tp, x, y[keep], w[keep], s[keep], r[keep], n)  # noqa: E731
    out, vjp = jax.vjp(conv, x, y, w)
    ref_out, ref_vjp = jax.vjp(ref, x, y, w)
    assert_close(out, ref_out, 1e-12)
    dz = rng.normal(size=out.shape)
    for got, want in zip(vjp(dz), ref_vjp(dz)):
        assert_close(got, want, 1e-12)


# uint8, uint16 and uint32 sort keys, each at its largest node count and one past it
@pytest.mark.parametrize("num_nodes", [5, 255, 256, 65_535, 65_536])
@pytest.mark.parametrize("index_dtype", [np.int32, np.int64])
def test_edge_lists_match_numpy(rng, num_nodes, index_dtype):
    """The edge lists of the deterministic scatter and the sender-order gradient pass (stable order by
    target, each node's run start, the prefix sums of its extra pieces) against numpy's stable argsort and
    bincount; out-of-range targets sort last, in no node's run."""
    from jaxbatmobile._src.tensor_product import SEGMENT_PIECE_EDGES, _edge_lists

    targets = rng.integers(-3, num_nodes + 3, size=3000)
    targets[rng.permutation(3000)[:150]] = num_nodes - 1  # a long list, split into pieces; the largest key
    targets = targets.astype(index_dtype)
    offsets, order, pieces = jax.jit(_edge_lists, static_argnums=1)(targets, num_nodes)
    key = np.where((targets >= 0) & (targets < num_nodes), targets, num_nodes)
    counts = np.bincount(key, minlength=num_nodes + 1)[:num_nodes]
    extra = np.maximum(counts - 1, 0) // SEGMENT_PIECE_EDGES
    np.testing.assert_array_equal(order, np.argsort(key, kind="stable"))
    np.testing.assert_array_equal(offsets, np.concatenate([[0], np.cumsum(counts)]))
    np.testing.assert_array_equal(pieces, np.concatenate([[0], np.cumsum(extra)]))
    assert offsets.dtype == order.dtype == pieces.dtype == jnp.int32


@pytest.mark.parametrize("deterministic", [False, True])
@pytest.mark.parametrize("op", ["conv", "sh_conv"])
def test_hub_nodes_split_across_blocks(rng, op, deterministic):
    """A jraph-style padding node that sends and receives hundreds of edges, and nodes with exactly
    SEGMENT_PIECE_EDGES and one more: the GPU's sorted-list kernels (both modes for the node-feature
    gradient, deterministic mode for the output) cut such lists into pieces summed by several blocks and
    added in a fixed order. Values and first derivatives vs the unfused reference; bitwise repeatable."""
    from jaxbatmobile._src.tensor_product import SEGMENT_PIECE_EDGES as P

    tp = _tp("mace-medium")
    n, hub = 9, 8
    s = [hub] * 500 + [1] * P + [2] * (P + 1) + list(rng.integers(0, n - 1, size=90))
    r = [hub] * 500 + list(rng.integers(0, n - 1, size=P + P + 1)) + [1] * 45 + [2] * 45
    s, r = np.asarray(s, np.int32), np.asarray(r, np.int32)
    s[[7, 300, 520]], r[[9, 499]] = n + 2, -1  # dropped edges inside the hub's and node 1's lists
    keep = (s >= 0) & (s < n) & (r >= 0) & (r < n)
    e = len(s)
    x, y, w = _inputs(rng, tp, n, e)
    if op == "conv":
        fn = lambda x, y, w, s=s, r=r: jb.conv(tp, x, y, w, s, r, num_nodes=n, deterministic=deterministic)  # noqa
        ref = lambda x, y, w: _ref(tp, x, y[keep], w[keep], s[keep], r[keep], n)  # noqa: E731
    else:
        y = _vectors(rng, e)
        fn = lambda x, y, w: jb.sh_conv(tp, x, y, w, s, r, num_nodes=n, deterministic=deterministic)  # noqa
        ref = lambda x, y, w: _ref(tp, x, e3nn.spherical_harmonics(SH3, y[keep], True).array, w[keep],  # noqa
                                   s[keep], r[keep], n)
    dz = rng.normal(size=(n, tp.irreps_out.dim))

    @jax.jit
    def run(x, y, w):
        out, vjp = jax.vjp(fn, x, y, w)
        return (out, *vjp(dz))

    got = run(x, y, w)
    out, vjp = jax.vjp(ref, x, y, w)
    for a, b in zip(got, (out, *vjp(dz))):
        assert_close(a, b, 1e-12)
    if deterministic:
        for a, b in zip(got, run(x, y, w)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("op", ["conv", "sh_conv", "tp"])
def test_fused_y_and_weight_gradients(rng, op, dtype):
    """Gradients in y (or edge vectors) and weights together run as one fused call (tp_grads_p, FFI
    jbm_tp_grads): compared with the unfused reference, with more channels than a GPU warp has lanes
    (40: two rounds, a partial one), dropped edges, the call's vmap, and the transpose of its VJP."""
    i1, io = "40x0e+40x1o", "40x0e+40x1o+40x2e"
    tp = jb.TensorProduct(i1, SH3, io, jb.channelwise_instructions(i1, SH3, io))
    n, e = 9, 70
    s, r = _graph(rng, n, e)
    x, y, w = _inputs(rng, tp, n, e, dtype)
    v = _vectors(rng, e, dtype)
    keep = np.ones(e, bool)
    s_bad = s.copy()
    if op != "tp":
        s_bad[[3, 40]] = [-1, n]
        keep[[3, 40]] = False

    def sh(v):
        return e3nn.spherical_harmonics(tp.irreps_in2, jnp.asarray(v, jnp.float64), True, normalization="component").array

    if op == "conv":
        f = lambda x, y, w: jb.conv(tp, x, y, w, s_bad, r, num_nodes=n)  # noqa: E731
        ref = lambda x, y, w: _ref(tp, x, y[keep], w[keep], s[keep], r[keep], n)  # noqa: E731
        args = (x, y, w)
    elif op == "sh_conv":
        f = lambda x, v, w: jb.sh_conv(tp, x, v, w, s_bad, r, num_nodes=n)  # noqa: E731
        ref = lambda x, v, w: _ref(tp, x, sh(v)[keep], w[keep], s[keep], r[keep], n)  # noqa: E731
        args = (x, v, w)
    else:  # the plain product, rows = edges
        xe = x[s]
        f = lambda x, y, w: tp(x, y, w)  # noqa: E731
        ref = lambda x, y, w: reference.tensor_product(tp, *(jnp.asarray(a, jnp.float64) for a in (x, y, w)), False)  # noqa: E731
        args = (xe, y, w)
    dz = rng.normal(size=np.shape(f(*args))).astype(dtype)
    loss = lambda a, y, w: jnp.vdot(f(a, y, w), dz)  # noqa: E731
    assert "jbm_tensor_product_grads" in str(jax.make_jaxpr(jax.grad(loss, argnums=(1, 2)))(*args))
    got = jax.grad(loss, argnums=(0, 1, 2))(*args)
    want = jax.grad(lambda a, y, w: jnp.vdot(ref(a, y, w), dz.astype(np.float64)), argnums=(0, 1, 2))(*args)
    for g, h in zip(got, want):
        assert_close(g, h, TOL[dtype] * 5)
    if op != "tp":
        assert not np.any(np.asarray(got[1])[~keep]) and not np.any(np.asarray(got[2])[~keep])
    # vmap over a batch of (y, w) pairs runs the fused call's batching rule
    ys, ws = np.stack([args[1], args[1] * 0.5]), np.stack([args[2], -args[2]])
    batched = jax.vmap(jax.grad(loss, argnums=(1, 2)), in_axes=(None, 0, 0))(args[0], ys, ws)
    for b in range(2):
        for g, h in zip((batched[0][b], batched[1][b]), jax.grad(loss, argnums=(1, 2))(args[0], ys[b], ws[b])):
            assert_close(g, h, TOL[dtype] * 5)
    if op != "sh_conv" and dtype == np.float64:  # the VJP is linear in dz: its transpose is the JVP in (y, w)
        _, vjp = jax.vjp(lambda y, w: f(args[0], y, w), args[1], args[2])
        t_y, t_w = rng.normal(size=args[1].shape), rng.normal(size=args[2].shape)
        (back,) = jax.linear_transpose(lambda c: vjp(c), dz)((t_y, t_w))
        assert_close(back, jax.jvp(lambda y, w: f(args[0], y, w), (args[1], args[2]), (t_y, t_w))[1], 1e-12)


@pytest.mark.parametrize("deterministic", [False, True])
@pytest.mark.parametrize("op", ["conv", "sh_conv"])
@pytest.mark.parametrize("shape", ["mace-medium", "mace-large"])
def test_compiled_shapes_fp32_long_graph(rng, shape, op, deterministic):
    """The forward and the whole backward (one fused pass) of a compiled shape's conv in fp32 on a graph
    long enough for many edge chunks per block (E = 2400 on 40 nodes, receivers sorted in part: long runs),
    with dropped edges. On an sm_90 GPU the per-edge rows (weights, x, the cotangent) of multiplicities up
    to 128 whose rows are whole 16-byte units come through the bulk-copy ring (EdgeRing): 1, 4, 40, 128 for
    MACE-medium, 4 and 128 for MACE-large; the others (MACE-large's 3, 130) fall back to the lanes' own
    loads. Against the unfused e3nn-jax reference in fp64."""
    l2 = "0e+1o+2e" if shape == "mace-medium" else SH3
    muls = (1, 4, 40, 128, 130) if shape == "mace-medium" else (3, 4, 128, 130)
    n, e = 40, 2400
    s = rng.integers(0, n, size=e).astype(np.int32)
    r = np.sort(rng.integers(0, n, size=e)).astype(np.int32)
    r[1200:] = rng.integers(0, n, size=e - 1200)  # the second half in random order
    s[[5, 700, 1900]], r[[6, 1500]] = -3, n  # dropped edges
    keep = (s >= 0) & (s < n) & (r >= 0) & (r < n)
    for mul in muls:
        i1 = f"{mul}x0e+{mul}x1o" if shape == "mace-medium" else f"{mul}x0e+{mul}x1o+{mul}x2e"
        io = " + ".join(f"{mul}x{ir}" for ir in l2.split("+"))
        tp = jb.TensorProduct(i1, SH3, io, jb.channelwise_instructions(i1, SH3, io))
        assert tp._tables.uvu_shape in jb.build_info()["uvu_shapes"]
        x, y, w = _inputs(rng, tp, n, e, np.float32)
        if op == "conv":
            f = lambda x, y, w: jb.conv(tp, x, y, w, s, r, num_nodes=n, deterministic=deterministic)  # noqa: E731
            ref = lambda x, y, w: _ref(tp, x, y[keep], w[keep], s[keep], r[keep], n)  # noqa: E731
        else:
            # (no near-zero vectors: their SH gradients, ~1/|v|, are ill-conditioned in fp32; fp64 tests cover them)
            y = rng.normal(size=(e, 3)).astype(np.float32)
            f = lambda x, v, w: jb.sh_conv(tp, x, v, w, s, r, num_nodes=n, deterministic=deterministic)  # noqa
            sh = lambda v: reference.spherical_harmonics(jnp.asarray(v, jnp.float64), 3, True, "component")  # noqa
            ref = lambda x, v, w: _ref(tp, x, sh(v)[keep], w[keep], s[keep], r[keep], n)  # noqa: E731
        dz = rng.normal(size=(n, tp.irreps_out.dim)).astype(np.float32)
        out, vjp = jax.vjp(f, x, y, w)
        want, vjp_ref = jax.vjp(ref, *(jnp.asarray(a, jnp.float64) for a in (x, y, w)))
        assert out.dtype == np.float32
        assert_close(out, want, TOL[np.float32])
        for g, h in zip(vjp(dz), vjp_ref(jnp.asarray(dz, jnp.float64))):
            assert g.dtype == np.float32
            assert_close(g, h, TOL[np.float32])


@pytest.mark.parametrize("deterministic", [False, True])
@pytest.mark.parametrize("op", ["conv", "sh_conv"])
@pytest.mark.parametrize("shape", ["mace-medium", "mace-large"])
def test_whole_backward_of_compiled_shapes(rng, shape, op, deterministic):
    """The backward of a compiled shape's conv in (node features, edge attributes or vectors, weights):
    one fused call in both modes (tp_grads_p with grads (y, w, x): dx scattered to senders from the same
    pass as dy and dw; atomic adds per sender run, or each sender's list summed and stored: bitwise
    repeatable). Against the unfused e3nn-jax reference, with dropped edges, a node that sends nothing,
    multiplicities of 1, 40 and 130 (partial GPU warps, more channels than a block has threads), fp64
    and fp32, and the empty graph."""
    l2 = "0e+1o+2e" if shape == "mace-medium" else "0e+1o+2e+3o"
    for mul, dtype in ((40, np.float64), (1, np.float64), (40, np.float32), (130, np.float64)):
        i1 = f"{mul}x0e+{mul}x1o" if shape == "mace-medium" else f"{mul}x0e+{mul}x1o+{mul}x2e"
        io = " + ".join(f"{mul}x{ir}" for ir in (l2 if shape == "mace-medium" else SH3).split("+"))
        tp = jb.TensorProduct(i1, SH3, io, jb.channelwise_instructions(i1, SH3, io))
        assert tp._tables.uvu_shape in jb.build_info()["uvu_shapes"]
        n, e = 9, 70
        s, r = _graph(rng, n, e)
        s[s == n - 1] = 2  # node n - 1 sends nothing: its dx is exactly zero
        s[[3, 40]] = [-1, n]  # dropped edges
        keep = s >= 0
        keep &= s < n
        x, y, w = _inputs(rng, tp, n, e, dtype)
        v = _vectors(rng, e, dtype)
        if op == "conv":
            f = lambda x, y, w: jb.conv(tp, x, y, w, s, r, num_nodes=n, deterministic=deterministic)  # noqa: E731
            ref = lambda x, y, w: _ref(tp, x, y[keep], w[keep], s[keep], r[keep], n)  # noqa: E731
            args = (x, y, w)
        else:
            sh = lambda v: reference.spherical_harmonics(jnp.asarray(v, jnp.float64), 3, True, "component")  # noqa: E731
            f = lambda x, v, w: jb.sh_conv(tp, x, v, w, s, r, num_nodes=n, deterministic=deterministic)  # noqa: E731
            ref = lambda x, v, w: _ref(tp, x, sh(v)[keep], w[keep], s[keep], r[keep], n)  # noqa: E731
            args = (x, v, w)
        dz = rng.normal(size=(n, tp.irreps_out.dim)).astype(dtype)
        loss = lambda *a: jnp.vdot(f(*a), dz)  # noqa: E731
        jaxpr = str(jax.make_jaxpr(jax.grad(loss, argnums=(0, 1, 2)))(*args))
        assert "grads=(1, 2, 0)" in jaxpr
        got = jax.grad(loss, argnums=(0, 1, 2))(*args)
        if deterministic:
            for g, h in zip(got, jax.grad(loss, argnums=(0, 1, 2))(*args)):
                np.testing.assert_array_equal(np.asarray(g), np.asarray(h))
        want = jax.grad(lambda *a: jnp.vdot(ref(*a), dz.astype(np.float64)), argnums=(0, 1, 2))(*args)
        for g, h in zip(got, want):
            assert g.dtype == dtype
            assert_close(g, h, TOL[dtype] * 5)
        assert not np.any(np.asarray(got[0])[n - 1])
        assert not np.any(np.asarray(got[1])[~keep]) and not np.any(np.asarray(got[2])[~keep])
    # the empty graph: zero gradients of the right shapes
    none = np.zeros((0,), np.int32)
    args0 = (x, args[1][:0], w[:0])
    g0 = jax.grad(lambda *a: jnp.vdot(jb.conv(tp, *a, none, none, num_nodes=n, deterministic=deterministic)
                                      if op == "conv" else
                                      jb.sh_conv(tp, *a, none, none, num_nodes=n, deterministic=deterministic), dz),
                  argnums=(0, 1, 2))(*args0)
    assert [g.shape for g in g0] == [a.shape for a in args0] and not np.any(np.asarray(g0[0]))


@pytest.mark.parametrize("deterministic", [False, True])
@pytest.mark.parametrize("op", ["conv", "sh_conv"])
@pytest.mark.parametrize("shape", ["mace-medium", "mace-large"])
def test_each_gradient_set_of_compiled_shapes(rng, shape, op, deterministic):
    """Every set of gradients asked of a compiled shape's conv: one alone (dx: in atomic mode a gradient
    pass of its own, summed over sender runs; dy, dw: slot y, w calls, on the GPU the edge-gradient kernel
    with that one gradient), pairs ({dy, dw} one fused pass; dx with one other: dx's pass and a slot
    call), the same in both modes (deterministic: dx stored per sender list). Against the unfused
    e3nn-jax reference with dropped edges, 40 channels (a partial warp), fp64 and fp32."""
    mul = 40
    l2 = "0e+1o+2e" if shape == "mace-medium" else SH3
    i1 = f"{mul}x0e+{mul}x1o" if shape == "mace-medium" else f"{mul}x0e+{mul}x1o+{mul}x2e"
    io = "+".join(f"{mul}x{ir}" for ir in l2.split("+"))
    tp = jb.TensorProduct(i1, SH3, io, jb.channelwise_instructions(i1, SH3, io))
    n, e = 9, 70
    s, r = _graph(rng, n, e)
    s[[3, 40]] = [-1, n]  # dropped edges
    keep = (s >= 0) & (s < n)
    fused = {(0,): "grads=(0,)", (0, 1): "grads=(0,)", (0, 2): "grads=(0,)", (1, 2): "grads=(1, 2)"}
    for k, argnums in enumerate([(0,), (1,), (2,), (0, 1), (0, 2), (1, 2)]):
        dtype = (np.float64, np.float32)[k % 2]
        x, y, w = _inputs(rng, tp, n, e, dtype)
        if op == "conv":
            f = lambda x, y, w: jb.conv(tp, x, y, w, s, r, num_nodes=n, deterministic=deterministic)  # noqa: E731
            ref = lambda x, y, w: _ref(tp, x, y[keep], w[keep], s[keep], r[keep], n)  # noqa: E731
            args = (x, y, w)
        else:
            sh = lambda v: reference.spherical_harmonics(jnp.asarray(v, jnp.float64), 3, True, "component")  # noqa: E731
            f = lambda x, v, w: jb.sh_conv(tp, x, v, w, s, r, num_nodes=n, deterministic=deterministic)  # noqa: E731
            ref = lambda x, v, w: _ref(tp, x, sh(v)[keep], w[keep], s[keep], r[keep], n)  # noqa: E731
            args = (x, _vectors(rng, e, dtype), w)
        dz = rng.normal(size=(n, tp.irreps_out.dim)).astype(dtype)
        loss = lambda *a: jnp.vdot(f(*a), dz)  # noqa: E731
        jaxpr = str(jax.make_jaxpr(jax.grad(loss, argnums=argnums))(*args))
        expected_fused = fused.get(argnums)
        assert (expected_fused is not None) == ("jbm_tensor_product_grads" in jaxpr), (argnums, jaxpr)
        if expected_fused:
            assert expected_fused in jaxpr
        got = jax.grad(loss, argnums=argnums)(*args)
        want = jax.grad(lambda *a: jnp.vdot(ref(*a), dz.astype(np.float64)), argnums=argnums)(*args)
        for i, g, h in zip(argnums, got, want):
            assert g.dtype == dtype
            assert_close(g, h, TOL[dtype] * 5)
            if i > 0:
                assert not np.any(np.asarray(g)[~keep])


def test_bad_calls(rng):
    tp = _tp("mace-medium")
    n, e = 5, 8
    s, r = _graph(rng, n, e)
    x, y, w = _inputs(rng, tp, n, e)
    with pytest.raises(ValueError, match="node_feats"):
        jb.conv(tp, x[:4], y, w, s, r, num_nodes=n)
    with pytest.raises(ValueError, match="receivers"):
        jb.conv(tp, x, y, w, s, r[:5], num_nodes=n)
    with pytest.raises(TypeError, match="senders"):
        jb.conv(tp, x, y, w, s.astype(np.float32), r, num_nodes=n)
    with pytest.raises(ValueError, match="num_nodes"):
        jb.conv(tp, x, y, w, s, r, num_nodes=None)
    with pytest.raises(ValueError, match="edge_weights"):
        jb.conv(tp, x, y, w[:, :3], s, r, num_nodes=n)
    with pytest.raises(TypeError, match="share one dtype"):
        jb.conv(tp, x.astype(np.float32), y, w, s, r, num_nodes=n)
    with pytest.raises(TypeError, match="deterministic"):
        jb.conv(tp, x, y, w, s, r, num_nodes=n, deterministic="yes")


# ---- deterministic mode --------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["mace-medium", "uvw"])
def test_deterministic_is_bitwise_reproducible(rng, name):
    """Forward and every first derivative, twice, in fp32 on a graph with many edges per node: the same
    bits (on the GPU this is the difference from the atomic mode); and the same values as atomic."""
    tp = _tp(name)
    n, e = 40, 2000  # ~50 edges per node: more than one staged chunk of edges per node
    s, r = rng.integers(0, n, size=(2, e)).astype(np.int32)
    x, y, w = _inputs(rng, tp, n, e, np.float32)
    g = rng.normal(size=(n, tp.irreps_out.dim)).astype(np.float32)

    @jax.jit
    def run(x, y, w):
        out, vjp = jax.vjp(lambda *a: jb.conv(tp, *a, s, r, num_nodes=n, deterministic=True), x, y, w)
        return (out, *vjp(g))

    first = [np.asarray(a) for a in run(x, y, w)]
    for _ in range(2):
        for a, b in zip(first, run(x, y, w)):
            np.testing.assert_array_equal(a, np.asarray(b))
    atomic = jax.vjp(lambda *a: jb.conv(tp, *a, s, r, num_nodes=n), x, y, w)
    for a, b in zip(first, (atomic[0], *atomic[1](g))):
        assert_close(a, b, 2e-5)


def test_deterministic_shared_weight_gradient(rng):
    tp = _tp("mace-medium")
    n, e = 10, 60
    s, r = _graph(rng, n, e)
    x, y, w = _inputs(rng, tp, n, e, shared=True)
    ours = jax.grad(lambda w: jnp.sum(jb.conv(tp, x, y, w, s, r, num_nodes=n, deterministic=True) ** 2))(w)
    ref = jax.grad(lambda w: jnp.sum(_ref(tp, x, y, w, s, r, n) ** 2))(w)
    assert_close(ours, ref, 1e-12)


# ---- sh_conv: spherical harmonics of the edge vectors in the kernel --------------------------------


def _sh_tp(name):
    if name == "mace-medium":
        return _tp("mace-medium")
    if name == "uvw-l2":  # generic kernel, SH up to l = 2
        i1, i2, io = "2x0e+2x1o", "0e+1o+2e", "3x0e+2x1o+2x2e"
        ins = [(a, b, c, "uvw", True) for a in range(2) for b in range(3) for c in range(3)
               if e3nn.Irreps(io)[c].ir in e3nn.Irreps(i1)[a].ir * e3nn.Irreps(i2)[b].ir]
        return jb.TensorProduct(i1, i2, io, ins)
    if name == "nequip-l4":  # uvu with l = 4 SH: the generic kernel
        i1, i2, io = "4x0e+4x1o+4x2e", "0e+1o+2e+3o+4e", "4x0e+4x1o+4x2e"
        return jb.TensorProduct(i1, i2, io, jb.channelwise_instructions(i1, i2, io))
    raise KeyError(name)


def _vectors(rng, e, dtype=np.float64):
    v = rng.normal(size=(e, 3)).astype(dtype)
    v[0] = 0.0  # the zero vector: Y = [1, 0, ...] with normalize, as in e3nn-jax
    v[1] *= 1e-3
    return v


@pytest.mark.parametrize("deterministic", [False, True])
@pytest.mark.parametrize("normalize,normalization", [(True, "component"), (True, "norm"), (False, "integral")])
@pytest.mark.parametrize("name", ["mace-medium", "uvw-l2", "nequip-l4"])
def test_sh_conv_matches_unfused(rng, name, normalize, normalization, deterministic):
    tp = _sh_tp(name)
    l_max = tp.irreps_in2.lmax
    n, e = 9, 30
    s, r = _graph(rng, n, e)
    x, _, w = _inputs(rng, tp, n, e)
    v = _vectors(rng, e)
    sh = lambda v: reference.spherical_harmonics(v, l_max, normalize, normalization)  # noqa: E731
    f = lambda x, v, w: jb.sh_conv(tp, x, v, w, s, r, num_nodes=n, normalize=normalize,  # noqa: E731
                                   normalization=normalization, deterministic=deterministic)
    out, vjp = jax.vjp(f, x, v, w)
    ref, ref_vjp = jax.vjp(lambda x, v, w: _ref(tp, x, sh(v), w, s, r, n), x, v, w)
    assert_close(out, ref, 1e-12)
    g = rng.normal(size=out.shape)
    for a, b in zip(vjp(g), ref_vjp(g)):
        assert_close(a, b, 1e-11)
    # float32 against the fp64 oracle
    out32 = jb.sh_conv(tp, *(a.astype(np.float32) for a in (x, v, w)), s, r, num_nodes=n, normalize=normalize,
                       normalization=normalization, deterministic=deterministic)
    assert out32.dtype == np.float32
    assert_close(out32, ref, 1e-5)


@pytest.mark.parametrize("deterministic", [False, True])
def test_sh_conv_check_grads_order2(rng, deterministic):
    tp = _sh_tp("mace-medium")
    n, e = 5, 12
    s, r = _graph(rng, n, e)
    x, _, w = _inputs(rng, tp, n, e)
    v = rng.normal(size=(e, 3))
    v *= (0.5 + rng.uniform(size=(e, 1))) / np.linalg.norm(v, axis=1, keepdims=True)  # finite differences need |v| ~ 1
    check_grads(lambda *a: jb.sh_conv(tp, *a, s, r, num_nodes=n, deterministic=deterministic), (x, v, w), order=2,
                modes=("fwd", "rev"))


@pytest.mark.parametrize("deterministic", [False, True])
def test_sh_conv_force_training_step(rng, deterministic):
    """The force-training step with SH evaluated in the kernel equals the unfused e3nn-jax one. In both
    modes (a compiled shape) its calls are the forward, the forces' fused y and weight gradients, and the
    forward's transpose (an x-gradient pass and a weight-gradient call); the derivatives of the forces'
    gradients are one second-order pass in atomic mode (tp_grads2_p) and, in the deterministic mode, five
    calls — two x gradients as gradient passes per sender list (bitwise repeatable), a weight-gradient
    call and two second-order forwards."""
    tp = _sh_tp("mace-medium")
    n, e = 8, 24
    s, r = _graph(rng, n, e)
    pos = rng.normal(size=(n, 3))
    x, _, w = _inputs(rng, tp, n, e)

    def loss(energy_of, on_edges=False):  # on_edges: forces on the edge vectors, not the positions
        def f(x, w):
            def energy(pos):
                vec = pos[r] - pos[s] + 0.1 if not on_edges else pos
                return energy_of(x, vec, w * jnp.exp(-0.01 * jnp.sum(vec**2, -1))[:, None])
            return jnp.sum(jax.grad(energy)(pos if not on_edges else pos[r] - pos[s] + 0.1) ** 2)
        return jax.grad(f, argnums=(0, 1))

    step = loss(lambda x, v, w: jnp.sum(jb.sh_conv(tp, x, v, w, s, r, num_nodes=n,
                                                   deterministic=deterministic)[:, :6] ** 2))
    jaxpr = str(jax.make_jaxpr(step)(x, w))
    assert "grads=(1, 2)" in jaxpr
    if deterministic:
        assert jaxpr.count("jbm_tensor_product_grads[") == 4 and jaxpr.count("grads=(0,)") == 3
        assert jaxpr.count("jbm_conv[") == 5 and "jbm_tensor_product_grads2[" not in jaxpr
    else:
        assert jaxpr.count("jbm_tensor_product_grads[") == 2 and jaxpr.count("grads=(0,)") == 1
        assert jaxpr.count("jbm_conv[") == 2 and jaxpr.count("jbm_tensor_product_grads2[") == 1
    ours = step(x, w)
    if deterministic:  # bitwise repeatable; the forces on the edge vectors (XLA's own scatter-add to the
        # positions, the transpose of pos[r] - pos[s], uses atomics on the GPU)
        on_edges = jax.jit(loss(lambda x, v, w: jnp.sum(jb.sh_conv(tp, x, v, w, s, r, num_nodes=n,
                                                                   deterministic=True)[:, :6] ** 2), on_edges=True))
        for a, b in zip(on_edges(x, w), on_edges(x, w)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    ref = loss(lambda x, v, w: jnp.sum(_ref(tp, x, reference.spherical_harmonics(v, 3, True, "component"), w, s, r,
                                            n)[:, :6] ** 2))(x, w)
    for a, b in zip(ours, ref):
        assert_close(a, b, 1e-11)


def test_sh_conv_vmap(rng):
    tp = _sh_tp("mace-medium")
    n, e, b = 6, 14, 2
    graphs = [_graph(rng, n, e) for _ in range(b)]
    s, r = (np.stack([g[k] for g in graphs]) for k in (0, 1))
    x = rng.normal(size=(b, n, tp.irreps_in1.dim))
    v = rng.normal(size=(b, e, 3))
    w = rng.normal(size=(b, e, tp.weight_numel))
    out = jax.vmap(lambda *a: jb.sh_conv(tp, *a, num_nodes=n, deterministic=True))(x, v, w, s, r)
    for k in range(b):
        ref = _ref(tp, x[k], reference.spherical_harmonics(v[k], 3, True, "component"), w[k], s[k], r[k], n)
        assert_close(out[k], ref, 1e-12)


def test_sh_conv_bad_calls(rng):
    tp = _tp("uvw")  # irreps_in2 = 0e + 1o: SH irreps of l_max = 1
    n, e = 5, 8
    s, r = _graph(rng, n, e)
    x, _, w = _inputs(rng, tp, n, e)
    v = rng.normal(size=(e, 3))
    jb.sh_conv(tp, x, v, w, s, r, num_nodes=n)  # fine
    bad = jb.TensorProduct("2x0e", "1o+2e", "2x1o", [(0, 0, 0, "uvu", True)])
    with pytest.raises(ValueError, match="spherical harmonics irreps"):
        jb.sh_conv(bad, np.zeros((n, 2)), v, np.zeros((e, bad.weight_numel)), s, r, num_nodes=n)
    with pytest.raises(ValueError, match="edge_vectors"):
        jb.sh_conv(tp, x, v[:, :2], w, s, r, num_nodes=n)
    with pytest.raises(ValueError, match="normalization"):
        jb.sh_conv(tp, x, v, w, s, r, num_nodes=n, normalization="unit")
