"""How does an error returned by an FFI handler surface? Each case runs in its own process.

Case "ours": our handler's own validation fails (l_max = 9) and returns ffi::Error.
Case "decode": XLA's binding layer rejects the call before our code runs (an attribute of the wrong
type), so a crash there is not ours.

Each case also runs with JAX_PLATFORMS=cpu (no GPU client in the process). Findings so far: on the CPU
machine (Python 3.12, jax/jaxlib 0.11.2, jax-cuda13-plugin 0.11.2 installed but no GPU, our CPU-only
and CUDA builds alike) every case raises; on the H100 machine (same versions) "ours" crashed with
SIGSEGV on both platforms, "decode" raised. With --gdb (GPU machine: cuda-gdb, which also debugs host
code) a crashing case is re-run under the debugger and its native backtrace printed.
"""

import os
import subprocess
import sys

CASE = r"""
import sys
import jax, jax.numpy as jnp, numpy as np
import jaxbatmobile
from jaxbatmobile._src.sh import sh_p
platform, case = sys.argv[1], sys.argv[2]
v = jax.device_put(jnp.ones((4, 3), jnp.float32), jax.devices(platform)[0])
if case == "ours":
    f = lambda v: sh_p.bind(v, l_max=9, normalize=True, normalization="component")
else:
    f = lambda v: jax.ffi.ffi_call("jbm_sh_fwd", jax.ShapeDtypeStruct((4, 16), jnp.float32))(
        v, l_max=np.int64(3), normalize=np.int32(1), normalization=np.int32(0))
try:
    jax.jit(f)(v).block_until_ready()
    print("NO ERROR")
except Exception as e:
    print("raised", type(e).__name__, str(e)[:160].replace(chr(10), " "))
"""
GDB = "--gdb" in sys.argv
for platform in ("cpu", "gpu"):
    for case in ("ours", "decode"):
        for only_cpu in (False, True):
            if platform == "gpu" and only_cpu:
                continue
            env = dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE="false", PYTHONFAULTHANDLER="1")
            if only_cpu:
                env["JAX_PLATFORMS"] = "cpu"
            cmd = [sys.executable, "-c", CASE, platform, case]
            r = subprocess.run(cmd, capture_output=True, text=True, env=env)
            tag = f"{platform:4} {case:7} {'JAX_PLATFORMS=cpu' if only_cpu else 'all platforms':17}"
            print(f"{tag} rc={r.returncode}: {r.stdout.strip()}")
            if r.returncode != 0:
                print("  stderr tail:", r.stderr.strip()[-1500:].replace(chr(10), chr(10) + "  "))
                if GDB:
                    g = subprocess.run(["cuda-gdb", "-batch", "-ex", "run", "-ex", "bt 40", "--args"] + cmd,
                                       capture_output=True, text=True, env=env)
                    print("  backtrace:", g.stdout[-6000:].replace(chr(10), chr(10) + "  "))
