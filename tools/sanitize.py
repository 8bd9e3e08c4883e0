"""Every CUDA kernel of jaxbatmobile, forward and derivatives, on small problems: the workload that
tools/sanitize.sh runs under compute-sanitizer (memcheck, racecheck, initcheck, synccheck).

Small sizes keep the instrumented run short, but each case is chosen to reach a kernel or a branch:
channel counts above a warp and not a multiple of one, batches not divisible by a block or a chunk,
graphs with isolated nodes, a hub node with 150 edges, repeated edges, self-loops, out-of-range (dropped) indices and E = 0, shared
and per-row weights, uvu (channelwise kernels) and uvw (generic kernels), fp32 and fp64. Each case is
also compared with the unfused fp64 reference, so a kernel that the sanitizer passes but that computes
garbage under instrumentation still fails. Prints one line per case and "sanitize: all cases ran".
"""

from __future__ import annotations

import argparse
import pickle
import sys
import zlib

import jax
import jax.numpy as jnp
import numpy as np

jax.config.update("jax_enable_x64", True)

import e3nn_jax as e3nn  # noqa: E402

import jaxbatmobile as jb  # noqa: E402
from jaxbatmobile import batmobile  # noqa: E402

rng = np.random.default_rng(0)  # seeded again per part (main), so a part's inputs do not depend on the others
failures = []
MODE = "gpu"  # "cpu": --dry-run (checks this script without a GPU); "reference": --save-reference FILE
REFERENCE = None  # case name -> CPU results, from --reference FILE (computed outside the sanitizer)
SAVED = {}


def arr(shape, dtype):
    return jnp.asarray(rng.normal(size=shape), dtype)


def check(name, f, args, dtype):
    """f(*args) on the device under test against the CPU's results: computed here, or read from a file
    that an unsanitized process wrote (then the sanitized process runs nothing on the CPU: XLA's CPU
    compiler and thread pools inside it are the least work for the tool)."""
    if MODE == "reference":
        SAVED[name] = jax.tree.leaves(on("cpu", f)(*args))
        print(f"ref  {name}", flush=True)
        return
    got = jax.tree.leaves(on(MODE, f)(*args))
    want = REFERENCE[name] if REFERENCE is not None else jax.tree.leaves(on("cpu", f)(*args))
    tol = 1e-4 if dtype == jnp.float32 else 1e-10
    for g, w in zip(got, want, strict=True):
        g, w = np.asarray(g, np.float64), np.asarray(w, np.float64)
        err = np.max(np.abs(g - w), initial=0.0) / max(np.max(np.abs(w), initial=0.0), 1e-30)
        if not np.all(np.isfinite(g)) or err > tol:
            failures.append(name)
            print(f"FAIL {name}: relative error {err:.2e}", flush=True)
            return
    print(f"ok   {name}", flush=True)


def on(platform, f):
    """f jitted and run with its arguments on one platform (the GPU under test, or the CPU reference)."""
    device = jax.devices(platform)[0]
    g = jax.jit(f)
    return lambda *args: jax.device_get(g(*jax.device_put(args, device)))


def sh_cases(degrees=(3, jb.SH_MAX_L), dtypes=(jnp.float32, jnp.float64)):
    """Values, a JVP and a gradient: our three SH kernels (forward, jvp, vjp). Higher derivatives of the
    SH are not kernels of ours: they come from e3nn-jax's formulas (XLA dots, which crashed the sanitized
    process: session 12), and reuse the jvp/vjp kernels on new operands, which these cases already run."""
    for dtype in dtypes:
        for lmax in degrees:
            # a zero-length vector too, set on the host: XLA's scatter (.at[].set) on the GPU copies its
            # operand with a cudaMemcpy that initcheck reported as reading uninitialized memory (session 13)
            vec = jnp.asarray(np.concatenate([np.zeros((1, 3)), rng.normal(size=(36, 3))]), dtype)
            tangent = arr((37, 3), dtype)

            def f(v, t, lmax=lmax):
                sh = lambda v: jb.spherical_harmonics(v, lmax)  # noqa: E731
                energy = lambda v: jnp.sum(jnp.sin(sh(v)) * v[:, :1])  # noqa: E731
                return sh(v), jax.jvp(sh, (v,), (t,))[1], jax.grad(energy)(v)

            name = f"sh l={lmax} {jnp.dtype(dtype).name} fwd/jvp/grad"
            check(name, f, (vec, tangent), dtype)


