"""Shared test setup: float64 enabled (every op is checked in fp64 against e3nn-jax), helpers."""

import zlib

import jax
import numpy as np
import pytest

jax.config.update("jax_enable_x64", True)


def assert_close(actual, expected, tol):
    """max |actual - expected| <= tol * max |expected| (relative to the output's scale)."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert np.all(np.isfinite(actual)), "non-finite values"
    scale = max(np.max(np.abs(expected), initial=0.0), 1e-300)
    err = np.max(np.abs(actual - expected), initial=0.0)
    assert err <= tol * scale, f"max abs error {err:.3e} > {tol:.1e} * scale {scale:.3e}"


# Relative tolerances against an fp64 oracle, by dtype of the computation under test.
TOL = {np.float32: 2e-6, np.float64: 1e-12}


@pytest.fixture
def rng(request):
    """A fresh generator per test, seeded by the test id (a stable checksum, not Python's salted hash,
    so that a failure reproduces in the next process)."""
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


def has_gpu() -> bool:
    try:
        return len(jax.devices("gpu")) > 0
    except RuntimeError:
        return False
