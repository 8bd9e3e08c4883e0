"""The developer tools that stand in for a kernel's caller: tools/dump_tp_call.py writes one jbm_tp call
for the JAX-free kernel driver (tools/kernel_driver/, for Nsight Compute). Checked here on the CPU: the
written operands and attributes, handed to our FFI target, give the output JAX computed."""

import pathlib
import sys

import jax
import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

import dump_tp_call  # noqa: E402


def _read_call(d):
    attrs, operands, results, expected = {}, [], [], None
    for line in (d / "call.txt").read_text().splitlines():
        kind, *rest = line.split()
        if kind == "attr":
            attrs[rest[0]] = np.int64(rest[1]) if rest[0] in ("num_items", "num_nodes") else np.int32(rest[1])
        elif kind == "operand":
            file, dtype, rank, *dims = rest
            operands.append(np.fromfile(d / file, dtype).reshape([int(x) for x in dims]))
        elif kind == "result":
            dtype, rank, *dims = rest
            results.append(jax.ShapeDtypeStruct(tuple(int(x) for x in dims), dtype))
        else:
            expected = np.fromfile(d / rest[0], results[0].dtype).reshape(results[0].shape)
    return attrs, operands, results, expected


@pytest.mark.parametrize("problem,slot,det", [("small", "z", False), ("small", "z", True), ("small", "x", False),
                                              ("small", "w", False), ("small-tp", "y", False),
                                              ("small-tp", "z", False)])
def test_dumped_call_reproduces_jax_output(tmp_path, problem, slot, det):
    dump_tp_call.main([problem, slot, str(tmp_path)] + (["--det"] if det else []))
    attrs, operands, results, expected = _read_call(tmp_path)
    assert len(operands) == 12 and len(results) == 2
    # on the CPU handler; expected came from JAX's default device (the GPU, where there is one): fp32 tolerance
    operands = jax.device_put(operands, jax.devices("cpu")[0])
    out, _ = jax.jit(lambda *ops: jax.ffi.ffi_call("jbm_tp", results)(*ops, **attrs))(*operands)
    np.testing.assert_allclose(np.asarray(out), expected, rtol=0, atol=1e-5 * np.abs(expected).max())
    assert np.abs(expected).max() > 0