def sh_part(spec):
    """One SH case alone, e.g. "sh-8-float64": degree 8, fp64 (so that a sanitizer crash can be traced
    to one kernel)."""
    _, lmax, dtype = spec.split("-")
    sh_cases((int(lmax),), (jnp.dtype(dtype),))


def tp_problems():
    # channelwise (MACE-like; 40 channels: more than a warp, not a multiple of one) and fully connected
    i1, i2 = e3nn.Irreps("40x0e+40x1o+8x2e"), e3nn.Irreps("0e+1o+2e+3o")
    out = e3nn.Irreps("40x0e+40x1o+40x2e+8x3o+8x1e")
    uvu = jb.TensorProduct(i1, i2, out, jb.channelwise_instructions(i1, i2, out))
    j1, j2, jo = e3nn.Irreps("5x0e+3x1o"), e3nn.Irreps("2x0e+1o"), e3nn.Irreps("4x0e+3x1o+2x1e")
    uvw = jb.TensorProduct(j1, j2, jo, [(a, b, c, "uvw", True) for a, (_, x) in enumerate(j1)
                                       for b, (_, y) in enumerate(j2) for c, (_, z) in enumerate(jo) if z in x * y])
    # full channelwise problems of the compiled shapes (straight-line forward, csrc/core/tp_uvu_shape.h):
    # MACE-medium's at 40 channels (fewer than a block's threads), MACE-large's at 130 (more)
    sh3 = "0e+1o+2e+3o"
    shaped = {}
    for name, x_irreps, out_irreps in (("shaped-medium", "40x0e+40x1o", "40x0e+40x1o+40x2e"),
                                       ("shaped-large", "130x0e+130x1o+130x2e", "130x0e+130x1o+130x2e+130x3o")):
        shaped[name] = jb.TensorProduct(x_irreps, sh3, out_irreps, jb.channelwise_instructions(x_irreps, sh3, out_irreps))
        assert shaped[name]._tables.uvu_shape != 0, name
    return {"uvu": uvu, "uvw": uvw, **shaped}


def tp_cases(names=None):
    for name, tp in tp_problems().items():
        if names is not None and name not in names:
            continue
        if name == "uvw":
            uvw_cases(tp)
            continue
        for dtype in (jnp.float32, jnp.float64):
            for shared in (False, True):
                batch = 77
                x, y = arr((batch, tp.irreps_in1.dim), dtype), arr((batch, tp.irreps_in2.dim), dtype)
                w = arr((tp.weight_numel,) if shared else (batch, tp.weight_numel), dtype)

                def f(x, y, w, tp=tp):
                    return second_order(lambda x, y, w: tp(x, y, w), x, y, w)

                label = f"tp {name} {jnp.dtype(dtype).name} {'shared' if shared else 'per-row'} w: fwd/grad/grad2"
                check(label, f, (x, y, w), dtype)
                if name.startswith("shaped") and not shared:  # the fused backward without dx as well
                    check(f"tp {name} {jnp.dtype(dtype).name} per-row w: grad in y, w",
                          lambda x, y, w, tp=tp: jax.grad(lambda y, w: jnp.sum(jnp.sin(tp(x, y, w))), argnums=(0, 1))(y, w),
                          (x, y, w), dtype)
        # empty batch
        check(f"tp {name} empty batch", lambda x, y, w, tp=tp: tp(x, y, w),
              (jnp.zeros((0, tp.irreps_in1.dim)), jnp.zeros((0, tp.irreps_in2.dim)), jnp.ones((tp.weight_numel,))),
              jnp.float64)


def uvw_cases(tp):
    """uvw on our kernels without XLA's GEMMs: the TensorProduct call multiplies its outer product by the
    weights with cuBLAS, and compute-sanitizer crashed the process (segfault, no report) at that case under
    every tool (H100, 2026-11-23, session 12). So: the per-row product on the item kernel (route off), and
    the route's outer product alone, each to second order."""
    from jaxbatmobile._src import tensor_product as tpm

    outer = tp._uvw_gemm.outer
    for dtype in (jnp.float32, jnp.float64):
        batch = 77
        x, y = arr((batch, tp.irreps_in1.dim), dtype), arr((batch, tp.irreps_in2.dim), dtype)
        w = arr((batch, tp.weight_numel), dtype)
        empty = jnp.zeros((0,), dtype)

        def item(x, y, w):
            saved, tpm._UVW_GEMM_PER_ROW = tpm._UVW_GEMM_PER_ROW, False
            try:
                return second_order(lambda x, y, w: tp(x, y, w), x, y, w)
            finally:
                tpm._UVW_GEMM_PER_ROW = saved

        def product(x, y, w):
            return second_order(lambda x, y, w: tpm._bind(outer, tpm.SLOT_Z, True, x, y, empty), x, y, w, argnums=(0, 1))

        name = jnp.dtype(dtype).name
        check(f"tp uvw {name} per-row w, item kernel: fwd/grad/grad2", item, (x, y, w), dtype)
        check(f"tp uvw {name} outer product: fwd/grad/grad2", product, (x, y, w), dtype)


