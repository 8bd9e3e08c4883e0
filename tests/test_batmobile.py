"""Batmobile's API on our kernels: parity-correct paths, e3nn normalisation, full autodiff."""

import e3nn_jax as e3nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_close
from jax.test_util import check_grads

from jaxbatmobile import batmobile as bm


def _blocks(a):
    return [a[..., l * l:(l + 1) ** 2] for l in range(4)]


def _oracle(x, y, w=None):
    """numpy fp64: Σ_paths sqrt(alpha) · CG · (w) · x · y with e3nn's default normalisation.

    alpha = (2 l_out + 1) / (number of paths into l_out × C_in) ("component" irreps, "element" paths,
    weights normalised per path). x: [N, C_in, 16] (or [N, 16] unweighted), y: [N, 16].
    """
    unweighted = w is None
    if unweighted:
        x = x[:, None, :]
    n, c_in = x.shape[:2]
    c_out = 1 if unweighted else w.shape[2]
    out = np.zeros((n, c_out, 16))
    paths = [tuple(p) for p in bm.get_tp_path_info()]
    for p, (l1, l2, lo) in enumerate(paths):
        n_lo = sum(1 for q in paths if q[2] == lo)
        alpha = (2 * lo + 1) / (n_lo * (1 if unweighted else c_in))
        cg = np.asarray(e3nn.clebsch_gordan(l1, l2, lo))
        t = np.einsum("ijk,nci,nj->nck", cg, _blocks(x)[l1], _blocks(y)[l2])  # [N, C_in, 2lo+1]
        t = t.sum(1, keepdims=True) if unweighted else np.einsum("nck,cd->ndk", t, w[p])
        out[:, :, lo * lo:(lo + 1) ** 2] += np.sqrt(alpha) * t
    return out[:, 0] if unweighted else out


def test_paths():
    info = bm.get_tp_path_info()
    assert bm.get_tp_num_paths() == 23 == len({tuple(r) for r in info.tolist()})
    for l1, l2, lo in info:
        assert abs(l1 - l2) <= lo <= min(3, l1 + l2) and (l1 + l2 + lo) % 2 == 0
    # The 11 paths Batmobile adds are exactly the parity-violating ones.
    all_so3 = [(a, b, c) for a in range(4) for b in range(4) for c in range(abs(a - b), min(3, a + b) + 1)]
    assert len(all_so3) == 34


