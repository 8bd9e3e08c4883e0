"""Structures with energies and forces from ASE alone (built-in lattices and molecules, EMT calculator).

Graphs follow Nequix's format (``nequix.data.preprocess_graph``): ``senders`` are the neighbours j,
``receivers`` the centres i, the edge vector is ``positions[j] - positions[i] + shift @ cell``.
"""

from __future__ import annotations

import ase
import ase.build
import jraph
import numpy as np
from ase.calculators.emt import EMT
from ase.neighborlist import neighbor_list

# Elements of ASE's EMT potential that the datasets below use.
SPECIES = (13, 29)  # Al, Cu


def species_table(atomic_numbers=SPECIES) -> dict:
    """Atomic number → species index (0, 1, ...), in increasing atomic number (Nequix's convention)."""
    return {int(z): i for i, z in enumerate(sorted(set(int(z) for z in atomic_numbers)))}


def emt_crystals(num: int, seed: int = 0, repeat: int = 2, rattle: float = 0.08, strain: float = 0.03):
    """``num`` distorted fcc Cu, Al and random CuAl cells (``4 * repeat**3`` atoms) labelled by EMT."""
    rng = np.random.default_rng(seed)
    structures = []
    for n in range(num):
        kind = n % 3
        a = (3.61, 4.05, 3.85)[kind]
        atoms = ase.build.bulk("Cu" if kind != 1 else "Al", "fcc", a=a, cubic=True).repeat(repeat)
        if kind == 2:  # random alloy
            numbers = atoms.get_atomic_numbers()
            numbers[rng.random(len(atoms)) < 0.5] = 13
            atoms.set_atomic_numbers(numbers)
        eps = strain * rng.uniform(-1, 1, (3, 3))
        atoms.set_cell(atoms.cell[:] @ (np.eye(3) + (eps + eps.T) / 2), scale_atoms=True)
        atoms.positions += rattle * rng.normal(size=atoms.positions.shape)
        atoms.calc = EMT()
        atoms.info["energy"] = atoms.get_potential_energy()
        atoms.arrays["forces"] = atoms.get_forces()
        structures.append(atoms)
    return structures


def molecules_and_crystals():
    """A few ASE-built molecules (no cell) and crystals (periodic) for model comparisons."""
    mols = [ase.build.molecule(name) for name in ("H2O", "CH4", "C6H6", "CH3CH2OH")]
    crystals = [ase.build.bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2), ase.build.bulk("Si", "diamond", a=5.43),
                ase.build.bulk("NaCl", "rocksalt", a=5.64)]
    rng = np.random.default_rng(1)
    for atoms in crystals:
        atoms.positions += 0.05 * rng.normal(size=atoms.positions.shape)
    return mols, crystals


def graph(atoms: ase.Atoms, cutoff: float, table: dict | None = None) -> jraph.GraphsTuple:
    """One structure as a Nequix ``GraphsTuple`` (cell None for a molecule; EMT labels when present)."""
    periodic = bool(atoms.pbc.all())
    i, j, shift = neighbor_list("ijS", atoms, cutoff)
    n = len(atoms)
    forces = atoms.arrays.get("forces", np.zeros((n, 3)))
    return jraph.GraphsTuple(
        n_node=np.array([n], np.int32),
        n_edge=np.array([len(i)], np.int32),
        nodes={"species": np.array([(table or species_table())[int(z)] for z in atoms.numbers], np.int32),
               "positions": atoms.positions.astype(np.float32),
               "forces": forces.astype(np.float32)},
        edges={"shifts": shift.astype(np.float32)},
        senders=j.astype(np.int32),
        receivers=i.astype(np.int32),
        globals={"cell": atoms.cell[:].astype(np.float32)[None] if periodic else None,
                 "energy": np.array([atoms.info.get("energy", 0.0)], np.float32)},
    )


def batch(graphs, n_node: int, n_edge: int, n_graph: int) -> jraph.GraphsTuple:
    """Batch graphs and pad to fixed sizes (one compiled step for every batch)."""
    g = jraph.batch(list(graphs))
    return jraph.pad_with_graphs(g, n_node=n_node, n_edge=n_edge, n_graph=n_graph)


def padded_sizes(graphs, per_batch: int):
    """Node, edge and graph counts that fit any ``per_batch`` of ``graphs`` (plus the padding graph)."""
    nodes = sorted((int(g.n_node[0]) for g in graphs), reverse=True)
    edges = sorted((int(g.n_edge[0]) for g in graphs), reverse=True)
    return sum(nodes[:per_batch]) + 1, sum(edges[:per_batch]), per_batch + 1


def as_dtype(g: jraph.GraphsTuple, dtype) -> jraph.GraphsTuple:
    """Cast the float leaves (positions, shifts, cell, labels) to ``dtype``."""
    import jax

    return jax.tree.map(lambda a: a.astype(dtype) if np.issubdtype(np.asarray(a).dtype, np.floating) else a, g)