def second_order(f, x, y, w, argnums=(0, 1, 2)):
    """f's value, its gradient and the gradient of its gradient's squared norm (x and y), as tp_cases."""
    loss = lambda x, y, w: jnp.sum(jnp.sin(f(x, y, w)))  # noqa: E731
    g = jax.grad(loss, argnums=argnums)(x, y, w)
    gg = jax.grad(lambda x, y, w: sum(jnp.sum(a ** 2) for a in jax.grad(loss, argnums=(0, 1))(x, y, w)),
                  argnums=argnums)(x, y, w)
    return f(x, y, w), g, gg


def graph(nodes, edges, dropped):
    s = rng.integers(0, nodes - 2, size=edges)  # the last two nodes have no edges
    r = rng.integers(0, nodes - 2, size=edges)
    if edges >= 4:
        s[1], r[1] = s[0], r[0]  # a repeated edge
        s[2] = r[2]  # a self-loop
    if edges >= 200:  # a hub (jraph's padding node): its lists are split across blocks on the GPU
        s[-150:] = r[-150:] = nodes - 3
    if dropped and edges >= 6:
        s[3], r[4], s[5] = nodes + 3, -1, -7  # out of range: dropped
    return jnp.asarray(s, jnp.int32), jnp.asarray(r, jnp.int32)


def conv_cases(problems=("uvu", "uvw"), dtypes=(jnp.float32, jnp.float64)):
    for name, tp in tp_problems().items():
        if name not in problems:
            continue
        for dtype in dtypes:
            for det in (False, True):
                for nodes, edges in ((23, 301), (5, 0)):
                    s, r = graph(nodes, edges, dropped=True)
                    x, y = arr((nodes, tp.irreps_in1.dim), dtype), arr((edges, tp.irreps_in2.dim), dtype)
                    w = arr((edges, tp.weight_numel), dtype)

                    def f(x, y, w, tp=tp, s=s, r=r, nodes=nodes, det=det):
                        c = lambda x, y, w: jb.conv(tp, x, y, w, s, r, num_nodes=nodes, deterministic=det)  # noqa
                        loss = lambda x, y, w: jnp.sum(jnp.sin(c(x, y, w)))  # noqa: E731
                        return c(x, y, w), jax.grad(loss, argnums=(0, 1, 2))(x, y, w), jax.grad(
                            lambda x, y, w: jnp.sum(jax.grad(loss, argnums=1)(x, y, w) ** 2), argnums=(0, 1, 2))(x, y, w)

                    label = f"conv {name} {jnp.dtype(dtype).name} {'det' if det else 'atomic'} E={edges}: fwd/grad/grad2"
                    check(label, f, (x, y, w), dtype)


def force_cases(stage, dtypes=(jnp.float32,), dets=(False, True), problem="uvu"):
    """The force-training step on sh_conv (SH in the kernel), or its first stages alone (stage "energy":
    the conv forward; "forces": the gradient in the positions; "step": the loss's gradient in x and w),
    so that a tool crashing on the step can be bisected (parts force-energy, force-forces, force-step)."""
    sh_tp = tp_problems()[problem]
    for dtype in dtypes:
        for det in dets:
            nodes, edges = 19, 211
            s, r = graph(nodes, edges, dropped=True)
            x, pos = arr((nodes, sh_tp.irreps_in1.dim), dtype), arr((nodes, 3), dtype)
            w = arr((edges, sh_tp.weight_numel), dtype)

            def energy(pos, x, w, s=s, r=r, nodes=nodes, det=det):
                vec = pos[jnp.clip(r, 0, nodes - 1)] - pos[jnp.clip(s, 0, nodes - 1)]
                out = jb.sh_conv(sh_tp, x, vec, w * jnp.exp(-jnp.sum(vec ** 2, -1))[:, None], s, r,
                                 num_nodes=nodes, deterministic=det)
                return jnp.sum(jnp.sin(out))

            def run(x, w, pos, energy=energy):
                if stage == "energy":
                    return energy(pos, x, w)
                if stage == "forces":
                    return jax.grad(energy)(pos, x, w)
                loss = lambda x, w: jnp.sum(jax.grad(energy)(pos, x, w) ** 2)  # noqa: E731
                return jax.grad(loss, argnums=(0, 1))(x, w)

            label = f"sh_conv {problem} force {stage} {jnp.dtype(dtype).name} {'det' if det else 'atomic'}"
            check(label, run, (x, w, pos), dtype)