def test_simple_matches_oracle(rng):
    x, y = rng.normal(size=(7, 16)), rng.normal(size=(7, 16))
    assert_close(bm.tensor_product_simple(x, y), _oracle(x, y), 1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_weighted_matches_oracle(rng, dtype):
    x, y, w = rng.normal(size=(6, 3, 16)), rng.normal(size=(6, 16)), rng.normal(size=(23, 3, 5))
    out = bm.tensor_product(x.astype(dtype), y.astype(dtype), w.astype(dtype))
    assert out.shape == (6, 5, 16) and out.dtype == dtype
    assert_close(out, _oracle(x.astype(dtype).astype(np.float64), y.astype(dtype).astype(np.float64),
                              w.astype(dtype).astype(np.float64)), 1e-12 if dtype == np.float64 else 1e-5)


def test_equivariant_under_rotation_and_inversion(rng):
    irreps = e3nn.Irreps("0e+1o+2e+3o")
    x, y, w = rng.normal(size=(4, 2, 16)), rng.normal(size=(4, 16)), rng.normal(size=(23, 2, 3))
    for k in (0, 1):
        d = np.asarray(irreps.D_from_angles(*rng.uniform(0, 6, size=3), k))
        assert_close(bm.tensor_product(x @ d.T, y @ d.T, w), np.asarray(bm.tensor_product(x, y, w)) @ d.T, 1e-12)
        assert_close(bm.tensor_product_simple(x[:, 0] @ d.T, y @ d.T),
                     np.asarray(bm.tensor_product_simple(x[:, 0], y)) @ d.T, 1e-12)


def test_gradients(rng):
    x, y, w = rng.normal(size=(3, 2, 16)), rng.normal(size=(3, 16)), rng.normal(size=(23, 2, 2))
    check_grads(lambda x, y, w: jnp.sin(bm.tensor_product(x, y, w)), (x, y, w), order=2, modes=("fwd", "rev"))
    check_grads(lambda x, y: jnp.sin(bm.tensor_product_simple(x, y)), (x[:, 0], y), order=2, modes=("fwd", "rev"))


def test_weight_gradient_matches_oracle(rng):
    """The weight gradient is where Batmobile's hand-typed constants were wrong."""
    x, y, w = rng.normal(size=(5, 2, 16)), rng.normal(size=(5, 16)), rng.normal(size=(23, 2, 3))
    g = rng.normal(size=(5, 3, 16))
    gw = jax.grad(lambda w: jnp.sum(g * bm.tensor_product(x, y, w)))(w)
    # The map is linear in w: its gradient is the oracle applied to unit weights, contracted with g.
    expected = np.zeros_like(w)
    for idx in np.ndindex(*w.shape):
        e = np.zeros_like(w)
        e[idx] = 1.0
        expected[idx] = np.sum(g * _oracle(x, y, e))
    assert_close(gw, expected, 1e-12)


def test_jit_vmap(rng):
    x, y, w = rng.normal(size=(2, 3, 2, 16)), rng.normal(size=(2, 3, 16)), rng.normal(size=(23, 2, 2))
    out = jax.jit(jax.vmap(lambda x, y: bm.tensor_product(x, y, w)))(x, y)
    assert_close(out, bm.tensor_product(x.reshape(6, 2, 16), y.reshape(6, 16), w).reshape(2, 3, 2, 16), 1e-12)


def test_bad_shapes():
    with pytest.raises(ValueError, match="`input1`"):
        bm.tensor_product_simple(np.ones((3, 15)), np.ones((3, 16)))
    with pytest.raises(ValueError, match="`weights`"):
        bm.tensor_product(np.ones((3, 2, 16)), np.ones((3, 16)), np.ones((34, 2, 4)))
    with pytest.raises(ValueError, match="`input1`"):
        bm.tensor_product(np.ones((16,)), np.ones((16,)), np.ones((23, 1, 4)))


# ---- fused SH + TP ---------------------------------------------------------------------------------


def _sh(v):
    return np.asarray(e3nn.spherical_harmonics("0e+1o+2e+3o", v, True, "component").array)


@pytest.mark.parametrize("channels", [None, 3])
def test_fused_simple_matches_unfused(rng, channels):
    n, e = 6, 20
    feats = rng.normal(size=(n, 16) if channels is None else (n, channels, 16))
    v, src = rng.normal(size=(e, 3)), rng.integers(0, n, size=e)
    v *= (0.5 + rng.uniform(size=(e, 1))) / np.linalg.norm(v, axis=1, keepdims=True)  # |v| in [0.5, 1.5]
    out = bm.fused_sh_tp_simple(v, feats, src)
    assert out.shape == (e,) + feats.shape[1:]
    y = _sh(v) if channels is None else np.repeat(_sh(v)[:, None], channels, 1)
    assert_close(out, bm.tensor_product_simple(feats[src], y), 1e-12)
    # Gradients in the vectors (forces) and features: first order by finite differences, second order
    # (Hessian-vector products) against the same function built from e3nn-jax's SH.
    ours = lambda v, f: jnp.sin(bm.fused_sh_tp_simple(v, f, src))  # noqa: E731
    sh = lambda v: e3nn.spherical_harmonics("0e+1o+2e+3o", v, True, "component").array  # noqa: E731
    theirs = lambda v, f: jnp.sin(bm.tensor_product_simple(  # noqa: E731
        f[src], sh(v) if channels is None else jnp.repeat(sh(v)[:, None], channels, 1)))
    check_grads(ours, (v, feats), order=1, modes=("fwd", "rev"))
    g, tv, tf = rng.normal(size=out.shape), rng.normal(size=v.shape), rng.normal(size=feats.shape)
    hvp = lambda fn: jax.jvp(jax.grad(lambda v, f: jnp.sum(g * fn(v, f)), argnums=(0, 1)), (v, feats), (tv, tf))[1]  # noqa: E731
    for a, b in zip(hvp(ours), hvp(theirs)):
        assert_close(a, b, 1e-11)


@pytest.mark.parametrize("deterministic", [False, True])
def test_fused_scatter_matches_unfused(rng, deterministic):
    n, e, c = 7, 25, 2
    feats, v = rng.normal(size=(n, c, 16)), rng.normal(size=(e, 3))
    src, dst = rng.integers(0, n, size=(2, e))
    out = bm.fused_sh_tp_scatter(v, feats, src, dst, n, deterministic=deterministic)
    ref = jax.ops.segment_sum(bm.tensor_product_simple(feats[src], np.repeat(_sh(v)[:, None], c, 1)), dst,
                              num_segments=n)
    assert out.shape == (n, c, 16)
    assert_close(out, ref, 1e-12)
    g = rng.normal(size=out.shape)
    ours = jax.vjp(lambda v, f: bm.fused_sh_tp_scatter(v, f, src, dst, n, deterministic=deterministic), v, feats)[1](g)
    theirs = jax.vjp(lambda v, f: jax.ops.segment_sum(bm.fused_sh_tp_simple(v, f, src), dst, num_segments=n),
                     v, feats)[1](g)
    for a, b in zip(ours, theirs):
        assert_close(a, b, 1e-12)


def test_fused_bad_shapes(rng):
    with pytest.raises(ValueError, match="edge_vectors"):
        bm.fused_sh_tp_simple(np.ones((4, 2)), np.ones((3, 16)), np.zeros(4, np.int32))
    with pytest.raises(ValueError, match="node_features"):
        bm.fused_sh_tp_simple(np.ones((4, 3)), np.ones((3, 15)), np.zeros(4, np.int32))
    with pytest.raises(ValueError, match="source_idx"):
        bm.fused_sh_tp_simple(np.ones((4, 3)), np.ones((3, 16)), np.zeros(5, np.int32))
