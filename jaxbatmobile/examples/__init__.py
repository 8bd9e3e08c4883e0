"""Examples on jaxbatmobile's kernels (they need the optional packages of the ``examples`` extra).

* ``jaxbatmobile.examples.data`` — small datasets from ASE's built-in structures and EMT calculator
  (no downloads), as padded ``jraph.GraphsTuple`` batches in Nequix's format.
* ``jaxbatmobile.examples.nequix`` — the Nequix model (PyPI ``nequix``) with its convolution on our
  kernels: ``to_jaxbatmobile(model)``.
* ``python -m jaxbatmobile.examples.train`` — train a small Nequix potential on EMT energies and forces
  with our kernels and with e3nn-jax, side by side.
"""
