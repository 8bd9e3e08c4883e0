"""Train a small NequIP potential (Nequix) on EMT energies and forces, on jaxbatmobile and on e3nn-jax.

    python -m jaxbatmobile.examples.train            # a few minutes on a laptop CPU; uses the GPU if any

No downloads: the dataset is built here from ASE's fcc Cu, Al and CuAl cells, strained and rattled,
labelled by ASE's EMT calculator. The same model (same initial parameters, same batches, same Adam
steps) is trained twice: with its convolutions on jaxbatmobile's kernels and on e3nn-jax (Nequix's
own code). Both print a progress bar; the summary gives the test-set energy and force errors and the
time per training step of each (median over the steps after compilation).
"""

from __future__ import annotations

import argparse
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import jraph
import numpy as np
from tqdm import tqdm

from jaxbatmobile.examples import data
from jaxbatmobile.examples.nequix import to_jaxbatmobile


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--structures", type=int, default=48, help="EMT structures (80%% train, 20%% test)")
    p.add_argument("--repeat", type=int, default=2, help="fcc cubic cell repeated r x r x r (4 r^3 atoms)")
    p.add_argument("--steps", type=int, default=150, help="training steps per backend")
    p.add_argument("--batch", type=int, default=4, help="structures per batch")
    p.add_argument("--hidden", default="16x0e+16x1o+16x2e", help="hidden irreps")
    p.add_argument("--lmax", type=int, default=2)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--cutoff", type=float, default=4.5)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--force-weight", type=float, default=10.0)
    p.add_argument("--backends", default="jaxbatmobile,e3nn-jax", help="comma-separated: jaxbatmobile, e3nn-jax")
    p.add_argument("--deterministic", action="store_true", help="bitwise reproducible sums (our conv)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def fit_atom_energies(structures, table):
    """Least-squares energy per species (the model learns the rest)."""
    counts = np.array([[np.sum(a.numbers == z) for z in sorted(table)] for a in structures], float)
    energies = np.array([a.info["energy"] for a in structures])
    return np.linalg.lstsq(counts, energies, rcond=None)[0]


def make_loss(force_weight):
    def loss_fn(model, g):
        energy, forces, _ = model(g)
        graph_mask = jraph.get_graph_padding_mask(g)
        node_mask = jraph.get_node_padding_mask(g)
        n_atoms = jnp.maximum(g.n_node, 1)
        e_err = jnp.where(graph_mask, (energy - g.globals["energy"]) / n_atoms, 0.0)
        f_err = jnp.where(node_mask[:, None], forces - g.nodes["forces"], 0.0)
        e_mse = jnp.sum(e_err**2) / jnp.sum(graph_mask)
        f_mse = jnp.sum(f_err**2) / (3 * jnp.sum(node_mask))
        return e_mse + force_weight * f_mse, (jnp.sum(jnp.abs(e_err)), jnp.sum(jnp.abs(f_err)))
    return loss_fn


def adam(lr, b1=0.9, b2=0.999, eps=1e-8):
    """Adam on the inexact-array leaves of an equinox model (a few lines: no optax needed)."""
    def init(params):
        zeros = jax.tree.map(jnp.zeros_like, params)
        return (zeros, zeros, jnp.zeros((), jnp.int32))

    def update(params, grads, state):
        m, v, t = state
        t = t + 1
        m = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g, m, grads)
        v = jax.tree.map(lambda v, g: b2 * v + (1 - b2) * g * g, v, grads)
        scale = lr * jnp.sqrt(1 - b2**t) / (1 - b1**t)
        params = jax.tree.map(lambda p, m, v: p - scale * m / (jnp.sqrt(v) + eps), params, m, v)
        return params, (m, v, t)
    return init, update


