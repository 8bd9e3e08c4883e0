"""Spherical harmonics, l_max = 3: ours vs e3nn-jax vs cuequivariance-jax."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

import jaxbatmobile as jb

from .common import Report, Row, run_case
from .peers import cue, e3nn

L_MAX = 3
DIM = (L_MAX + 1) ** 2


def _ours(v):
    return jb.spherical_harmonics(v, L_MAX)


def _e3nn(v):
    return e3nn.spherical_harmonics(e3nn.Irreps.spherical_harmonics(L_MAX), v, True).array


def _cue(v):
    import cuequivariance as cue_base

    rep = cue.RepArray(cue_base.Irreps(cue_base.O3, "1o"), v, cue_base.mul_ir)
    return cue.spherical_harmonics(list(range(L_MAX + 1)), rep, normalize=True).array


def _fwd_bwd(f):
    """Y and dL/dv for L = <Y, g>: one forward and one backward pass."""

    def run(v, g):
        y, vjp = jax.vjp(f, v)
        return y, vjp(g)[0]

    return run


def run(report: Report, sizes, dtypes, sets: int = 3) -> None:
    libs = {"jaxbatmobile": _ours, "e3nn-jax": _e3nn}
    if cue is not None:
        libs["cuequivariance"] = _cue
    for dtype in dtypes:
        itemsize = np.dtype(dtype).itemsize
        tol = 1e-5 if dtype == "float32" else 1e-12
        for n in sizes:
            key = jax.random.split(jax.random.key(n), 2 * sets)
            vs = [jax.random.normal(k, (n, 3), dtype) for k in key[:sets]]
            gs = [jax.random.normal(k, (n, DIM), dtype) for k in key[sets:]]
            fwd_bytes = n * (3 + DIM) * itemsize
            bwd_bytes = n * (3 + DIM + DIM + 3) * itemsize  # read v, g; write Y, dv
            ref64 = lambda v: _e3nn(v.astype(jnp.float64))  # noqa: E731
            for name, f in libs.items():
                run_case(report, workload=f"SH l<=3 N={n:,} fwd", library=name, dtype=dtype,
                         fn=jax.jit(f), input_sets=[(v,) for v in vs], reference=jax.jit(ref64), tol=tol,
                         nbytes=fwd_bytes, flops=None)
            ref_fb = _fwd_bwd(lambda v: _e3nn(v))
            ref_fb64 = lambda v, g: ref_fb(v.astype(jnp.float64), g.astype(jnp.float64))  # noqa: E731
            for name, f in libs.items():
                run_case(report, workload=f"SH l<=3 N={n:,} fwd+bwd", library=name, dtype=dtype,
                         fn=jax.jit(_fwd_bwd(f)), input_sets=list(zip(vs, gs)), reference=ref_fb64,
                         tol=tol * 10, nbytes=bwd_bytes)
    if cue is None:
        report.add(Row("SH", "cuequivariance", "-", status="skipped: not installed"))
