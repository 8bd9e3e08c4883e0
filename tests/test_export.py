"""jax.export of functions using each op: serialized, deserialized, and run (CPU), with the same results
and gradients as the live functions. Our FFI targets are stable custom calls, so an exported artifact
carries them by name (jb.export_disabled_checks()); the installed jaxbatmobile must register them where
the artifact runs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_close

pytest.importorskip("flatbuffers", reason="jax.export serialization needs flatbuffers (the test extra has it)")

import jaxbatmobile as jb

SH3 = "0e+1o+2e+3o"


def _roundtrip(f, *args):
    """Exports for the CPU and, when built with CUDA, for the GPU too (lowering needs no GPU, so CI
    checks the CUDA lowering); the restored artifact runs on the default device."""
    platforms = ["cpu"] + (["cuda"] if jb.build_info()["cuda"] else [])
    exported = jax.export.export(jax.jit(f), platforms=platforms, disabled_checks=jb.export_disabled_checks())(*args)
    assert exported.platforms == tuple(platforms)
    text = exported.mlir_module()
    restored = jax.export.deserialize(exported.serialize())
    return restored, text


def test_export_spherical_harmonics(rng):
    v = rng.normal(size=(7, 3))
    f = lambda v: jb.spherical_harmonics(v, 3)  # noqa: E731
    restored, text = _roundtrip(f, v)
    assert "jbm_sh_fwd" in text
    assert_close(restored.call(v), f(v), 1e-15)


def test_export_tensor_product_and_its_gradient(rng):
    i1, io = "4x0e+4x1o", "4x0e+4x1o+4x2e"
    tp = jb.TensorProduct(i1, SH3, io, jb.channelwise_instructions(i1, SH3, io))
    x, y, w = rng.normal(size=(5, tp.irreps_in1.dim)), rng.normal(size=(5, 16)), rng.normal(size=(5, tp.weight_numel))
    f = lambda x, y, w: jax.grad(lambda *a: (tp(*a) ** 2).sum(), argnums=(0, 1, 2))(x, y, w)  # noqa: E731
    restored, text = _roundtrip(f, x, y, w)
    assert "jbm_tp" in text
    for got, want in zip(restored.call(x, y, w), f(x, y, w)):
        assert_close(got, want, 1e-15)


def test_export_sh_conv_force_step(rng):
    i1, io = "4x0e+4x1o", "4x0e+4x1o+4x2e"
    tp = jb.TensorProduct(i1, SH3, io, jb.channelwise_instructions(i1, SH3, io))
    n, e = 6, 20
    s, r = rng.integers(0, n, e).astype(np.int32), rng.integers(0, n, e).astype(np.int32)
    x, pos, w = rng.normal(size=(n, tp.irreps_in1.dim)), rng.normal(size=(n, 3)), rng.normal(size=(e, tp.weight_numel))

    def loss(x, w, pos):
        energy = lambda pos: jb.sh_conv(tp, x, pos[r] - pos[s], w, s, r, num_nodes=n).sum()  # noqa: E731
        return (jax.grad(energy)(pos) ** 2).sum()

    f = lambda x, w, pos: jax.grad(loss, argnums=(0, 1))(x, w, pos)  # noqa: E731
    restored, text = _roundtrip(f, x, w, pos)
    assert "jbm_tp" in text
    for got, want in zip(restored.call(x, w, pos), f(x, w, pos)):
        assert_close(got, want, 1e-15)
