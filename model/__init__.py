"""Pure nn.Module model families behind one registry (`build_model`).

The families import the kernels they call as sibling modules (`from .selective_scan import ...`),
the layout of an exported Hugging Face folder, where each kernel folder ships flattened beside the
family files (launch/export/hf.py). In the project they are neurograph.kernels' op packages
(kernels/<op>/), registered under this package here, before any family is imported: one module
object each.
"""
import importlib
import sys

KERNEL_MODULES = ("causal_conv1d", "dropout", "integrator", "neuron_attention", "selective_scan")
for _name in KERNEL_MODULES:
    sys.modules[f"{__name__}.{_name}"] = importlib.import_module(f"neurograph.kernels.{_name}")

from .registry import ModelConfig, model_spec, option, register_model, registered_architectures  # noqa: E402
from .schema import build_model, config_fields, model_config_union, parse_model_config  # noqa: E402
# Each family registers its architecture name(s) on import.
from . import hf_integrator, inl, inn, lstm, mamba_stack, transformer  # noqa: E402, F401

__all__ = [
    "KERNEL_MODULES",
    "ModelConfig",
    "build_model",
    "config_fields",
    "model_config_union",
    "model_spec",
    "option",
    "parse_model_config",
    "register_model",
    "registered_architectures",
]
