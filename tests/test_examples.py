"""The Nequix swap (jaxbatmobile.examples.nequix) against Nequix's own e3nn-jax path, and the train job."""

import numpy as np
import pytest

pytest.importorskip("nequix")
pytest.importorskip("ase")

import equinox as eqx  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from conftest import assert_close  # noqa: E402
from nequix.model import Nequix  # noqa: E402

from jaxbatmobile.examples import data, train  # noqa: E402
from jaxbatmobile.examples.nequix import JaxbatmobileNequixConvolution, to_jaxbatmobile  # noqa: E402

CUTOFF = 4.0


@pytest.fixture(scope="module")
def structures():
    mols, crystals = data.molecules_and_crystals()
    table = data.species_table(np.concatenate([a.numbers for a in mols + crystals]))
    batches = {}
    for name, group in (("molecules", mols), ("crystals", crystals)):
        graphs = [data.graph(a, CUTOFF, table) for a in group]
        batches[name] = data.batch(graphs, *data.padded_sizes(graphs, len(graphs)))
    return table, batches


def nequix_model(table, dtype):
    model = Nequix(jax.random.key(3), n_species=len(table), lmax=3, cutoff=CUTOFF, hidden_irreps="8x0e+8x1o+8x2e+8x3o",
                   n_layers=2, radial_mlp_size=16, radial_mlp_layers=2, avg_n_neighbors=10.0, shift=0.1, scale=2.0,
                   atom_energies=list(np.linspace(-1, 1, len(table))))
    return jax.tree.map(lambda a: a.astype(dtype) if eqx.is_inexact_array(a) else a, model)


def test_swap_keeps_the_parameters(structures):
    table, _ = structures
    model = nequix_model(table, jnp.float64)
    ours = to_jaxbatmobile(model, deterministic=True)
    assert all(isinstance(layer, JaxbatmobileNequixConvolution) and layer.deterministic for layer in ours.layers)
    leaves, ours_leaves = jax.tree.leaves(model), jax.tree.leaves(ours)
    assert len(leaves) == len(ours_leaves) and all(a is b for a, b in zip(leaves, ours_leaves))
    with pytest.raises(TypeError, match="Nequix"):
        to_jaxbatmobile(model.layers[0])


@pytest.mark.parametrize("deterministic", [False, True])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("kind", ["molecules", "crystals"])
def test_energies_forces_stress_match_nequix(structures, kind, dtype, deterministic):
    table, batches = structures
    g = data.as_dtype(batches[kind], dtype)
    model = nequix_model(table, dtype)
    expected = eqx.filter_jit(nequix_model(table, np.float64))(data.as_dtype(batches[kind], np.float64))
    theirs = eqx.filter_jit(model)(g)
    ours = eqx.filter_jit(to_jaxbatmobile(model, deterministic=deterministic))(g)
    # fp64: to rounding; fp32: as close to the fp64 result as Nequix's own fp32 path is (1e-5 relative)
    tol = 1e-12 if dtype == np.float64 else 1e-5
    for name, a, b, ref in zip(("energy", "forces", "stress"), ours, theirs, expected):
        if ref is None:
            assert a is None and b is None and kind == "molecules"
            continue
        assert_close(a, ref, tol)
        assert_close(b, ref, tol)  # (the reference check of the check)


def test_force_training_step_matches_nequix(structures):
    table, batches = structures
    g = data.as_dtype(batches["crystals"], np.float64)
    g = g._replace(nodes=dict(g.nodes, forces=jnp.asarray(np.random.default_rng(0).normal(size=g.nodes["positions"].shape))))
    loss = train.make_loss(force_weight=10.0)
    model = nequix_model(table, np.float64)

    @eqx.filter_jit
    def step(m, g):
        return eqx.filter_value_and_grad(lambda m: loss(m, g)[0])(m)

    (l_ours, g_ours), (l_theirs, g_theirs) = step(to_jaxbatmobile(model), g), step(model, g)
    assert_close(l_ours, l_theirs, 1e-12)
    a = jax.tree.leaves(eqx.filter(g_ours, eqx.is_inexact_array))
    b = jax.tree.leaves(eqx.filter(g_theirs, eqx.is_inexact_array))
    assert len(a) == len(b) > 10
    for x, y in zip(a, b):
        assert_close(x, y, 1e-10)


def test_train_job_runs_and_learns(capsys):
    results = train.main(["--structures", "8", "--repeat", "1", "--steps", "12", "--batch", "2",
                          "--hidden", "8x0e+8x1o", "--lmax", "1", "--layers", "1", "--quiet"])
    ours, theirs = results
    assert ours["label"] == "jaxbatmobile" and theirs["label"] == "e3nn-jax"
    assert ours["last_loss"] < ours["first_loss"]
    np.testing.assert_allclose(ours["first_loss"], theirs["first_loss"], rtol=1e-5)
    np.testing.assert_allclose(ours["last_loss"], theirs["last_loss"], rtol=1e-3)
    out = capsys.readouterr().out
    assert "| jaxbatmobile |" in out and "| e3nn-jax |" in out and "meV/Å" in out
