"""A real model: Nequix (PyPI ``nequix``, NequIP on e3nn-jax) on its own e3nn-jax code vs on our kernels.

Workloads on a periodic fcc Cu cell (rattled, so the forces are not zero), Nequix's default size
(hidden 128x0e+128x1o+128x2e+128x3o, l_max 3, 5 layers, cutoff 5 Å) unless ``small``:

* MD step: energy, forces and stress (what an MD engine calls once per step);
* training step: loss on energies and forces (jaxbatmobile.examples.train.make_loss) and its gradient
  with respect to every parameter (grad of forces: second derivatives of the convolutions).

Every row is checked before timing against the same model and inputs in fp64 (e3nn-jax); the error
column is the distance to that exact result, e3nn-jax's fp32 row included. Nequix sets jax's default
matmul precision to "highest" when imported, so both paths run their matmuls in true fp32.
"""

from __future__ import annotations

import os

import numpy as np

from .common import Report, run_case


def _inputs(repeat: int, cutoff: float, sets: int = 3):
    import ase.build
    from ase.calculators.emt import EMT

    from jaxbatmobile.examples import data

    rng = np.random.default_rng(0)
    graphs = []
    for _ in range(sets):
        atoms = ase.build.bulk("Cu", "fcc", a=3.61, cubic=True).repeat(repeat)
        atoms.positions += 0.05 * rng.normal(size=atoms.positions.shape)
        atoms.calc = EMT()
        atoms.info["energy"] = atoms.get_potential_energy()
        atoms.arrays["forces"] = atoms.get_forces()
        graphs.append(data.graph(atoms, cutoff, {29: 0}))
    n_node, n_edge, n_graph = data.padded_sizes(graphs, 1)
    n_edge = int(n_edge * 1.02) + 64  # room for the other rattles' neighbour counts
    return [data.batch([g], n_node, n_edge, n_graph) for g in graphs], len(graphs[0].nodes["species"]), n_edge


def run(report: Report, *, small: bool = False) -> None:
    try:
        import equinox as eqx
        import jax
        from nequix.model import Nequix

        from jaxbatmobile.examples.nequix import to_jaxbatmobile
        from jaxbatmobile.examples.train import make_loss
    except ImportError as e:
        print(f"# nequix benchmark skipped: {e}")
        return
    hidden = "16x0e+16x1o+16x2e+16x3o" if small else "128x0e+128x1o+128x2e+128x3o"
    layers, cutoff = (2, 4.0) if small else (5, 5.0)
    # The training step runs on a smaller cell: at 864 atoms Nequix's own training step (either path)
    # asks XLA for a 64.7 GiB buffer on an 80 GB H100 (benchmarks/NOTES.md).
    inputs = [_inputs(2, cutoff), _inputs(2, cutoff)] if small else [_inputs(6, cutoff), _inputs(4, cutoff)]
    model = Nequix(jax.random.key(0), n_species=1, lmax=3, cutoff=cutoff, hidden_irreps=hidden, n_layers=layers,
                   avg_n_neighbors=inputs[0][2] / inputs[0][1])
    loss_fn = make_loss(force_weight=10.0)
    # fp32 parameters: with x64 on (the benchmark suite enables it), Nequix would initialise in fp64
    as_f32 = (lambda m: jax.tree.map(lambda a: a.astype("float32") if eqx.is_inexact_array(a) else a, m))
    model = as_f32(model)
    variants = [("e3nn-jax", model), ("jaxbatmobile", to_jaxbatmobile(model)),
                ("jaxbatmobile det", to_jaxbatmobile(model, deterministic=True))]
    if not small:
        try:  # Nequix's own OpenEquivariance path (kernel=True): same key, so the same parameters
            variants.append(("OEQ (Nequix kernel=True)", as_f32(Nequix(
                jax.random.key(0), n_species=1, lmax=3, cutoff=cutoff, hidden_irreps=hidden, n_layers=layers,
                avg_n_neighbors=inputs[0][2] / inputs[0][1], kernel=True))))
        except Exception as e:  # ImportError, or OEQ failing to build its kernels
            print(f"# Nequix OpenEquivariance path skipped: {type(e).__name__}: {str(e).splitlines()[0][:150]}")
    # Every row's reference, e3nn-jax's own among them: the same model (the same fp32-rounded parameter
    # values) and inputs in fp64, so the error column says how far each fp32 path is from the exact
    # result, not from another fp32 path. (The rows run with x64 off, see benchmarks/__main__.py; the
    # reference turns it on for itself.)
    as_f64 = (lambda t: jax.tree.map(lambda a: a.astype("float64") if eqx.is_inexact_array(a) else a, t))
    with jax.enable_x64(True):
        ref_params, ref_static = eqx.partition(as_f64(model), eqx.is_inexact_array)
    ref_fns = (jax.jit(lambda p, g: eqx.combine(p, ref_static)(g)),
               jax.jit(lambda p, g: jax.value_and_grad(lambda p: loss_fn(eqx.combine(p, ref_static), g)[0])(p)))

    def reference_of(k):
        def reference(_, g):
            with jax.enable_x64(True):
                return jax.device_get(ref_fns[k](ref_params, as_f64(g)))
        return reference
    params_of = {}  # label → its parameters (same leaves; the pytree types differ)
    fns = {}
    for label, m in variants:
        params, static = eqx.partition(m, eqx.is_inexact_array)
        params_of[label] = params

        def md(params, g, static=static):
            return eqx.combine(params, static)(g)

        def train_step(params, g, static=static):
            return jax.value_and_grad(lambda p: loss_fn(eqx.combine(p, static), g)[0])(params)

        fns[label] = (jax.jit(md), jax.jit(train_step))
    # JBM_NEQUIX_STEPS=train (or md): one of the two workloads only (a shorter run on the GPU machine)
    steps = os.environ.get("JBM_NEQUIX_STEPS", "md,train").split(",")
    for k, what in enumerate(("MD step (E, F, stress)", "training step (E+F loss, grad)")):
        if ("md", "train")[k] not in steps:
            continue
        batches, n_atoms, n_edges = inputs[k]
        workload = (f"Nequix {'small' if small else 'default'} ({layers} layers, {hidden.split('x')[0]} ch), "
                    f"Cu {n_atoms} atoms / {n_edges} edges: {what}")
        tol = 1e-4
        reference = reference_of(k)
        for label, _ in variants:
            fn = fns[label][k]
            params = params_of[label]
            sets = [(params, g) for g in batches]
            run_case(report, workload=workload, library=label, dtype="float32", fn=fn, input_sets=sets,
                     reference=reference, tol=tol, inner=5, repeats=10)
