"""Optional peer libraries: each is None when it cannot be imported here."""

import os

try:
    import e3nn_jax as e3nn
except ImportError:  # pragma: no cover
    e3nn = None

try:
    import cuequivariance_jax as cue
except Exception:  # not installed, or its kernels don't load on this machine
    cue = None

os.environ.setdefault("OEQ_NOTORCH", "1")  # OEQ's JAX API without its PyTorch half
try:
    import openequivariance as oeq
    import openequivariance.jax  # noqa: F401  (oeq.jax, built on openequivariance_extjax)
except Exception:
    oeq = None