def train(model, batches, test_batches, steps, args, label):
    loss_fn = make_loss(args.force_weight)
    params, static = eqx.partition(model, eqx.is_inexact_array)
    init, update = adam(args.lr)

    @jax.jit
    def step(params, opt_state, g):
        (loss, _), grads = jax.value_and_grad(lambda p: loss_fn(eqx.combine(p, static), g), has_aux=True)(params)
        params, opt_state = update(params, grads, opt_state)
        return params, opt_state, loss

    @jax.jit
    def errors(params, g):
        return loss_fn(eqx.combine(params, static), g)[1]

    opt_state = init(params)
    times, losses = [], []
    bar = tqdm(range(steps), desc=f"{label:>13}", disable=args.quiet, ncols=90)
    t_compile = None
    for i in bar:
        t0 = time.perf_counter()
        params, opt_state, loss = step(params, opt_state, batches[i % len(batches)])
        loss = float(loss)  # waits for the step
        dt = time.perf_counter() - t0
        if i == 0:
            t_compile = dt
        else:
            times.append(dt)
        losses.append(loss)
        bar.set_postfix(loss=f"{loss:.4g}")
    e_abs = f_abs = 0.0
    n_graphs = n_atoms = 0
    for g in test_batches:
        e, f = errors(params, g)
        e_abs, f_abs = e_abs + float(e), f_abs + float(f)
        n_graphs += int(np.sum(np.asarray(jraph.get_graph_padding_mask(g))))
        n_atoms += int(np.sum(np.asarray(jraph.get_node_padding_mask(g))))
    return dict(label=label, step_ms=1e3 * float(np.median(times)) if times else float("nan"),
                compile_s=t_compile, e_mae=1e3 * e_abs / n_graphs, f_mae=1e3 * f_abs / (3 * n_atoms),
                first_loss=losses[0], last_loss=losses[-1])


def main(argv=None):
    args = parse_args(argv)
    from nequix.model import Nequix  # noqa: E402 (sets jax's matmul precision to "highest", Nequix's choice)

    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    for b in backends:
        if b not in ("jaxbatmobile", "e3nn-jax"):
            raise SystemExit(f"unknown backend {b!r}: use jaxbatmobile and/or e3nn-jax")
    print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), jax {jax.__version__}")
    t0 = time.perf_counter()
    structures = data.emt_crystals(args.structures, seed=args.seed, repeat=args.repeat)
    table = data.species_table()
    n_test = max(args.batch, args.structures // 5)
    train_set, test_set = structures[:-n_test], structures[-n_test:]
    graphs = [data.graph(a, args.cutoff, table) for a in structures]
    sizes = data.padded_sizes(graphs, args.batch)
    rng = np.random.default_rng(args.seed)
    train_graphs, test_graphs = graphs[:-n_test], graphs[-n_test:]
    batches = []  # whole shuffled epochs, up to 64 batches; training cycles through them
    while len(batches) < min(args.steps, 64):
        order = rng.permutation(len(train_graphs))
        batches += [data.batch([train_graphs[k] for k in order[i:i + args.batch]], *sizes)
                    for i in range(0, len(order) - args.batch + 1, args.batch)]
    test_batches = [data.batch(test_graphs[i:i + args.batch], *sizes) for i in range(0, len(test_graphs), args.batch)]
    atom_energies = fit_atom_energies(train_set, table)
    forces = np.concatenate([a.arrays["forces"] for a in train_set])
    avg_neighbors = float(np.mean([g.n_edge[0] / g.n_node[0] for g in graphs]))
    print(f"dataset: {len(train_set)} train / {len(test_set)} test EMT structures of {len(structures[0])} atoms "
          f"(Cu, Al, CuAl; built in {time.perf_counter() - t0:.1f} s), {avg_neighbors:.1f} neighbours/atom, "
          f"batches of {args.batch} padded to {sizes[0]} nodes / {sizes[1]} edges")

    model = Nequix(jax.random.key(args.seed), n_species=len(table), lmax=args.lmax, cutoff=args.cutoff,
                   hidden_irreps=args.hidden, n_layers=args.layers, radial_mlp_size=32, radial_mlp_layers=2,
                   avg_n_neighbors=avg_neighbors, atom_energies=list(atom_energies),
                   scale=float(np.sqrt(np.mean(forces**2))))
    print(f"model: Nequix (NequIP), hidden {args.hidden}, l_max {args.lmax}, {args.layers} layers, "
          f"{sum(a.size for a in jax.tree.leaves(eqx.filter(model, eqx.is_inexact_array)))} parameters; "
          f"{args.steps} Adam steps (lr {args.lr}), loss = E/atom MSE + {args.force_weight} x F MSE")
    results = []
    for b in backends:
        m = to_jaxbatmobile(model, deterministic=args.deterministic) if b == "jaxbatmobile" else model
        results.append(train(m, batches, test_batches, args.steps, args, b))
    print()
    print("| backend | time / step | first step (compile) | loss: first → last | test E MAE | test F MAE |")
    print("|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['label']} | {r['step_ms']:.1f} ms | {r['compile_s']:.1f} s | {r['first_loss']:.4g} → "
              f"{r['last_loss']:.4g} | {r['e_mae']:.1f} meV/atom | {r['f_mae']:.1f} meV/Å |")
    if len(results) == 2:
        a, b = results
        print(f"speed-up of jaxbatmobile over e3nn-jax per training step: {b['step_ms'] / a['step_ms']:.2f}x")
    return results


if __name__ == "__main__":
    main()
