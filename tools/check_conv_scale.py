"""The conv's results at benchmark scale against e3nn-jax's unfused computation in fp64, output by output:
the tests run small graphs, where a GPU block takes a few edges; this takes the benchmark's graphs (tens of
edges per block, many blocks per SM, hub receivers), where a kernel's pipelining and races show.

    python tools/check_conv_scale.py [PROBLEM ...]     (tools/problems.py graphs; default mace-medium)

Per case: the largest |ours - reference| over the largest |reference|, for each output (fp32 inputs;
the fp32 roundings alone give ~1e-6 for the forward and the backward, ~1e-5 for the force step, whose
loss differentiates twice). JBM_CHECK_ENVS="A=1,B=2" runs the atomic force step again with each of
those environment variables set (for A/B switches a launcher reads per launch, during kernel work).
JBM_CHECK_REPEATS=k runs each case k times (an intermittent race shows in some runs only), printing the
worst run and where its largest error lies.
"""
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
from problems import PROBLEMS, inputs

import jaxbatmobile as jb
from jaxbatmobile._src import reference

jax.config.update("jax_enable_x64", True)


REPEATS = int(os.environ.get("JBM_CHECK_REPEATS", "1"))


def where(a, b):  # (row, column) of the largest |a - b|, and how many rows differ by > 1e-4 of the scale
    d = np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))
    at = np.unravel_index(np.argmax(d), d.shape)
    bad = d > 1e-4 * max(np.max(np.abs(np.asarray(b, np.float64))), 1e-300)
    return tuple(int(i) for i in at), int(np.sum(np.any(bad.reshape(bad.shape[0], -1), axis=1)))


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


def force_step(conv_of_vectors, s, r, m):  # benchmarks/conv.py's
    def loss(x, w, pos):
        def energy(pos):
            vec = pos[r] - pos[s]
            out = conv_of_vectors(x, vec, w * jnp.exp(-0.01 * jnp.sum(vec**2, -1))[:, None])
            return jnp.sum(out[:, :m] ** 2)
        return jnp.sum(jax.grad(energy)(pos) ** 2)
    return jax.jit(lambda x, w, pos: jax.grad(loss, argnums=(0, 1))(x, w, pos))


worst = 0.0
for name in sys.argv[1:] or ["mace-medium"]:
    tp, (s, r), (x, _, w, dz) = inputs(name)
    n = PROBLEMS[name][2]
    m = tp.irreps_in1[0].mul
    rng = np.random.default_rng(1)
    vec = jnp.asarray(rng.normal(size=(s.shape[0], 3)), jnp.float32)
    pos = jnp.asarray(rng.normal(size=(n, 3)) * 3.0, jnp.float32)
    f64 = lambda *a: tuple(jnp.asarray(b, jnp.float64) for b in a)  # noqa: E731
    sh = lambda v: reference.spherical_harmonics(v, 3, True, "component")  # noqa: E731
    ref_conv = lambda x, v, w: reference.conv(tp, x, sh(v), w, s, r, n, False)  # noqa: E731
    for det in (False, True):
        ours = lambda x, v, w, det=det: jb.sh_conv(tp, x, v, w, s, r, num_nodes=n, deterministic=det)  # noqa: E731
        cases = {"fwd": (jax.jit(ours), jax.jit(ref_conv), (x, vec, w))}
        vjp = lambda f: jax.jit(lambda x, v, w, g: jax.vjp(f, x, v, w)[1](g))  # noqa: E731
        cases["bwd (dx, dvec, dw)"] = (vjp(ours), vjp(ref_conv), (x, vec, w, dz))
        cases["force step (dx, dw)"] = (force_step(ours, s, r, m), force_step(ref_conv, s, r, m), (x, w, pos))
        for case, (f, g, args) in cases.items():
            want = jax.tree.leaves(g(*f64(*args)))
            envs = [e for e in os.environ.get("JBM_CHECK_ENVS", "").split(",") if e]
            for env in [None] + (envs if case.startswith("force") and not det else []):
                if env:
                    os.environ[env.split("=")[0]] = env.split("=", 1)[1]
                runs = []
                for _ in range(REPEATS):
                    got = jax.tree.leaves(f(*args))
                    runs.append(([rel(a, b) for a, b in zip(got, want)], [where(a, b) for a, b in zip(got, want)]))
                if env:
                    os.environ.pop(env.split("=")[0])
                errs, places = max(runs, key=lambda run: max(run[0]))
                bad_runs = sum(max(e) > 1e-4 for e, _ in runs)
                worst = max(worst, *errs)
                label = f"{case}{f' [{env}]' if env else ''}"
                print(f"{name:12} {'det' if det else 'atomic':6} {label:36} "
                      + "  ".join(f"{e:.1e}" for e in errs)
                      + (f"   {bad_runs}/{REPEATS} runs > 1e-4; worst at {places}" if REPEATS > 1 else ""), flush=True)
print(f"worst {worst:.1e}")
