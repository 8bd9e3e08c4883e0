"""Spherical harmonics: values, derivatives of every order, transformations and errors vs e3nn-jax."""

import functools
import os
import pathlib
import subprocess
import sys

import e3nn_jax as e3nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import TOL, assert_close, has_gpu
from jax.test_util import check_grads

import jaxbatmobile as jb
from jaxbatmobile._src import tables

NORMALIZATIONS = ["component", "norm", "integral"]


def e3nn_sh(v, l_max, normalize=True, normalization="component"):
    irreps = e3nn.Irreps.spherical_harmonics(l_max)
    return e3nn.spherical_harmonics(irreps, v, normalize, normalization).array


def vectors(rng, shape, dtype=np.float64, scale=1.0):
    return (scale * rng.normal(size=shape + (3,))).astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("normalization", NORMALIZATIONS)
@pytest.mark.parametrize("l_max", range(jb.SH_MAX_L + 1))
@pytest.mark.parametrize("normalize", [True, False])
def test_values_match_e3nn(rng, l_max, normalization, dtype, normalize):
    v = vectors(rng, (7, 11), dtype, scale=1.3)
    out = jb.spherical_harmonics(v, l_max, normalize=normalize, normalization=normalization)
    assert out.shape == (7, 11, (l_max + 1) ** 2) and out.dtype == dtype
    # The oracle always runs in float64 on the same (possibly fp32-rounded) inputs.
    ref = e3nn_sh(v.astype(np.float64), l_max, normalize, normalization)
    assert_close(out, ref, TOL[dtype] * (1 if dtype == np.float64 else 1 + l_max))


@pytest.mark.parametrize("l_max", [0, 1, 3, 8])
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("normalization", NORMALIZATIONS)
def test_jacobians_match_e3nn(rng, l_max, normalize, normalization):
    v = vectors(rng, (5,))
    ours = functools.partial(jb.spherical_harmonics, l_max=l_max, normalize=normalize, normalization=normalization)
    ref = functools.partial(e3nn_sh, l_max=l_max, normalize=normalize, normalization=normalization)
    expected = jax.jacrev(ref)(v)
    assert_close(jax.jacfwd(ours)(v), expected, 1e-12)
    assert_close(jax.jacrev(ours)(v), expected, 1e-12)


@pytest.mark.parametrize("l_max", [2, 4])
@pytest.mark.parametrize("normalize", [True, False])
def test_hessian_matches_e3nn(rng, l_max, normalize):
    v = vectors(rng, (3,))
    g = rng.normal(size=(3, (l_max + 1) ** 2))
    ours = lambda v: jnp.sum(g * jb.spherical_harmonics(v, l_max, normalize=normalize))  # noqa: E731
    ref = lambda v: jnp.sum(g * e3nn_sh(v, l_max, normalize))  # noqa: E731
    assert_close(jax.hessian(ours)(v), jax.hessian(ref)(v), 1e-11)


@pytest.mark.parametrize("l_max", [1, 3, 6])
@pytest.mark.parametrize("normalize", [True, False])
def test_check_grads_order2(rng, l_max, normalize):
    v = vectors(rng, (4,))
    f = functools.partial(jb.spherical_harmonics, l_max=l_max, normalize=normalize, normalization="norm")
    check_grads(f, (v,), order=2, modes=("fwd", "rev"))


def test_third_order(rng):
    v = vectors(rng, (2,))
    g = rng.normal(size=(2, 16))
    ours = lambda v: jnp.sum(g * jb.spherical_harmonics(v, 3))  # noqa: E731
    ref = lambda v: jnp.sum(g * e3nn_sh(v, 3))  # noqa: E731
    third = lambda f: jax.jacfwd(jax.hessian(f))  # noqa: E731
    assert_close(third(ours)(v), third(ref)(v), 1e-10)


def test_force_style_gradient(rng):
    """Training on forces: d/dw of |dE/dv|^2 where E depends linearly on weights w."""
    v = vectors(rng, (9,))
    w = rng.normal(size=(16,))

    def loss(w, sh):
        forces = jax.grad(lambda v: jnp.sum(sh(v) @ w))(v)
        return jnp.sum(forces**2)

    ours = jax.grad(loss)(w, lambda v: jb.spherical_harmonics(v, 3))
    ref = jax.grad(loss)(w, lambda v: e3nn_sh(v, 3))
    assert_close(ours, ref, 1e-12)


