"""Per-kernel GPU time of one call, from jax's own profiler (CUPTI; works where ncu cannot attach):
kernel_table(fn, *args) runs fn once under jax.profiler and returns rows (total ms, launches, name) of
the GPU plane's kernels, largest first (tools/profile_nequix.py uses it)."""
import collections
import glob
import re
import tempfile

import jax


def stream_events(trace_dir):
    """The GPU stream lines' events (kernels, memsets, copies) of a jax.profiler trace in trace_dir."""
    data = jax.profiler.ProfileData.from_file(glob.glob(trace_dir + "/**/*.xplane.pb", recursive=True)[0])
    for plane in data.planes:
        if not plane.name.startswith("/device:GPU"):
            continue
        for line in plane.lines:
            if "Stream" not in line.name:  # kernels and copies are on the stream lines
                continue
            yield from line.events


def kernel_table(fn, *args):
    d = tempfile.mkdtemp()
    jax.profiler.start_trace(d)
    jax.block_until_ready(fn(*args))
    jax.profiler.stop_trace()
    totals = collections.defaultdict(lambda: [0.0, 0])
    for ev in stream_events(d):
        name = re.sub(r"jbm::cuda::\(anonymous namespace\)::|jbm::core::", "", ev.name)
        name = name.split(">(")[0] + ">" if ">(" in name else name.split("(")[0]
        totals[name][0] += ev.duration_ns / 1e6
        totals[name][1] += 1
    return sorted(((t, n, name) for name, (t, n) in totals.items()), reverse=True)


def print_table(rows, top=25):
    total = sum(t for t, _, _ in rows)
    print(f"total {total:.3f} ms GPU in {sum(n for _, n, _ in rows)} events")
    for t, n, name in rows[:top]:
        print(f"{t:8.3f} ms {100 * t / max(total, 1e-12):5.1f}% {n:5d}x  {name[:110]}")

