"""Per-kernel GPU time of one Nequix step (Nequix default size as in benchmarks/nequix.py: 864-atom Cu cell
for the MD step, 256 atoms for the training step), compiled and warmed up first.
Usage: python3 tools/profile_nequix.py [e3nn|atomic|det] [train]"""
import pathlib
import sys

import equinox as eqx
import jax
from nequix.model import Nequix

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # the repository: benchmarks/
from benchmarks.nequix import _inputs  # noqa: E402
from jaxbatmobile.examples.nequix import to_jaxbatmobile  # noqa: E402
from jaxbatmobile.examples.train import make_loss  # noqa: E402
from kernel_times import kernel_table, print_table  # noqa: E402

variant = sys.argv[1] if len(sys.argv) > 1 else "atomic"
train = "train" in sys.argv[2:]
batches, n_atoms, n_edges = _inputs(4 if train else 6, 5.0, sets=1)
model = Nequix(jax.random.key(0), n_species=1, lmax=3, cutoff=5.0, hidden_irreps="128x0e+128x1o+128x2e+128x3o",
               n_layers=5, avg_n_neighbors=n_edges / n_atoms)
model = jax.tree.map(lambda a: a.astype("float32") if eqx.is_inexact_array(a) else a, model)
if variant != "e3nn":
    model = to_jaxbatmobile(model, deterministic=variant == "det")
params, static = eqx.partition(model, eqx.is_inexact_array)
if train:
    loss_fn = make_loss(force_weight=10.0)
    fn = jax.jit(lambda p, g: jax.value_and_grad(lambda p: loss_fn(eqx.combine(p, static), g)[0])(p))
else:
    fn = jax.jit(lambda p, g: eqx.combine(p, static)(g))
g = batches[0]
for _ in range(3):
    jax.block_until_ready(fn(params, g))
print(f"# one {'training' if train else 'MD'} step, {variant}, {n_atoms} atoms / {n_edges} edges")
print_table(kernel_table(fn, params, g))
