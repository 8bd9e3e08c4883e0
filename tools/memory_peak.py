"""Where the force-training step's device memory goes: XLA's memory analysis of the compiled step and its
largest buffers (from the buffer-assignment dump), for the conv problem of tools/conv_problem.py
(MACE-medium N=5k E=150k on a GPU, a small one on the CPU).

    python tools/memory_peak.py [atomic|det] [top]

GOALS.md: force step peak memory <= 1.9 GB (live-array floor ~1.3 GB); see benchmarks/NOTES.md session 9.
"""
import glob
import os
import re
import sys
import tempfile

DUMP = tempfile.mkdtemp(prefix="jbm_xla_dump_")
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + f" --xla_dump_to={DUMP} --xla_dump_hlo_as_text"
                           " --xla_dump_hlo_module_re=.*loss.*").strip()

import jax  # noqa: E402
from conv_problem import force_loss, pos, w, x  # noqa: E402

det = (sys.argv[1] if len(sys.argv) > 1 else "atomic") == "det"
top = int(sys.argv[2]) if len(sys.argv) > 2 else 12


compiled = jax.jit(jax.grad(force_loss(det), argnums=(0, 1))).lower(x, w, pos).compile()
ma = compiled.memory_analysis()
total = ma.argument_size_in_bytes + ma.output_size_in_bytes + ma.temp_size_in_bytes - ma.alias_size_in_bytes
print(f"{jax.devices()[0].device_kind}, {'det' if det else 'atomic'}: arguments {ma.argument_size_in_bytes / 1e9:.3f} GB, "
      f"outputs {ma.output_size_in_bytes / 1e9:.3f}, temporaries {ma.temp_size_in_bytes / 1e9:.3f}, "
      f"aliased {ma.alias_size_in_bytes / 1e9:.3f} -> {total / 1e9:.3f} GB")

# "allocation N: size S, ..." headers, each followed by " value: <name> ... (size=..,offset=..): shape"
files = sorted(glob.glob(os.path.join(DUMP, "*buffer-assignment.txt")), key=os.path.getsize)
if not files:
    sys.exit(f"no buffer-assignment dump in {DUMP}")
allocations, current = [], None
for line in open(files[-1]):
    head = re.match(r"allocation (\d+): size (\d+)(.*)", line)
    if head:
        current = [int(head.group(2)), head.group(3).strip(" ,:"), []]
        allocations.append(current)
    elif current is not None and line.strip().startswith("value:"):
        current[2].append(line.strip()[len("value:"):].strip())
print(f"largest of {len(allocations)} allocations ({files[-1]}):")
for size, kind, values in sorted(allocations, key=lambda a: -a[0])[:top]:
    print(f"  {size / 1e6:9.1f} MB  {kind[:60]}")
    for v in values[:4]:
        print(f"      {v[:150]}")
