"""Nequix (PyPI ``nequix``: an equinox NequIP on e3nn-jax) with its convolution on jaxbatmobile's kernels.

``to_jaxbatmobile(model)`` returns the same model — same parameters, same pytree leaves — whose layers
compute the message passing with :func:`jaxbatmobile.e3nn.message_passing` (one fused gather → tensor
product → radial weights → scatter call, no per-edge messages in memory) and whose spherical harmonics
come from :func:`jaxbatmobile.e3nn.spherical_harmonics`. Everything else is Nequix's own code. Energies,
forces, stress and their parameter gradients equal the e3nn-jax path (tests/test_examples.py).

Nequix must be installed without its heavy dependencies: ``pip install --no-deps nequix==0.4.5`` (it
needs e3nn-jax, equinox and jraph, which the ``test`` extra installs). Importing ``nequix`` sets jax's
default matmul precision to "highest" (Nequix's choice for reproducible fp32 results on TF32 GPUs).
"""

from __future__ import annotations

import dataclasses

import e3nn_jax as e3nn
import equinox as eqx
import jax
import jax.numpy as jnp
from nequix.model import Nequix, NequixConvolution, bessel_basis, polynomial_cutoff

import jaxbatmobile.e3nn as jbe


class JaxbatmobileNequixConvolution(NequixConvolution):
    """``NequixConvolution`` whose message passing is one :func:`jaxbatmobile.e3nn.message_passing` call."""

    deterministic: bool = eqx.field(static=True, default=False)

    def __call__(self, features, species, sh, radial_basis, senders, receivers):
        # The same lines as NequixConvolution.__call__ (nequix 0.4.5), with the e3nn-jax branch
        #   tensor_product(messages[senders], sh, filter_ir_out) * radial_message → scatter_sum
        # replaced by the fused call.
        messages = self.linear_1(features)
        radial_message = jax.vmap(self.radial_mlp)(radial_basis)
        messages_agg = jbe.message_passing(messages, sh, radial_message, senders, receivers,
                                           num_nodes=features.shape[0], filter_ir_out=self.tp_irreps,
                                           deterministic=self.deterministic)
        messages_agg = messages_agg / jnp.sqrt(jax.lax.stop_gradient(self.avg_n_neighbors))
        skip = self.skip(species, features) if self.index_weights else self.skip(features)
        features = self.linear_2(messages_agg) + skip
        if self.layer_norm is not None:
            features = self.layer_norm(features)
        return e3nn.gate(features, even_act=jax.nn.silu, odd_act=jax.nn.tanh, even_gate_act=jax.nn.silu)


class JaxbatmobileNequix(Nequix):
    """``Nequix`` with :class:`JaxbatmobileNequixConvolution` layers and our spherical harmonics."""

    def node_energies(self, displacements, species, senders, receivers):
        # Nequix.node_energies (nequix 0.4.5) with e3nn.spherical_harmonics → jbe.spherical_harmonics.
        features = e3nn.IrrepsArray(e3nn.Irreps(f"{self.n_species}x0e"), jax.nn.one_hot(species, self.n_species))
        square_r_norm = jnp.sum(displacements**2, axis=-1)
        r_norm = jnp.where(square_r_norm == 0.0, 0.0, jnp.sqrt(square_r_norm))
        radial_basis = (bessel_basis(r_norm, self.radial_basis_size, self.cutoff)
                        * polynomial_cutoff(r_norm, self.cutoff, self.radial_polynomial_p)[:, None])
        sh = jbe.spherical_harmonics(e3nn.s2_irreps(self.lmax), displacements, normalize=True,
                                     normalization="component")
        for layer in self.layers:
            features = layer(features, species, sh, radial_basis, senders, receivers)
        node_energies = self.readout(features)
        node_energies = node_energies * jax.lax.stop_gradient(self.scale) + jax.lax.stop_gradient(self.shift)
        node_energies = node_energies + jax.lax.stop_gradient(self.atom_energies[species, None])
        return node_energies.array


def _retyped(module, cls, **fields):
    """``module``'s fields (parameters included, by reference) in an instance of the subclass ``cls``."""
    new = object.__new__(cls)
    for f in dataclasses.fields(cls):
        value = fields[f.name] if f.name in fields else getattr(module, f.name, f.default)
        object.__setattr__(new, f.name, value)
    return new


def to_jaxbatmobile(model: Nequix, *, deterministic: bool = False) -> JaxbatmobileNequix:
    """The same Nequix model (same parameters) running its convolutions on jaxbatmobile's kernels.

    ``deterministic=True`` makes every sum over edges bitwise reproducible (see :func:`jaxbatmobile.conv`).
    """
    if not isinstance(model, Nequix):
        raise TypeError(f"to_jaxbatmobile: expected a nequix.model.Nequix, got {type(model).__name__}")
    layers = [_retyped(layer, JaxbatmobileNequixConvolution, deterministic=bool(deterministic))
              for layer in model.layers]
    return _retyped(model, JaxbatmobileNequix, layers=layers)
