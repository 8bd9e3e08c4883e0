"""jaxbatmobile: fast JAX kernels for equivariant graph neural networks, in e3nn-jax's conventions."""

from jaxbatmobile._src.conv import SH_CONV_MAX_L, conv, sh_conv
from jaxbatmobile._src.ffi import build_info, export_disabled_checks
from jaxbatmobile._src.sh import spherical_harmonics
from jaxbatmobile._src.tables import SH_MAX_L
from jaxbatmobile._src.tensor_product import TensorProduct, channelwise_instructions

__all__ = [
    "build_info",
    "export_disabled_checks",
    "conv",
    "sh_conv",
    "SH_CONV_MAX_L",
    "spherical_harmonics",
    "SH_MAX_L",
    "TensorProduct",
    "channelwise_instructions",
]
__version__ = "0.1.0"
