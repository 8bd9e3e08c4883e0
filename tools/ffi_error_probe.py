"""How does an error returned by an FFI handler surface? Each case runs in its own process.

Case "ours": our handler's own validation fails (l_max = 9) and returns ffi::Error.
Case "decode": XLA's binding layer rejects the call before our code runs (an attribute of the wrong
type), so a crash there is not ours.
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
for platform in ("cpu", "gpu"):
    for case in ("ours", "decode"):
        env = dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE="false")
        r = subprocess.run([sys.executable, "-c", CASE, platform, case], capture_output=True, text=True, env=env)
        print(f"{platform:4} {case:7} rc={r.returncode}: {r.stdout.strip()}")
