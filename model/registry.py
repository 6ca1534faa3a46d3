"""Architecture registry: `model.arch` -> (config class, builder).

Each model family registers itself here with a pydantic config class (whose `arch` field
is a `Literal` of its registry name) and a builder. `build_model` accepts the validated
config object or the `model` section as a plain dict.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Callable, Optional, Union

import torch
from pydantic import BaseModel, ConfigDict, Field


class ModelConfig(BaseModel):
    """Fields every architecture shares. Subclasses add their own and narrow `arch`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    arch: str
    # None: taken from the data manifest when the run is configured.
    vocab_size: Optional[int] = Field(default=None, gt=0)

    @property
    def context_length(self) -> Optional[int]:
        """Longest sequence the model accepts, or None when it has no limit (recurrent)."""
        return None


@dataclass(frozen=True)
class ModelSpec:
    name: str
    config_cls: type[ModelConfig]
    builder: Callable[[Any], torch.nn.Module]


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(name: str, config_cls: type[ModelConfig]):
    """Decorator registering a builder (a function or an nn.Module class taking the config)."""

    def wrap(builder):
        if name in _REGISTRY:
            raise ValueError(f"architecture {name!r} is registered twice")
        _REGISTRY[name] = ModelSpec(name, config_cls, builder)
        return builder

    return wrap


def registered_architectures() -> list[str]:
    return sorted(_REGISTRY)


def model_spec(name: str) -> ModelSpec:
    if name not in _REGISTRY:
        raise KeyError(f"unknown model.arch {name!r}; registered: {', '.join(registered_architectures())}")
    return _REGISTRY[name]


def model_config_union():
    """A pydantic type that validates the `model` section into the right config class."""
    classes = tuple(spec.config_cls for spec in _REGISTRY.values())
    if len(classes) == 1:
        return classes[0]
    return Annotated[Union[classes], Field(discriminator="arch")]


def parse_model_config(section: ModelConfig | dict) -> ModelConfig:
    if isinstance(section, ModelConfig):
        return section
    from pydantic import TypeAdapter

    return TypeAdapter(model_config_union()).validate_python(dict(section))


def build_model(section: ModelConfig | dict) -> torch.nn.Module:
    """Build the registered architecture named by `section.arch`."""
    cfg = parse_model_config(section)
    if cfg.vocab_size is None:
        raise ValueError("model.vocab_size is not set (it is filled from the data manifest by `neurograph train`)")
    return model_spec(cfg.arch).builder(cfg)
