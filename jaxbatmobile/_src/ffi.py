"""Loads the compiled handler modules and registers their XLA FFI targets.

``_cpu`` is always built; ``_cuda`` only when CUDA was found at build time. Both expose the same target
names, so one lowering rule per primitive serves both platforms (jax picks the handler registered for
the platform it compiles for).
"""

from __future__ import annotations

import functools

import jax
from jax.interpreters import mlir

from jaxbatmobile import _cpu

try:
    from jaxbatmobile import _cuda
except ImportError:  # built without CUDA
    _cuda = None

for _name, _capsule in _cpu.registrations().items():
    jax.ffi.register_ffi_target(_name, _capsule, platform="cpu")
if _cuda is not None:
    for _name, _capsule in _cuda.registrations().items():
        jax.ffi.register_ffi_target(_name, _capsule, platform="CUDA")


def export_disabled_checks() -> list:
    """``jax.export`` safety checks to disable for our custom calls: pass as
    ``jax.export.export(f, disabled_checks=jaxbatmobile.export_disabled_checks())``.

    jax only serializes custom calls it guarantees itself; ours are stable by name and operand layout
    within one jaxbatmobile version, and the deserializing process must import jaxbatmobile (which
    registers the targets) before calling the artifact.
    """
    names = set(_cpu.registrations()) | (set(_cuda.registrations()) if _cuda is not None else set())
    return [jax.export.DisabledSafetyCheck.custom_call(name) for name in sorted(names)]


def build_info() -> dict:
    """What this installation was built with: platforms, GPU architectures, limits."""
    info = {"cpu": True, "cuda": _cuda is not None}
    info.update(_cpu.build_info())
    if _cuda is not None:
        info.update(_cuda.build_info())
    return info


def define_impl(primitive) -> None:
    """Eager calls of ``primitive`` run its lowering through a jit compiled once per parameter set."""

    @functools.lru_cache(maxsize=256)
    def compiled(params: tuple):
        return jax.jit(functools.partial(primitive.bind, **dict(params)))

    primitive.def_impl(lambda *args, **params: compiled(tuple(sorted(params.items())))(*args))


def register_lowering(primitive, target: str, attributes) -> None:
    """Lower ``primitive`` to the FFI custom call ``target``, attributes from its parameters."""

    def rule(ctx, *args, **params):
        return jax.ffi.ffi_lowering(target)(ctx, *args, **attributes(**params))

    register_lowering_rule(primitive, rule, target)


def register_lowering_rule(primitive, rule, target: str = "jbm") -> None:
    """Register ``rule`` as the lowering of ``primitive`` on CPU and (if built) CUDA.

    Attributes are numpy scalars, so that their MLIR types match what the C++ handlers bind.
    """
    mlir.register_lowering(primitive, rule, platform="cpu")
    register_cuda_lowering_rule(primitive, rule, target)


def register_cuda_lowering_rule(primitive, rule, target: str = "jbm") -> None:
    """Register ``rule`` as the lowering of ``primitive`` on CUDA, or an error saying CUDA was not built."""
    if _cuda is not None:
        mlir.register_lowering(primitive, rule, platform="cuda")
    else:

        def no_cuda(ctx, *args, **params):
            raise RuntimeError(
                f"jaxbatmobile was built without CUDA, so {target} cannot run on a GPU. Reinstall "
                "with nvcc available (JAXBATMOBILE_CUDA=ON) or place the computation on the CPU."
            )

        mlir.register_lowering(primitive, no_cuda, platform="cuda")
