"""jaxbatmobile.e3nn against e3nn-jax itself: same signatures, IrrepsArrays, values and derivatives."""

import e3nn_jax as e3nn
import e3nn_jax.legacy
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import TOL, assert_close

import jaxbatmobile.e3nn as jbe


def irreps_array(rng, irreps, shape, dtype=np.float64):
    irreps = e3nn.Irreps(irreps)
    return e3nn.IrrepsArray(irreps, jnp.asarray(rng.normal(size=shape + (irreps.dim,)), dtype))


def same(actual, expected, dtype):
    """Same irreps, and values within the dtype's tolerance of the fp64 oracle."""
    assert actual.irreps == expected.irreps, (actual.irreps, expected.irreps)
    assert actual.dtype == dtype, actual.dtype
    assert_close(actual.array, expected.array, TOL[dtype])


# ---- spherical harmonics ------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("normalization", [None, "component", "norm", "integral"])
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("irreps", ["0e+1o+2e+3o", "3x1o+2e+2x4e", "1o", "0e+1o+2e+3o+4e+5o+6e+7o+8e", "2x0e"])
def test_spherical_harmonics(rng, irreps, normalize, normalization, dtype):
    v = rng.normal(size=(7, 5, 3))
    v[0, 0] = 0.0  # the zero vector
    expected = e3nn.spherical_harmonics(irreps, jnp.asarray(v), normalize, normalization)
    same(jbe.spherical_harmonics(irreps, jnp.asarray(v, dtype), normalize, normalization,
                                 algorithm=("recursive", "dense")), expected, dtype)


@pytest.mark.parametrize("parity", ["1o", "1e"])
def test_spherical_harmonics_degrees_take_the_input_parity(rng, parity):
    v = irreps_array(rng, parity, (6,))
    for irreps_out in (3, [0, 2, 3], range(4)):
        same(jbe.spherical_harmonics(irreps_out, v, True), e3nn.spherical_harmonics(irreps_out, v, True), np.float64)
    assert_close(jbe.sh(3, v.array, True), e3nn.sh(3, v.array, True), 1e-12)


def test_spherical_harmonics_derivatives(rng):
    v = jnp.asarray(rng.normal(size=(9, 3)))
    irreps = "0e+1o+2e+3o+2x4e"

    def energy(sh):
        return lambda v: jnp.sum(jnp.sin(sh(irreps, v, True).array))

    for derivative, v_ in ((jax.grad, v), (jax.hessian, v[:2])):
        ours, theirs = (jax.jit(derivative(energy(f)))(v_) for f in (jbe.spherical_harmonics, e3nn.spherical_harmonics))
        assert_close(ours, theirs, 1e-11)


def test_spherical_harmonics_fallback_and_errors(rng, monkeypatch):
    v = jnp.asarray(rng.normal(size=(4, 3)))
    same(jbe.spherical_harmonics("10e", v, True), e3nn.spherical_harmonics("10e", v, True), np.float64)
    assert jbe.spherical_harmonics("", v, True).shape == (4, 0)
    monkeypatch.setattr(jbe, "FALLBACK_TO_E3NN", False)
    with pytest.raises(NotImplementedError, match="degree 10"):
        jbe.spherical_harmonics("10e", v, True)
    with pytest.raises(ValueError, match="even parity"):
        jbe.spherical_harmonics("2o", v, True)
    with pytest.raises(ValueError, match=r"shape \[..., 3\]"):
        jbe.spherical_harmonics("1o", v[:, :2], True)
    with pytest.raises(ValueError, match="must be an IrrepsArray"):
        jbe.spherical_harmonics(2, v, True)
    with pytest.raises(ValueError, match="single vector"):
        jbe.spherical_harmonics(2, e3nn.IrrepsArray("2x0e+0e", v), True)
    with pytest.raises(ValueError, match="compatible parity"):
        jbe.spherical_harmonics("1o", e3nn.IrrepsArray("1e", v), True)
    with pytest.raises(ValueError, match="normalization"):
        jbe.spherical_harmonics("1o", v, True, "unit")


