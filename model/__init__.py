"""Pure nn.Module model families behind one registry (`build_model`)."""
from .registry import ModelConfig, build_model, model_config_union, model_spec, parse_model_config, register_model, registered_architectures
# Each family registers its architecture name(s) on import.
from . import hf_integrator, inl, inn, lstm, mamba_stack, transformer  # noqa: F401

__all__ = [
    "ModelConfig",
    "build_model",
    "model_config_union",
    "model_spec",
    "parse_model_config",
    "register_model",
    "registered_architectures",
]