@pytest.mark.parametrize("normalization", NORMALIZATIONS)
def test_zero_vector(normalization):
    """Padded edges have zero length: values and derivatives must be finite and equal e3nn-jax's."""
    v = np.zeros((2, 3))
    v[1] = [0.3, -0.2, 0.9]
    out = jb.spherical_harmonics(v, 4, normalization=normalization)
    assert_close(out, e3nn_sh(v, 4, True, normalization), 1e-12)
    assert np.all(np.asarray(out[0, 1:]) == 0)
    ours = lambda v: jb.spherical_harmonics(v, 4, normalization=normalization)  # noqa: E731
    ref = lambda v: e3nn_sh(v, 4, True, normalization)  # noqa: E731
    assert_close(jax.jacrev(ours)(v), jax.jacrev(ref)(v), 1e-12)
    assert_close(jax.jacfwd(ours)(v), jax.jacrev(ref)(v), 1e-12)
    g = np.random.default_rng(1).normal(size=(2, 25))
    s_ours = lambda v: jnp.sum(g * ours(v))  # noqa: E731
    s_ref = lambda v: jnp.sum(g * ref(v))  # noqa: E731
    assert_close(jax.hessian(s_ours)(v), jax.hessian(s_ref)(v), 1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_extreme_lengths(rng, dtype):
    v = vectors(rng, (6,), dtype)
    v[:3] *= 1e-18 if dtype == np.float64 else 1e-15
    v[3:] *= 1e15
    out = jb.spherical_harmonics(v, 3)
    assert_close(out, e3nn_sh(v.astype(np.float64), 3), TOL[dtype] * 4)
    grad = jax.grad(lambda v: jnp.sum(jb.spherical_harmonics(v, 3) ** 2))(v)
    assert np.all(np.isfinite(np.asarray(grad)))


def test_empty():
    v = np.zeros((0, 3), np.float32)
    out = jb.spherical_harmonics(v, 3)
    assert out.shape == (0, 16) and out.dtype == np.float32
    grad = jax.grad(lambda v: jnp.sum(jb.spherical_harmonics(v, 3)))(v)
    assert grad.shape == (0, 3)


def test_scalar_vector():
    v = np.array([0.1, 0.2, -0.4])
    assert_close(jb.spherical_harmonics(v, 2), e3nn_sh(v, 2), 1e-12)


@pytest.mark.parametrize("in_axes", [0, 1, -2])
def test_vmap(rng, in_axes):
    v = vectors(rng, (4, 5))
    f = lambda v: jb.spherical_harmonics(v, 3)  # noqa: E731
    out = jax.vmap(f, in_axes=in_axes)(v)
    expected = np.moveaxis(np.asarray(e3nn_sh(v, 3)), in_axes, 0)
    assert_close(out, expected, 1e-12)


def test_vmap_of_derivatives(rng):
    v = vectors(rng, (6,))
    dvs = vectors(rng, (4, 6))
    gs = rng.normal(size=(4, 6, 16))
    f = lambda v: jb.spherical_harmonics(v, 3)  # noqa: E731
    ref = lambda v: e3nn_sh(v, 3)  # noqa: E731
    jvp = lambda f: jax.vmap(lambda dv: jax.jvp(f, (v,), (dv,))[1])  # noqa: E731
    assert_close(jvp(f)(dvs), jvp(ref)(dvs), 1e-12)
    vjp = lambda f: jax.vmap(lambda g: jax.vjp(f, v)[1](g)[0])  # noqa: E731
    assert_close(vjp(f)(gs), vjp(ref)(gs), 1e-12)
    # Batched primal and tangent together (in_axes on both).
    vs = vectors(rng, (4, 6))
    both = lambda f: jax.vmap(lambda v, dv: jax.jvp(f, (v,), (dv,))[1])  # noqa: E731
    assert_close(both(f)(vs, dvs), both(ref)(vs, dvs), 1e-12)


def test_linear_transpose(rng):
    v = vectors(rng, (5,))
    g = rng.normal(size=(5, 16))
    f = lambda v: jb.spherical_harmonics(v, 3)  # noqa: E731
    jvp_of = lambda dv: jax.jvp(f, (v,), (dv,))[1]  # noqa: E731
    (ct,) = jax.linear_transpose(jvp_of, v)(g)
    assert_close(ct, jax.vjp(lambda v: e3nn_sh(v, 3), v)[1](g)[0], 1e-12)


def test_jit_lowers_to_our_kernels(rng):
    """Never a silent pure-JAX fallback: the lowered module calls our FFI targets."""
    v = vectors(rng, (8,), np.float32)
    f = jax.jit(lambda v: jb.spherical_harmonics(v, 3))
    assert "jbm_sh_fwd" in f.lower(v).as_text()
    grad_text = jax.jit(jax.grad(lambda v: jnp.sum(jb.spherical_harmonics(v, 3) ** 2))).lower(v).as_text()
    assert "jbm_sh_vjp" in grad_text and "jbm_sh_fwd" in grad_text
    assert_close(f(v), e3nn_sh(v.astype(np.float64), 3), TOL[np.float32] * 4)


def test_second_derivatives_use_full_fp32_precision(rng):
    """The Hessian terms come from e3nn-jax's formula, an einsum: its dots must not run at XLA's default
    precision (TF32 on recent GPUs put fp32 force-training gradients 3.6e-4 off on an H100)."""
    import re

    v = vectors(rng, (8,), np.float32)

    def loss(v):
        forces = jax.grad(lambda v: jnp.sum(jnp.sin(jb.spherical_harmonics(v, 3))))(v)
        return jnp.sum(forces**2)

    text = jax.jit(jax.grad(loss)).lower(v).as_text()
    precisions = re.findall(r"precision = \[([A-Z]+), ([A-Z]+)\]", text)
    assert precisions, "expected the reference's dots in the second derivative"
    assert all(p == ("HIGHEST", "HIGHEST") for p in precisions), set(precisions)


def test_bad_inputs():
    v = np.ones((4, 3), np.float32)
    with pytest.raises(ValueError, match="`vectors`"):
        jb.spherical_harmonics(np.ones((4, 2), np.float32), 3)
    with pytest.raises(ValueError, match="`vectors`"):
        jb.spherical_harmonics(np.float32(1.0), 3)
    with pytest.raises(TypeError, match="`vectors`.*int32"):
        jb.spherical_harmonics(np.ones((4, 3), np.int32), 3)
    with pytest.raises(TypeError, match="`vectors`"):
        jb.spherical_harmonics(np.ones((4, 3), np.float16), 3)
    with pytest.raises(ValueError, match="`l_max`"):
        jb.spherical_harmonics(v, -1)
    with pytest.raises(ValueError, match="`l_max`"):
        jb.spherical_harmonics(v, jb.SH_MAX_L + 1)
    with pytest.raises(TypeError, match="`l_max`"):
        jb.spherical_harmonics(v, 2.0)
    with pytest.raises(ValueError, match="`normalization`"):
        jb.spherical_harmonics(v, 2, normalization="unit")


_BAD_CALL = """
import jax, jax.numpy as jnp
from jaxbatmobile._src.sh import sh_p
v = jax.device_put(jnp.ones((4, 3), jnp.float32), jax.devices({platform!r})[0])
try:
    # Bypass the Python checks: the handler sees l_max = 9.
    jax.jit(lambda v: sh_p.bind(v, l_max=9, normalize=True, normalization="component"))(v).block_until_ready()
    print("no error")
except Exception as e:
    print("raised:", e)
"""


@pytest.mark.parametrize("platform", ["cpu"] + (["gpu"] if has_gpu() else []))
def test_handler_rejects_bad_call(platform):
    """The C++ handler validates again and returns an ffi::Error: a Python exception, never a crash.

    Run in a child process, so that a crash fails this test instead of killing the whole suite.
    """
    env = dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE="false")  # the parent may hold most of the GPU
    r = subprocess.run([sys.executable, "-c", _BAD_CALL.format(platform=platform)], capture_output=True, text=True,
                       env=env)
    assert r.returncode == 0, f"the process died (exit {r.returncode}): {r.stderr[-2000:]}"
    assert "raised:" in r.stdout and "l_max of jbm_sh_fwd must be in [0, 8], got 9" in r.stdout, r.stdout


