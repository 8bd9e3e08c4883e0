"""Diagnose how a handler error surfaces on each platform (each case in its own process)."""
import subprocess
import sys

CASE = r"""
import jax, jax.numpy as jnp, sys
import jaxbatmobile
from jaxbatmobile._src.sh import sh_p
dev = jax.devices(sys.argv[1])[0]
v = jax.device_put(jnp.ones((4, 3), jnp.float32), dev)
try:
    jax.jit(lambda v: sh_p.bind(v, l_max=9, normalize=True, normalization="component"))(v).block_until_ready()
    print("NO ERROR")
except Exception as e:
    print("raised", type(e).__name__, str(e)[:200])
"""
for platform, flags in [("cpu", ""), ("gpu", ""), ("gpu", "--xla_gpu_enable_command_buffer="),
                        ("gpu", "--xla_gpu_enable_command_buffer= --xla_gpu_graph_min_graph_size=1000000")]:
    env = dict(__import__("os").environ, XLA_FLAGS=flags)
    r = subprocess.run([sys.executable, "-c", CASE, platform], capture_output=True, text=True, env=env)
    print(f"{platform} [{flags}] rc={r.returncode}: {r.stdout.strip()} {r.stderr.strip().splitlines()[-1:] if r.returncode else ''}")