def batmobile_cases():
    """The Batmobile API's own kernel uses. Its weighted tensor_product is a shared-weight uvw problem:
    the outer-product kernel (tp part) then XLA's cuBLAS GEMM, at which the sanitized process crashed
    (session 12); here it runs with the item kernel (the GEMM route off), which it used before."""
    n, c_in, c_out = 45, 33, 17
    batmobile._tp(c_in, c_out)._uvw_gemm = None  # the cached problem of tensor_product below: item kernel
    for dtype in (jnp.float32, jnp.float64):
        x, y = arr((n, 16), dtype), arr((n, 16), dtype)
        xc, wt = arr((n, c_in, 16), dtype), arr((batmobile.get_tp_num_paths(), c_in, c_out), dtype)
        vec, src = arr((n, 3), dtype), jnp.asarray(rng.integers(0, 9, size=n), jnp.int32)
        feats = arr((9, c_in, 16), dtype)

        def f(x, y, xc, wt, vec, feats):
            def loss(x, y, xc, wt, vec, feats):
                return (jnp.sum(jnp.sin(batmobile.tensor_product_simple(x, y)))
                        + jnp.sum(jnp.sin(batmobile.tensor_product(xc, y, wt)))
                        + jnp.sum(jnp.sin(batmobile.fused_sh_tp_simple(vec, feats, src))))
            return jax.grad(loss, argnums=tuple(range(6)))(x, y, xc, wt, vec, feats)

        args = (x, y, xc, wt, vec, feats)
        check(f"batmobile {jnp.dtype(dtype).name} grads", f, args, dtype)


PARTS = {
    "sh": sh_cases,
    "tp": tp_cases,
    "tp-shaped": lambda: tp_cases(("shaped-medium", "shaped-large")),  # the compiled-shape kernels alone
    "conv": lambda: (conv_cases(), force_cases("step", (jnp.float32, jnp.float64))),
    # the compiled shapes' edge kernels (forward; the gradient passes: every set of dx, dy, dw), the
    # conv cases and the force steps (whose second-order calls ask for dx alone and dx+dw) also apart
    "shaped-conv": lambda: (conv_cases(("shaped-medium", "shaped-large")),
                            force_cases("step", (jnp.float32, jnp.float64), problem="shaped-medium")),
    "shaped-conv-only": lambda: conv_cases(("shaped-medium", "shaped-large")),
    "shaped-force": lambda: force_cases("step", (jnp.float32, jnp.float64), problem="shaped-medium"),
    "batmobile": batmobile_cases,
}


def main(parts):
    global rng
    if MODE == "gpu" and not any(d.platform == "gpu" for d in jax.devices()):
        sys.exit("sanitize: no GPU")
    for part in parts:
        rng = np.random.default_rng(zlib.crc32(part.encode()))
        if part.startswith("sh-"):
            sh_part(part)
        elif part.startswith("conv-"):  # one problem and dtype, e.g. "conv-uvu-float32"
            _, problem, dtype = part.split("-")
            conv_cases((problem,), (jnp.dtype(dtype),))
        elif part.startswith("force-"):  # force-STAGE[-DTYPE[-MODE]], e.g. "force-step-float64-det"
            stage, dtype, mode = (part.split("-")[1:] + ["float32", "atomic"])[:3]
            force_cases(stage, (jnp.dtype(dtype),), (mode == "det",))
        else:
            PARTS[part]()
    if failures:
        sys.exit(f"sanitize: {len(failures)} cases differ from the CPU reference: {failures}")
    print("sanitize: all cases ran", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("parts", nargs="?", default="sh,tp,conv,batmobile")
    parser.add_argument("--dry-run", action="store_true", help="the device under test is the CPU")
    parser.add_argument("--save-reference", metavar="FILE", help="only compute the CPU results, into FILE")
    parser.add_argument("--reference", metavar="FILE", help="compare with the CPU results in FILE")
    opts = parser.parse_args()
    MODE = "reference" if opts.save_reference else "cpu" if opts.dry_run else "gpu"
    if opts.reference:
        with open(opts.reference, "rb") as f:
            REFERENCE = pickle.load(f)
    main(opts.parts.split(","))
    if opts.save_reference:
        with open(opts.save_reference, "wb") as f:
            pickle.dump(SAVED, f)
