"""The same TP and convolution run by OpenEquivariance's JAX API (``openequivariance.jax``), for the benchmark.

OEQ takes e3nn's layout (mul_ir) for x, y and the output, and its own order of the flat weight vector:
the random weights of the benchmark are OEQ-ordered weights for OEQ's rows (timing does not depend on
the order), and the references, written for e3nn's order, get them through OEQ's
``reorder_weights_to_e3nn`` (and weight gradients back through ``reorder_weights_from_e3nn``). Its convolution takes ``(rows, cols) = (receivers, senders)`` as int32; its deterministic mode
wants edges sorted by (receiver, sender), as its own CoordGraph sorts them, and the permutation listing
them by (sender, receiver). Nothing here runs without a GPU: OEQ
builds its kernels for the device at construction.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from . import peers


def _problem(tp, dtype, shared=False):
    # e3nn-jax's instruction path weights already include the normalization; OEQ (like e3nn) computes the
    # same normalization from the defaults below, so the instructions go without a path weight.
    instructions = [(i.i_in1, i.i_in2, i.i_out, i.connection_mode, i.has_weight) for i in tp.instructions]
    return peers.oeq.TPProblem(str(tp.irreps_in1), str(tp.irreps_in2), str(tp.irreps_out), instructions,
                         shared_weights=shared, internal_weights=False, irrep_normalization="component",
                         path_normalization="element", irrep_dtype=np.dtype(dtype).type,
                         weight_dtype=np.dtype(dtype).type)


class OeqOp:
    """``fn(x, y, w)``: OEQ's op, whose per-row weights are in OEQ's order (the benchmark's random weights
    are taken as such); ``reference`` adapts a reference computation written for e3nn's order."""

    def __init__(self, op, fn, shared=False):
        self.op, self.fn, self.batched_w = op, fn, not shared

    def reference(self, ref, *, weights_at: int = 2, weight_grad: int | None = None):
        """``ref`` called with the weights (argument ``weights_at``) reordered to e3nn's; with ``weight_grad``,
        that output of ``ref`` (a weight gradient, in e3nn's order) is reordered to OEQ's."""
        def run(*args):
            args = list(args)
            args[weights_at] = self.op.reorder_weights_to_e3nn(args[weights_at], has_batch_dim=self.batched_w)
            out = ref(*args)
            if weight_grad is None:
                return out
            out = list(out)
            out[weight_grad] = self.op.reorder_weights_from_e3nn(out[weight_grad], has_batch_dim=self.batched_w)
            return tuple(out)
        return run


def _available() -> bool:
    return peers.oeq is not None and jax.default_backend() == "gpu"


def _build(make):
    """(OeqOp, None), or (None, the status of the rows it would have given)."""
    if not _available():
        return None, "skipped: not available"
    try:
        return make(), None
    except Exception as e:  # OEQ compiles its kernels here: report, don't stop the suite
        return None, f"failed: {type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}"


def tensor_product(tp, dtype: str = "float32", shared: bool = False):
    """``(OeqOp, None)`` for the plain product (``shared``: one weight vector for the batch), or
    ``(None, status)``."""
    def make():
        op = peers.oeq.jax.TensorProduct(_problem(tp, dtype, shared))
        return OeqOp(op, lambda x, y, w: op.forward(x, y, w), shared)
    return _build(make)


def conv(tp, senders, receivers, deterministic: bool = False, dtype: str = "float32"):
    """The convolution ``out[r] = Σ_{e: receivers[e] = r} TP(x[senders[e]], y[e]; w[e])`` (one output row
    per row of x). With ``deterministic`` the edges must already be sorted by (receiver, sender), OEQ's
    own graph order (the benchmark's graphs are). Its deterministic backward came out wrong on the H100
    (relative error ~1; forward right) with receiver-only and with (receiver, sender) order alike."""
    def make():
        op = peers.oeq.jax.TensorProductConv(_problem(tp, dtype), deterministic=deterministic)
        rows, cols = receivers.astype(jnp.int32), senders.astype(jnp.int32)
        # OEQ's transpose permutation: edges by (sender, receiver), as the stable sort by sender of
        # (receiver, sender)-sorted edges gives
        perm = jnp.argsort(cols, stable=True).astype(jnp.int32) if deterministic else None
        return OeqOp(op, lambda x, y, w: op.forward(x, y, w, rows, cols, perm))
    return _build(make)


