"""Timing, roofline and reporting shared by every workload.

Timing: each function is jitted, warmed up, checked against the reference, then run ``inner`` times
back to back (asynchronous dispatch keeps the GPU queue full) before one ``block_until_ready``; the
per-call time of that batch is one sample, and we report the median and the spread over ``repeats``
samples. Inputs rotate among several fresh random sets so that repeated calls don't time the cache.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import statistics
import subprocess
import time
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np


def device_kind() -> str:
    d = jax.devices()[0]
    return f"{d.platform}:{getattr(d, 'device_kind', '?')}"


def git_commit() -> str:
    """HEAD of the checkout (JBM_COMMIT overrides it where the tree travels without .git)."""
    if os.environ.get("JBM_COMMIT"):
        return os.environ["JBM_COMMIT"]
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True)
        return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def block(tree):
    return jax.tree_util.tree_map(lambda x: x.block_until_ready(), tree)


# Timing loop of the CPU mode (python -m benchmarks --cpu, a smoke run meant to finish within a minute);
# on a GPU run_case uses time_fn's defaults.
CPU_TIMING = dict(inner=3, repeats=5, max_seconds=1.0)


def time_fn(fn: Callable, input_sets: Sequence[tuple], *, inner: int = 20, repeats: int = 15,
            max_seconds: float = 20.0) -> dict:
    """Median and spread (ms per call) of ``fn(*inputs)``, rotating over ``input_sets``."""
    block(fn(*input_sets[0]))  # compile + first run
    for s in input_sets:  # warm-up
        block(fn(*s))
    samples = []
    t_begin = time.perf_counter()
    for r in range(repeats):
        t0 = time.perf_counter()
        for i in range(inner):
            # Only the last result is kept: the others' buffers go back once computed (20 live results of
            # a large fwd+bwd, e.g. per-row weight gradients, would hold tens of GB).
            out = fn(*input_sets[(r * inner + i) % len(input_sets)])
        block(out)
        samples.append((time.perf_counter() - t0) / inner * 1e3)
        del out
        if time.perf_counter() - t_begin > max_seconds and len(samples) >= 3:
            break
    samples.sort()
    return {
        "median_ms": statistics.median(samples),
        "min_ms": samples[0],
        "p90_ms": samples[min(len(samples) - 1, int(0.9 * len(samples)))],
        "samples": len(samples),
        "inner": inner,
    }


def measure_copy_bandwidth(nbytes: int = 1 << 30) -> float:
    """Device copy rate in bytes/s, counting bytes read plus bytes written."""
    n = nbytes // 4
    sets = [(jnp.full((n,), float(i), jnp.float32),) for i in range(2)]
    t = time_fn(jax.jit(lambda x: x * 1.0000001), sets, inner=10, repeats=10)
    return 2 * n * 4 / (t["median_ms"] * 1e-3)


def rel_error(a, b) -> float:
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


@dataclasses.dataclass
class Row:
    workload: str
    library: str
    dtype: str
    median_ms: float | None = None
    spread: str = ""
    bytes: int | None = None
    flops: int | None = None
    floor_ms: float | None = None
    error: float | None = None
    status: str = "ok"  # ok | WRONG | skipped: why | failed: why
    first_call_ms: float | None = None  # trace + compile + first run (in this process: caches may be warm)
    memory_bytes: int | None = None  # XLA's buffer assignment of the compiled call: arguments + outputs + temps

    @property
    def floor_fraction(self) -> float | None:
        if self.median_ms and self.floor_ms:
            return self.floor_ms / self.median_ms
        return None


class Report:
    def __init__(self, bandwidth: float | None, timing: dict | None = None, stream=None):
        self.rows: list[Row] = []
        # stream: a path that receives each row's JSON line as it is added, so that a run cut short
        # (the GPU's per-call time limit) keeps the rows it finished.
        self.stream = stream
        if stream is not None:
            open(stream, "w").close()
        self.bandwidth = bandwidth
        self.timing = timing or {}  # time_fn arguments for every run_case of this report
        self.meta = {
            "device": device_kind(),
            "jax": jax.__version__,
            "commit": git_commit(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "copy_bandwidth_GBps": None if bandwidth is None else bandwidth / 1e9,
        }

    def floor_ms(self, nbytes: int) -> float | None:
        return None if self.bandwidth is None else nbytes / self.bandwidth * 1e3

    def add(self, row: Row) -> None:
        if row.bytes is not None and row.floor_ms is None:
            row.floor_ms = self.floor_ms(row.bytes)
        self.rows.append(row)
        if self.stream is not None:
            with open(self.stream, "a") as f:
                f.write(self._json(row) + "\n")
        frac = row.floor_fraction
        print(
            f"  {row.workload:<34} {row.library:<12} {row.dtype:<8} "
            + (f"{row.median_ms:9.4f} ms" if row.median_ms is not None else " " * 12)
            + (f"  floor {frac:5.1%}" if frac else "")
            + (f"  err {row.error:.1e}" if row.error is not None else "")
            + (f"  mem {row.memory_bytes / 1e9:.2f} GB" if row.memory_bytes else "")
            + ("" if row.status == "ok" else f"  [{row.status}]"),
            flush=True,
        )

    def _json(self, r: Row) -> str:
        d = dict(self.meta)
        d.update(dataclasses.asdict(r))
        d["floor_fraction"] = r.floor_fraction
        return json.dumps(d)

    def jsonl(self) -> str:
        return "".join(self._json(r) + "\n" for r in self.rows)

    def markdown(self) -> str:
        m = self.meta
        bw = m["copy_bandwidth_GBps"]
        head = (
            f"Device {m['device']}, jax {m['jax']}, commit {m['commit']}, {m['date']}"
            + (f", measured copy bandwidth {bw:.0f} GB/s" if bw else "")
            + ".\n\n| workload | library | dtype | median ms | spread (min–p90) | floor ms | floor/time | rel. error "
            "| memory GB | first call s | status |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|\n"
        )
        body = []
        for r in self.rows:
            f = r.floor_fraction
            body.append(
                f"| {r.workload} | {r.library} | {r.dtype} | "
                + (f"{r.median_ms:.4f}" if r.median_ms is not None else "–")
                + f" | {r.spread} | "
                + (f"{r.floor_ms:.4f}" if r.floor_ms else "–")
                + " | "
                + (f"{f:.0%}" if f else "–")
                + " | "
                + (f"{r.error:.1e}" if r.error is not None else "–")
                + " | "
                + (f"{r.memory_bytes / 1e9:.2f}" if r.memory_bytes else "–")
                + " | "
                + (f"{r.first_call_ms / 1e3:.2f}" if r.first_call_ms is not None else "–")
                + f" | {r.status} |"
            )
        return head + "\n".join(body) + "\n"


def compiled_memory(fn: Callable, inputs: tuple) -> int | None:
    """Device memory XLA assigns to one call of the jitted ``fn``: arguments + outputs + temporaries
    (what the call needs at its peak, independent of other live arrays and allocator caching)."""
    try:
        m = fn.lower(*inputs).compile().memory_analysis()
        return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
                   - m.alias_size_in_bytes)
    except Exception:  # not every backend reports it
        return None


def run_case(report: Report, *, workload: str, library: str, dtype: str, fn: Callable,
             input_sets: Sequence[tuple], reference: Callable | None, tol: float,
             nbytes: int | None = None, flops: int | None = None, **timing) -> None:
    """Check ``fn`` against ``reference`` on the first input set, then time it."""
    row = Row(workload, library, dtype, bytes=nbytes, flops=flops)
    try:
        t0 = time.perf_counter()
        out = block(fn(*input_sets[0]))
        row.first_call_ms = (time.perf_counter() - t0) * 1e3
        # Device memory is a GPU figure; on the CPU the analysis would only compile everything twice.
        row.memory_bytes = compiled_memory(fn, input_sets[0]) if jax.default_backend() == "gpu" else None
        if reference is not None:
            ref = reference(*input_sets[0])
            row.error = max(rel_error(a, b) for a, b in zip(jax.tree_util.tree_leaves(out), jax.tree_util.tree_leaves(ref)))
            if not row.error <= tol:
                row.status = "WRONG"
        t = time_fn(fn, input_sets, **{**report.timing, **timing})
        row.median_ms = t["median_ms"]
        row.spread = f"{t['min_ms']:.4f}–{t['p90_ms']:.4f}"
    except Exception as e:  # a peer failing must not stop the suite
        row.status = f"failed: {type(e).__name__}: {str(e).splitlines()[0][:120]}"
    report.add(row)
