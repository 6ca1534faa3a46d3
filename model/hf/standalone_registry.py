"""Stand-in for model/registry.py in an exported Hugging Face folder, where pydantic is not
installed. The family modules are shipped unchanged except for their imports: `from pydantic
import Field, model_validator` and `from .registry import ...` both resolve here. A config class
becomes a plain attribute holder: its field defaults, the given values, then its after-validators
(range constraints were checked when the run was trained)."""
from __future__ import annotations

import inspect
from typing import Any, Callable, NamedTuple


def Field(default: Any = None, **constraints: Any) -> Any:  # noqa: N802 (pydantic's name)
    """The field's default; constraints are not re-checked."""
    return default


def model_validator(mode: str = "after") -> Callable:
    """Mark a method to run after the fields are set (pydantic's `mode="after"` validators)."""

    def mark(method: Callable) -> Callable:
        method._after_validator = True
        return method

    return mark


class ModelConfig:
    """Fields are the annotated class attributes of the class and its bases."""

    arch: str
    vocab_size: Any = None

    def __init__(self, **values: Any):
        fields = [name for cls in reversed(type(self).__mro__) for name in inspect.get_annotations(cls)]
        unknown = set(values) - set(fields)
        if unknown:
            raise TypeError(f"{type(self).__name__}: unknown fields {sorted(unknown)}")
        for name in fields:
            setattr(self, name, values[name] if name in values else getattr(type(self), name))
        for cls in type(self).__mro__:
            for method in vars(cls).values():
                if getattr(method, "_after_validator", False):
                    method(self)


class ModelSpec(NamedTuple):
    name: str
    config_cls: type
    builder: Callable


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(name: str, config_cls: type) -> Callable:
    def wrap(builder):
        _REGISTRY[name] = ModelSpec(name, config_cls, builder)
        return builder

    return wrap


def model_spec(name: str) -> ModelSpec:
    if name not in _REGISTRY:
        raise KeyError(f"unknown model.arch {name!r}; this export holds: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]