def test_generated_header_is_fresh():
    """csrc/core/generated/ equals what e3nn-jax's symbolic polynomials render to today."""
    root = pathlib.Path(__file__).resolve().parents[1]
    for name, text in tables.render_headers().items():
        assert (root / "csrc" / "core" / "generated" / name).read_text() == text, (
            f"{name} is stale: run python tools/generate_headers.py"
        )


def test_build_info():
    info = jb.build_info()
    assert info["cpu"] is True and info["sh_max_l"] == jb.SH_MAX_L
    if info["cuda"]:
        # The default build (CMakeLists.txt) targets sm_80 and sm_90; tools/gpu_run.sh may build fewer (JBM_ARCH).
        expected = os.environ.get("JBM_ARCH", "80-real;90").replace("-real", "").split(";")
        assert all(arch in info["cuda_archs"] for arch in expected), info["cuda_archs"]


@pytest.mark.skipif(not has_gpu(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cpu_and_gpu_agree(rng, dtype):
    v = vectors(rng, (1000,), dtype)
    g = rng.normal(size=(1000, 25)).astype(dtype)

    def run(device):
        x = jax.device_put(v, device)
        f = lambda v: jb.spherical_harmonics(v, 4)  # noqa: E731
        y, vjp = jax.vjp(f, x)
        return np.asarray(y), np.asarray(vjp(jax.device_put(g, device))[0])

    cpu, gpu = run(jax.devices("cpu")[0]), run(jax.devices("gpu")[0])
    assert_close(gpu[0], cpu[0], TOL[dtype])
    assert_close(gpu[1], cpu[1], TOL[dtype] * 10)
