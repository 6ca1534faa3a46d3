"""Architecture registry: `model.arch` -> (config class, builder).

Each model family registers itself here with its config class (whose `arch` field is a
`Literal` of its registry name) and a builder. Config classes are frozen, keyword-only
dataclasses declared with `option` and checked across fields in `__post_init__`: plain Python,
so the family files ship unchanged in a Hugging Face export, where pydantic is absent.
model/schema.py validates the `model` section against them with pydantic.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch


def option(default: Any, description: str = "", **constraints: float) -> Any:
    """A config field: its default, the description the config reference shows and the numeric
    bounds (gt, ge, lt, le) pydantic enforces when the section is validated."""
    return field(default=default, metadata={**constraints, **({"description": description} if description else {})})


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """Fields every architecture shares. Subclasses add their own and narrow `arch`."""

    __pydantic_config__ = {"extra": "forbid"}  # an unknown key in the `model` section is an error

    arch: str
    vocab_size: Optional[int] = option(None, "taken from the data manifest when the run is configured", gt=0)

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
