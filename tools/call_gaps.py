"""Where a benchmark's per-call time goes beyond its kernels: runs a jitted call 20 times back to back
(as benchmarks/common.py's time_fn does) under jax's profiler and prints, from the GPU stream's
events, the wall time per call, the GPU busy time per call (kernels and memsets) and the idle gaps
between consecutive events, plus the host's dispatch time per call (the loop without waiting). If the
dispatch time per call exceeds the GPU time per call, the loop is host-bound.

    python tools/call_gaps.py [ROLE ...]     roles: conv-fwd (default), conv-fwd-det, tp-fwd
"""
import statistics
import sys
import tempfile
import time

import jax
from kernel_times import stream_events
from problems import inputs

import jaxbatmobile as jb


def calls():
    tp, (s, r), (x, y, w, _) = inputs("mace-medium")
    n = x.shape[0]
    tpl, _, (xl, yl, wl, _) = inputs("mace-large-tp")
    return {
        "conv-fwd": (jax.jit(lambda x, y, w: jb.conv(tp, x, y, w, s, r, num_nodes=n)), (x, y, w)),
        "conv-fwd-det": (jax.jit(lambda x, y, w: jb.conv(tp, x, y, w, s, r, num_nodes=n, deterministic=True)),
                         (x, y, w)),
        "tp-fwd": (jax.jit(tpl), (xl, yl, wl)),
    }


def main():
    n_calls = 20
    table = calls()
    for role in sys.argv[1:] or ["conv-fwd"]:
        f, args = table[role]
        jax.block_until_ready(f(*args))
        jax.block_until_ready(f(*args))
        t0 = time.perf_counter()  # host dispatch: the loop without waiting
        for _ in range(n_calls):
            out = f(*args)
        dispatch_ms = (time.perf_counter() - t0) / n_calls * 1e3
        jax.block_until_ready(out)
        t0 = time.perf_counter()
        for _ in range(n_calls):
            out = f(*args)
        jax.block_until_ready(out)
        wall_ms = (time.perf_counter() - t0) / n_calls * 1e3
        trace_dir = tempfile.mkdtemp()
        jax.profiler.start_trace(trace_dir)
        for _ in range(n_calls):
            out = f(*args)
        jax.block_until_ready(out)
        jax.profiler.stop_trace()
        ev = sorted((e.start_ns, e.start_ns + e.duration_ns, e.name[:60]) for e in stream_events(trace_dir))
        busy = sum(e - s for s, e, _ in ev)
        span = ev[-1][1] - ev[0][0]
        gaps = [max(0, ev[i + 1][0] - ev[i][1]) for i in range(len(ev) - 1)]
        big = sorted(((g, ev[i][2], ev[i + 1][2]) for i, g in enumerate(gaps)), reverse=True)[:3]
        print(f"{role:13} wall {wall_ms:.4f} ms/call (not profiled)  dispatch {dispatch_ms:.4f} ms/call  "
              f"profiled span {span / 1e6 / n_calls:.4f} ms/call  GPU busy {busy / 1e6 / n_calls:.4f} ms/call  "
              f"{len(ev) // n_calls} events/call  median gap {statistics.median(gaps) / 1e3:.1f} us", flush=True)
        for g, a, b in big:
            print(f"    gap {g / 1e3:8.1f} us  after {a}  before {b}")


if __name__ == "__main__":
    main()
