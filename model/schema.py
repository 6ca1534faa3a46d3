"""The `model` section validated with pydantic against the registered config dataclasses
(types, `option` bounds, `__post_init__` checks, no unknown keys) and built."""
from __future__ import annotations

import dataclasses
import typing
from typing import Annotated, Union

import torch
from pydantic import BaseModel, Field, TypeAdapter
from pydantic.fields import FieldInfo

from .registry import _REGISTRY, ModelConfig, model_spec


def model_config_union():
    """A pydantic type that validates the `model` section into the right config class."""
    classes = tuple(spec.config_cls for spec in _REGISTRY.values())
    if len(classes) == 1:
        return classes[0]
    return Annotated[Union[classes], Field(discriminator="arch")]


def parse_model_config(section: ModelConfig | dict) -> ModelConfig:
    if isinstance(section, ModelConfig):
        return section
    return TypeAdapter(model_config_union()).validate_python(dict(section))


def build_model(section: ModelConfig | dict) -> torch.nn.Module:
    """Build the registered architecture named by `section.arch`."""
    cfg = parse_model_config(section)
    if cfg.vocab_size is None:
        raise ValueError("model.vocab_size is not set (it is filled from the data manifest by `neurograph train`)")
    return model_spec(cfg.arch).builder(cfg)


def config_fields(cls: type) -> dict[str, FieldInfo]:
    """The fields of a pydantic model or of a family config dataclass, as pydantic reads them."""
    if issubclass(cls, BaseModel):
        return dict(cls.model_fields)
    hints = typing.get_type_hints(cls)
    return {f.name: FieldInfo.from_annotated_attribute(hints[f.name], f) for f in dataclasses.fields(cls)}
