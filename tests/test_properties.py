"""Property-based tests (hypothesis): random irreps, instructions and graphs on the CPU path, against the
pure e3nn-jax reference — values and a VJP of the TP and of the conv (both modes), fp64."""

import e3nn_jax as e3nn
import jax
import jax.numpy as jnp
import numpy as np
from conftest import assert_close
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import jaxbatmobile as jb
from jaxbatmobile._src import reference

SETTINGS = settings(max_examples=20, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _irreps(data, max_l, max_mul, min_len=1):
    items = data.draw(st.lists(st.tuples(st.integers(1, max_mul), st.integers(0, max_l), st.sampled_from([1, -1])),
                               min_size=min_len, max_size=3))
    return e3nn.Irreps([(mul, (l, p)) for mul, l, p in items])


def _problem(data):
    """A random TensorProduct: in1, in2 (single channels when uvu-only y), outputs reachable by some path,
    a random non-empty subset of the valid (uvu or uvw) instructions, some without weights."""
    in1 = _irreps(data, 3, 3)
    in2 = _irreps(data, 3, 2)
    candidates = sorted({(mul, ir) for mul1, ir1 in in1 for _, ir2 in in2 for ir in ir1 * ir2
                         for mul in {mul1, data.draw(st.integers(1, 3))}}, key=lambda c: (c[1].l, c[1].p, c[0]))
    chosen = data.draw(st.lists(st.sampled_from(candidates), min_size=1, max_size=4, unique=True))
    out = e3nn.Irreps(chosen)
    instructions = []
    for i1, (mul1, ir1) in enumerate(in1):
        for i2, (_, ir2) in enumerate(in2):
            for io, (mulo, iro) in enumerate(out):
                if iro not in ir1 * ir2 or not data.draw(st.booleans()):
                    continue
                mode = "uvu" if mulo == mul1 and data.draw(st.booleans()) else "uvw"
                has_weight = mode == "uvw" or data.draw(st.integers(0, 3)) > 0
                instructions.append((i1, i2, io, mode, has_weight))
    if not instructions:  # at least one path
        for i1, (mul1, ir1) in enumerate(in1):
            for i2, (_, ir2) in enumerate(in2):
                for io, (_, iro) in enumerate(out):
                    if iro in ir1 * ir2 and not instructions:
                        instructions.append((i1, i2, io, "uvw", True))
    return in1, in2, out, instructions


@SETTINGS
@given(data=st.data())
def test_random_tensor_product_matches_e3nn(data):
    in1, in2, out, instructions = _problem(data)
    if not instructions:
        return  # no valid path between the drawn irreps
    tp = jb.TensorProduct(in1, in2, out, instructions)
    rng = np.random.default_rng(data.draw(st.integers(0, 2**31)))
    batch = data.draw(st.integers(0, 5))
    shared = data.draw(st.booleans())
    x, y = rng.normal(size=(batch, in1.dim)), rng.normal(size=(batch, in2.dim))
    w = rng.normal(size=(tp.weight_numel,) if shared else (batch, tp.weight_numel))
    out_ours, vjp = jax.vjp(lambda x, y, w: tp(x, y, w, shared_weights=shared), x, y, w)
    out_ref, vjp_ref = jax.vjp(lambda x, y, w: reference.tensor_product(tp, x, y, w, shared), x, y, w)
    assert_close(out_ours, out_ref, 1e-12)
    g = rng.normal(size=np.shape(out_ref))
    for got, want in zip(vjp(g), vjp_ref(g)):
        assert_close(got, want, 1e-12)


@SETTINGS
@given(data=st.data())
def test_random_graph_conv_matches_unfused(data):
    in1, in2, out, instructions = _problem(data)
    if not instructions:
        return
    tp = jb.TensorProduct(in1, in2, out, instructions)
    rng = np.random.default_rng(data.draw(st.integers(0, 2**31)))
    n = data.draw(st.integers(1, 6))
    e = data.draw(st.integers(0, 20))
    s, r = rng.integers(0, n, e).astype(np.int32), rng.integers(0, n, e).astype(np.int32)
    deterministic = data.draw(st.booleans())
    x, y, w = rng.normal(size=(n, in1.dim)), rng.normal(size=(e, in2.dim)), rng.normal(size=(e, tp.weight_numel))
    f = lambda x, y, w: jb.conv(tp, x, y, w, s, r, num_nodes=n, deterministic=deterministic)  # noqa: E731
    ref = lambda x, y, w: reference.conv(tp, x, y, w, s, r, n, False)  # noqa: E731
    out_ours, vjp = jax.vjp(f, x, y, w)
    out_ref, vjp_ref = jax.vjp(ref, x, y, w)
    assert_close(out_ours, out_ref, 1e-12)
    g = rng.normal(size=np.shape(out_ref))
    for got, want in zip(vjp(g), vjp_ref(g)):
        assert_close(got, want, 1e-12)