# ---- tensor_product -----------------------------------------------------------------------------

TP_CASES = [
    ("32x0e+16x1o+8x2e", "0e+1o+2e+3o", None),  # Nequix/NequIP-style x ⊗ sh
    ("32x0e+16x1o+8x2e", "0e+1o+2e+3o", "32x0e+16x1o+8x2e"),  # filtered like a Nequix layer
    ("4x0e+3x1o+2x2e+1e", "0e+2x1o+3x2e", ("1o", "2e", "0e")),  # several y channels: the (u, v) order
    ("2x0o+1e+4x3o", "1o+4e", ["2o", "3e", "4o"]),
    ("5x0e", "3x0e", None),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("regroup_output", [True, False])
@pytest.mark.parametrize("irrep_normalization", [None, "norm", "none"])
@pytest.mark.parametrize("case", range(len(TP_CASES)))
def test_tensor_product(rng, case, irrep_normalization, regroup_output, dtype):
    irreps1, irreps2, filter_ir_out = TP_CASES[case]
    x = irreps_array(rng, irreps1, (6, 1))
    y = irreps_array(rng, irreps2, (4,))  # leading shapes broadcast to (6, 4)
    kwargs = dict(filter_ir_out=filter_ir_out, irrep_normalization=irrep_normalization, regroup_output=regroup_output)
    expected = e3nn.tensor_product(x, y, **kwargs)
    same(jbe.tensor_product(x.astype(dtype), y.astype(dtype), **kwargs), expected, dtype)


def test_tensor_product_derivatives(rng):
    x = irreps_array(rng, "4x0e+3x1o+2x2e", (5,))
    y = irreps_array(rng, "0e+2x1o+2e", (5,))
    w = jnp.asarray(rng.normal(size=(5, e3nn.tensor_product(x.irreps, y.irreps, filter_ir_out="0e+1o+2e").dim)))

    def loss(tp):
        return lambda x, y: jnp.sum(jnp.tanh(tp(x, y, filter_ir_out="0e+1o+2e").array * w))

    grads = [jax.jit(jax.grad(loss(tp), (0, 1)))(x, y) for tp in (jbe.tensor_product, e3nn.tensor_product)]
    for a, b in zip(*grads):
        assert_close(a.array, b.array, 1e-12)
    hess = [jax.jit(jax.hessian(lambda xa: loss(tp)(e3nn.IrrepsArray(x.irreps, xa), y)))(x.array[0])
            for tp in (jbe.tensor_product, e3nn.tensor_product)]
    assert_close(hess[0], hess[1], 1e-11)


def test_tensor_product_zero_chunks_irreps_and_integers():
    x1 = e3nn.from_chunks("1o", [None], (), jnp.float32)
    x2 = e3nn.IrrepsArray("1o", jnp.array([0.0, 1.0, 0.0]))
    x3 = jbe.tensor_product(x1, x2)
    assert x3.irreps == "0e + 1e + 2e" and x3.zero_flags == (True, True, True)
    mixed = e3nn.from_chunks("0e+1o", [None, jnp.ones((1, 3))], (), jnp.float64)
    expected = e3nn.tensor_product(mixed, x2.astype(jnp.float64))
    actual = jbe.tensor_product(mixed, x2.astype(jnp.float64))
    assert actual.zero_flags == expected.zero_flags
    same(actual, expected, np.float64)
    assert jbe.tensor_product("2x1e + 2e", "2e") == e3nn.tensor_product("2x1e + 2e", "2e")
    ints = e3nn.IrrepsArray("1o", jnp.array([1, 2, 3]))
    same(jbe.tensor_product(ints, ints), e3nn.tensor_product(ints, ints), jnp.dtype(jnp.result_type(float)).type)


# ---- legacy FunctionalTensorProduct -------------------------------------------------------------

FTP_CASES = [
    # (irreps_in1, irreps_in2, irreps_out, instructions, kwargs)
    ("10x0o+10x1o+1x2e", "10x0o+10x1o+1x2o", "10x0e+10x1e+2x2o",
     [(0, 0, 0, "uvw", True), (1, 1, 1, "uvw", True), (1, 0, 1, "uvw", True), (2, 2, 2, "uvw", True),
      (2, 1, 2, "uvw", True)], {}),
    ("16x0e+8x1o+4x2e", "0e+1o+2e", "16x0e+8x1o+4x2e+16x1o",  # uvu and uvw, a path without weights
     [(0, 0, 0, "uvu", True), (1, 1, 0, "uvw", True), (1, 0, 1, "uvu", False), (2, 1, 1, "uvw", True),
      (2, 2, 2, "uvu", True), (0, 1, 3, "uvu", True, 0.5)],
     dict(irrep_normalization="norm", path_normalization="path", in1_var=[1.0, 2.0, 0.5], out_var=[1, 3, 1, 1])),
    ("3x0e+2x1e", "0e+1e", "1e+0e", [(0, 1, 0, "uvw", True), (1, 0, 0, "uvw", True), (1, 1, 1, "uvw", True)],
     dict(gradient_normalization="element", path_normalization=0.5)),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("flat", [False, True])
@pytest.mark.parametrize("case", range(len(FTP_CASES)))
def test_functional_tensor_product(rng, case, flat, dtype):
    irreps1, irreps2, irreps_out, instructions, kwargs = FTP_CASES[case]
    ours = jbe.FunctionalTensorProduct(irreps1, irreps2, irreps_out, instructions, **kwargs)
    theirs = e3nn_jax.legacy.FunctionalTensorProduct(irreps1, irreps2, irreps_out, instructions, **kwargs)
    assert [i.path_weight for i in ours.instructions] == [i.path_weight for i in theirs.instructions]
    ws = [jnp.asarray(rng.normal(size=i.path_shape)) for i in theirs.instructions if i.has_weight]
    x, y = irreps_array(rng, irreps1, ()), irreps_array(rng, irreps2, ())
    expected = theirs.left_right(ws, x, y)
    w = jnp.concatenate([a.ravel() for a in ws]) if flat else ws
    w = w.astype(dtype) if flat else [a.astype(dtype) for a in w]
    same(ours.left_right(w, x.astype(dtype), y.astype(dtype)), expected, dtype)


def test_functional_tensor_product_batched_no_weights_fallback_and_errors(rng, monkeypatch):
    irreps1, irreps2, irreps_out, instructions, kwargs = FTP_CASES[1]
    ours = jbe.FunctionalTensorProduct(irreps1, irreps2, irreps_out, instructions, **kwargs)
    x, y = irreps_array(rng, irreps1, (5,)), irreps_array(rng, irreps2, (5,))
    w = jnp.asarray(rng.normal(size=(5, sum(i.has_weight * int(np.prod(i.path_shape)) for i in ours.instructions))))
    expected = jax.vmap(ours.__class__.__mro__[1].left_right, (None, 0, 0, 0))(ours, w, x, y)
    same(ours.left_right(w, x, y), expected, np.float64)  # batched, per-row weights: no vmap needed
    unweighted = jbe.FunctionalTensorProduct("3x1o", "1o+2e", "3x0e+3x2o", [(0, 0, 0, "uvu", False), (0, 1, 1, "uvu", False)])
    x1, y1 = irreps_array(rng, "3x1o", ()), irreps_array(rng, "1o+2e", ())
    same(unweighted.left_right(x1, y1), e3nn_jax.legacy.FunctionalTensorProduct(
        "3x1o", "1o+2e", "3x0e+3x2o", [(0, 0, 0, "uvu", False), (0, 1, 1, "uvu", False)]).left_right(x1, y1), np.float64)
    uvv = [(0, 0, 0, "uvv", True)]
    a, b = irreps_array(rng, "3x1o", ()), irreps_array(rng, "2x1o", ())
    wv = [jnp.asarray(rng.normal(size=(3, 2)))]
    same(jbe.FunctionalTensorProduct("3x1o", "2x1o", "2x0e", uvv).left_right(wv, a, b),
         e3nn_jax.legacy.FunctionalTensorProduct("3x1o", "2x1o", "2x0e", uvv).left_right(wv, a, b), np.float64)
    with pytest.raises(ValueError, match="weight arrays expected"):
        ours.left_right(list(w[0][:3]), x[0], y[0])
    with pytest.raises(ValueError, match="path_shape"):
        ours.left_right([jnp.ones((2, 2))] * 5, x[0], y[0])
    with pytest.raises(ValueError, match="input2.*has irreps"):
        ours.left_right(w[0], x[0], irreps_array(rng, "0e+1e+2e", ()))
    monkeypatch.setattr(jbe, "FALLBACK_TO_E3NN", False)
    with pytest.raises(NotImplementedError, match="uvv"):
        jbe.FunctionalTensorProduct("3x1o", "2x1o", "2x0e", uvv).left_right(wv, a, b)


# ---- fused message passing ----------------------------------------------------------------------

def random_graph(rng, num_nodes, num_edges):
    senders = rng.integers(0, num_nodes, num_edges).astype(np.int32)
    receivers = rng.integers(0, num_nodes - 1, num_edges).astype(np.int32)  # the last node gets no edge
    return jnp.asarray(senders), jnp.asarray(receivers)


def unfused(x, y, w, senders, receivers, num_nodes, **kwargs):
    m = e3nn.tensor_product(x[senders], y, **kwargs)
    if w is not None:
        m = m * w
    return e3nn.scatter_sum(m, dst=receivers, output_size=num_nodes)


MP_CASES = [
    ("16x0e+16x1o+16x2e", "0e+1o+2e+3o", "16x0e+16x1o+16x2e"),  # a Nequix layer
    ("8x0e+4x1o", "0e+1o+2e", None),
    ("4x0e+3x1o", "2x0e+1o+2x2e", "0e+1o+2e"),  # several edge-attribute channels
]


@pytest.mark.parametrize("deterministic", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("weighted", [True, False])
@pytest.mark.parametrize("case", range(len(MP_CASES)))
def test_message_passing(rng, case, weighted, dtype, deterministic):
    irreps_x, irreps_y, filter_ir_out = MP_CASES[case]
    num_nodes, num_edges = 13, 60
    senders, receivers = random_graph(rng, num_nodes, num_edges)
    x, y = irreps_array(rng, irreps_x, (num_nodes,)), irreps_array(rng, irreps_y, (num_edges,))
    channels = e3nn.tensor_product(x.irreps, y.irreps, filter_ir_out=filter_ir_out).num_irreps
    w = jnp.asarray(rng.normal(size=(num_edges, channels))) if weighted else None
    expected = unfused(x, y, w, senders, receivers, num_nodes, filter_ir_out=filter_ir_out)
    cast = (lambda a: None if a is None else a.astype(dtype))
    actual = jbe.message_passing(cast(x), cast(y), cast(w), senders, receivers, filter_ir_out=filter_ir_out,
                                 deterministic=deterministic)
    same(actual, expected, dtype)


@pytest.mark.parametrize("case", range(len(MP_CASES)))
def test_message_passing_derivatives(rng, case):
    irreps_x, irreps_y, filter_ir_out = MP_CASES[case]
    num_nodes, num_edges = 9, 40
    senders, receivers = random_graph(rng, num_nodes, num_edges)
    x, y = irreps_array(rng, irreps_x, (num_nodes,)), irreps_array(rng, irreps_y, (num_edges,))
    channels = e3nn.tensor_product(x.irreps, y.irreps, filter_ir_out=filter_ir_out).num_irreps
    w = jnp.asarray(rng.normal(size=(num_edges, channels)))

    def loss(f):
        return lambda xa, ya, w: jnp.sum(jnp.sin(f(e3nn.IrrepsArray(x.irreps, xa), e3nn.IrrepsArray(y.irreps, ya), w,
                                                   senders, receivers, filter_ir_out=filter_ir_out).array))

    ours = jax.jit(jax.grad(loss(lambda *a, **k: jbe.message_passing(*a, **k)), (0, 1, 2)))(x.array, y.array, w)
    ref = jax.jit(jax.grad(loss(lambda *a, **k: unfused(*a, num_nodes=num_nodes, **k)), (0, 1, 2)))(x.array, y.array, w)
    for a, b in zip(ours, ref):
        assert_close(a, b, 1e-12)


@pytest.mark.parametrize("deterministic", [False, True])
def test_sh_message_passing_force_training(rng, deterministic):
    """Energy → forces through the in-kernel spherical harmonics → loss on forces → parameter gradient."""
    num_nodes, num_edges = 10, 50
    senders, receivers = random_graph(rng, num_nodes, num_edges)
    positions = jnp.asarray(rng.normal(size=(num_nodes, 3)))
    x = irreps_array(rng, "8x0e+8x1o+8x2e", (num_nodes,))
    filt = "8x0e+8x1o+8x2e"
    w = jnp.asarray(rng.normal(size=(num_edges, e3nn.tensor_product(x.irreps, "0e+1o+2e+3o", filter_ir_out=filt).num_irreps)))

    def energy(mp):
        def f(positions, xa, w):
            vectors = positions[senders] - positions[receivers]
            out = mp(e3nn.IrrepsArray(x.irreps, xa), vectors, w)
            return jnp.sum(jnp.tanh(out.array))
        return f

    def ours(xa, vectors, w):
        return jbe.sh_message_passing(xa, vectors, w, senders, receivers, lmax=3, filter_ir_out=filt,
                                      deterministic=deterministic)

    def theirs(xa, vectors, w):
        sh = e3nn.spherical_harmonics(range(4), e3nn.IrrepsArray("1o", vectors), True)
        return unfused(xa, sh, w, senders, receivers, num_nodes, filter_ir_out=filt)

    def loss(mp):
        def f(xa, w):
            forces = -jax.grad(energy(mp))(positions, xa, w)
            return jnp.sum(forces**2)
        return jax.jit(jax.value_and_grad(f, (0, 1)))

    (l1, g1), (l2, g2) = loss(ours)(x.array, w), loss(theirs)(x.array, w)
    assert_close(l1, l2, 1e-12)
    for a, b in zip(g1, g2):
        assert_close(a, b, 1e-11)


def test_message_passing_errors(rng):
    senders, receivers = random_graph(rng, 5, 8)
    x, y = irreps_array(rng, "4x0e+4x1o", (5,)), irreps_array(rng, "0e+1o", (8,))
    with pytest.raises(ValueError, match=r"edge_weights.*\(8, 24\)"):
        jbe.message_passing(x, y, jnp.ones((8, 5)), senders, receivers)
    with pytest.raises(ValueError, match="node_feats"):
        jbe.message_passing(x[0], y, None, senders, receivers)
    with pytest.raises(ValueError, match="lmax"):
        jbe.sh_message_passing(x, jnp.ones((8, 3)), None, senders, receivers, lmax="0e+1o")
    with pytest.raises(ValueError, match="edge_vectors"):
        jbe.sh_message_passing(x, jnp.ones((8, 2)), None, senders, receivers, lmax=1)
    with pytest.raises(ValueError, match="irrep_normalization"):
        jbe.tensor_product(x[0], y[0], irrep_normalization="unit")
