"""Optional peer libraries: each is None when it cannot be imported here."""

try:
    import e3nn_jax as e3nn
except ImportError:  # pragma: no cover
    e3nn = None

try:
    import cuequivariance_jax as cue
except Exception:  # not installed, or its kernels don't load on this machine
    cue = None

try:
    import openequivariance as oeq  # noqa: F401
except Exception:
    oeq = None
