"""The benchmark suite's CPU mode (small sizes): runs end to end, every jaxbatmobile row is checked
against its reference before timing and comes back ok, and the outputs (JSON lines, Markdown, plot)
are written. Timings themselves are not tested here."""

import json
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]  # benchmarks/ is a folder of the repository, not installed


def test_cpu_mode_runs_and_checks_every_row(tmp_path):
    out = tmp_path / "results"
    subprocess.run([sys.executable, "-m", "benchmarks", "--cpu", "--only", "sh,tp,conv", "--out", str(out)],
                   check=True, capture_output=True, text=True, timeout=600, cwd=ROOT)
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines() if line.strip()]
    ours = [r for r in rows if r["library"].startswith("jaxbatmobile")]
    assert len(ours) >= 10
    bad = [(r["workload"], r["library"], r["status"]) for r in ours if r["status"] != "ok"]
    assert not bad, bad
    assert all(r["median_ms"] > 0 and r["error"] is not None for r in ours if r["library"] == "jaxbatmobile")
    assert {r["device"] for r in rows} == {"cpu:cpu"} and all(r["commit"] for r in rows)
    assert "| workload |" in (out / "results.md").read_text()


def test_nequix_rows_checked_against_fp64(tmp_path):
    """The Nequix workloads (small model on the CPU): every row, e3nn-jax's fp32 row included, carries
    its distance to the fp64 run of the same model, and all are within the benchmark's tolerance."""
    pytest.importorskip("nequix")
    out = tmp_path / "results"
    run = subprocess.run([sys.executable, "-m", "benchmarks", "--cpu", "--only", "nequix", "--out", str(out)],
                         check=True, capture_output=True, text=True, timeout=600, cwd=ROOT)
    # nequix importable but not a dependency of its benchmark (equinox, its model module): the benchmark
    # says so and writes no rows (the GPU image of session 13). Anything else without rows fails below.
    skipped = [line for line in run.stdout.splitlines() if line.startswith("# nequix benchmark skipped")]
    if skipped:
        pytest.skip(skipped[0])
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines() if line.strip()]
    assert {r["library"] for r in rows} >= {"e3nn-jax", "jaxbatmobile", "jaxbatmobile det"} and len(rows) == 6, run.stdout
    for r in rows:
        assert r["status"] == "ok" and r["dtype"] == "float32", r
        # fp32 against fp64: not zero (the reference really is fp64), and within the tolerance
        assert 0 < r["error"] < 1e-4, r


def test_plot_of_speedups(tmp_path):
    pytest.importorskip("matplotlib")
    sys.path.insert(0, str(ROOT))
    from benchmarks import plot

    rows = [dict(workload="w", dtype="float32", library=lib, median_ms=ms, status=status)
            for lib, ms, status in (("e3nn-jax", 4.0, "WRONG"), ("jaxbatmobile", 1.0, "ok"), ("peer", 2.0, "FAILED"))]
    path = tmp_path / "r.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert plot.speedups([path]) == {"[float32] w": {"jaxbatmobile": 4.0}}
    plot.plot([path], str(tmp_path / "s.png"))
    assert (tmp_path / "s.png").stat().st_size > 1000


class _FakeOeq:
    """openequivariance's JAX API as the benchmark calls it, computed by the unfused reference, with the
    weights of each row in reversed order (so that a missing or doubled reorder shows as WRONG). It checks
    the glue in benchmarks/oeq_tp.py (argument order, weight order, the deterministic permutation), not
    OEQ itself, which needs a GPU."""

    class TPProblem:
        def __init__(self, irreps_in1, irreps_in2, irreps_out, instructions, *, shared_weights, internal_weights,
                     irrep_normalization, path_normalization, irrep_dtype, weight_dtype):
            assert not internal_weights and irrep_dtype == weight_dtype
            self.args, self.shared = (irreps_in1, irreps_in2, irreps_out, instructions), shared_weights

    class jax:
        class TensorProduct:
            def __init__(self, problem):
                import jaxbatmobile as jb
                self.tp, self.shared = jb.TensorProduct(*problem.args), problem.shared

            def reorder_weights_from_e3nn(self, w, has_batch_dim=True):
                assert has_batch_dim == (not self.shared) and w.ndim == 1 + has_batch_dim
                return w[..., ::-1]

            reorder_weights_to_e3nn = reorder_weights_from_e3nn

            def forward(self, x, y, w):
                import jax
                from jaxbatmobile._src import reference
                with jax.default_matmul_precision("highest"):  # on a GPU, fp32 dots default to TF32
                    return reference.tensor_product(self.tp, x, y, w[..., ::-1], self.shared)

        class TensorProductConv(TensorProduct):
            def __init__(self, problem, deterministic):
                super().__init__(problem)
                self.deterministic = deterministic

            def forward(self, x, y, w, rows, cols, sender_perm=None):
                import jax
                import numpy as np
                from jaxbatmobile._src import reference
                rows, cols = np.asarray(rows), np.asarray(cols)
                assert np.all(np.lexsort((cols, rows)) == np.arange(len(rows))), "OEQ sorts by (row, col)"
                if self.deterministic:  # the permutation lists the edges by (sender, receiver)
                    assert np.all(np.asarray(sender_perm) == np.lexsort((rows, cols)))
                with jax.default_matmul_precision("highest"):
                    return reference.conv(self.tp, x, y, w[..., ::-1], cols, rows, x.shape[0], False)


def test_openequivariance_rows_glue(monkeypatch):
    sys.path.insert(0, str(ROOT))
    from benchmarks import common, conv, oeq_tp, peers, tp

    monkeypatch.setattr(peers, "oeq", _FakeOeq)
    monkeypatch.setattr(oeq_tp, "_available", lambda: True)
    report = common.Report(1e9)
    tp.run(report, batch=32, dtypes=["float32"], scale=32, names=["MACE-medium uvu", "FC uvw"], sets=1)
    conv.run(report, num_nodes=20, num_edges=120, scale=32)
    rows = [r for r in report.rows if r.library.startswith("openequivariance")]
    # TP fwd, fwd+bwd of a per-row and a shared-weight problem; conv 2 modes x 3
    assert len(rows) == 10, [(r.workload, r.library) for r in rows]
    assert all(r.status == "ok" for r in rows), [(r.workload, r.library, r.status) for r in rows]
