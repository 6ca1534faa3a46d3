"""The run configuration: typed sections assembled from the packages that own them,
loaded from YAML, overridden from the command line, validated once.

Every error names the field path (e.g. `deepspeed.zero_stage`) and what is allowed, and
is raised before any process starts.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, model_validator

from neurograph.data_pipeline.config import DataConfig
from neurograph.data_pipeline.manifest import load_manifest
from neurograph.model import config_fields, model_config_union, model_spec, registered_architectures
from neurograph.trainer.acceleration import supports_selective
from neurograph.trainer.config import DeepSpeedConfig, TrackingConfig, TrainerConfig


class ConfigError(ValueError):
    """An invalid configuration; the message lists every bad field."""


class RayConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    address: Optional[str] = Field(None, description="Ray cluster address; None: RAY_ADDRESS or a new local instance")
    num_workers: int = Field(2, gt=0, description="Ray Train workers (data-parallel ranks)")
    cpus_per_worker: float = Field(1.0, gt=0, description="CPUs reserved per worker (and its OMP threads)")
    gpus_per_worker: float = Field(0.0, ge=0, description="GPUs per worker; > 0 selects NCCL")
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = Field(
        "PACK", description="how Ray places the workers on nodes")
    max_failures: int = Field(0, ge=-1, description="worker-group restarts Ray Train may make (-1: unlimited)")
    storage_path: Optional[str] = Field(None, description="shared storage for Ray Train checkpoints (path or URI)")


class LauncherConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["local", "ray"] = Field("local", description="local: torchrun on this machine; ray: Ray Train workers")
    ray: RayConfig = RayConfig()


class ExportConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    chat_template: Optional[str] = Field(
        None, description="Jinja chat template of the exported Hugging Face tokenizer (`neurograph export hf`; "
                          "`--chat-template FILE` overrides it), used by `tokenizer.apply_chat_template`")


class NeuroGraphConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    model: model_config_union()  # type: ignore[valid-type]
    data: DataConfig
    trainer: TrainerConfig = TrainerConfig()
    deepspeed: DeepSpeedConfig = DeepSpeedConfig()
    tracking: TrackingConfig = TrackingConfig()
    launcher: LauncherConfig = LauncherConfig()
    export: ExportConfig = ExportConfig()

    @property
    def world_size(self) -> int:
        if self.launcher.kind == "ray":
            return self.launcher.ray.num_workers
        return self.trainer.num_processes

    @model_validator(mode="after")
    def _check_trainer_against_model(self) -> "NeuroGraphConfig":
        if self.trainer.activation_checkpointing == "selective" and not supports_selective(
                model_spec(self.model.arch).builder):
            raise _field_error("trainer.activation_checkpointing", f"selective is not supported by model.arch="
                                                                    f"{self.model.arch}; use none, layers or every_k")
        return self

    @model_validator(mode="after")
    def _check_against_data(self, info: ValidationInfo) -> "NeuroGraphConfig":
        """Cross-section checks: the data directories, vocabulary, sequence length, workers. Validated
        with check_data="if_prepared" (showing a configuration), data not prepared yet skip them."""
        check = (info.context or {}).get("check_data", True)
        manifests = []
        for i, path in enumerate(self.data.sources):
            where = f"data.mixture.{i}.path" if self.data.mixture else "data.path"
            try:
                manifests.append(load_manifest(path))
            except FileNotFoundError as err:
                if check == "if_prepared":
                    return self
                raise _field_error(where, str(err))
            except ValueError as err:
                raise _field_error(where, str(err))
            if manifests[-1]["tokenizer"] != manifests[0]["tokenizer"]:
                raise _field_error(where, f"{path} was prepared with another tokenizer than {self.data.sources[0]}")
        manifest = manifests[0]
        vocab = manifest["tokenizer"]["vocab_size"]
        if self.model.vocab_size is None:
            object.__setattr__(self, "model", dataclasses.replace(self.model, vocab_size=vocab))
        elif self.model.vocab_size < vocab:
            raise _field_error("model.vocab_size", f"{self.model.vocab_size} is smaller than the tokenizer's {vocab}")
        prepared = min(m["seq_len"] for m in manifests)
        if self.data.seq_len > prepared:
            raise _field_error("data.seq_len", f"{self.data.seq_len} exceeds the prepared sequence length {prepared}")
        context = self.model.context_length
        if context is not None and self.data.seq_len > context:
            raise _field_error("data.seq_len", f"{self.data.seq_len} exceeds the model context model.max_seq_len={context}")
        return self


def _field_error(path: str, message: str) -> ValueError:
    return ValueError(f"[{path}] {message}")


def _allowed_keys(loc: tuple) -> list[str]:
    """Field names valid where the unknown key `loc[-1]` was found."""
    cls: type = NeuroGraphConfig
    parts = list(loc[:-1])
    while parts:
        part = parts.pop(0)
        if cls is NeuroGraphConfig and part == "model":
            if not parts:
                return []
            cls = model_spec(parts.pop(0)).config_cls  # the arch tag follows "model" in loc
            continue
        field = config_fields(cls).get(part)
        annotation = field.annotation if field else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        cls = annotation
    return sorted(config_fields(cls))


def format_validation_error(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        loc = tuple(e["loc"])
        msg = e["msg"]
        if msg.startswith("Value error, ["):  # raised by our cross-section checks: carries its own path
            path, _, rest = msg[len("Value error, [") :].partition("] ")
            lines.append(f"  {path}: {rest}")
            continue
        shown = loc
        if loc[:1] == ("model",) and len(loc) > 1 and loc[1] in registered_architectures():
            shown = ("model",) + loc[2:]  # drop the union's arch tag
        path = ".".join(str(p) for p in shown) or "<root>"
        if e["type"] in ("extra_forbidden", "unexpected_keyword_argument"):  # a model section's: the latter
            allowed = _allowed_keys(loc)
            msg = "unknown key" + (f"; allowed keys: {', '.join(allowed)}" if allowed else "")
        elif e["type"] in ("union_tag_invalid", "union_tag_not_found"):
            msg = f"unknown architecture; registered: {', '.join(registered_architectures())}"
            path = "model.arch"
        elif "input" in e and e["type"] not in ("missing",):
            msg = f"{msg} (got {e['input']!r})"
        lines.append(f"  {path}: {msg}")
    return "invalid configuration:\n" + "\n".join(lines)


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply dotted `section.key=value` overrides (values parsed as YAML) to a raw config dict."""
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form section.key=value")
        node = raw
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a section")
            node = child
        node[parts[-1]] = yaml.safe_load(value)
    return raw


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections")
    return raw


def validate_config(raw: dict, check_data: bool | str = True) -> NeuroGraphConfig:
    try:
        return NeuroGraphConfig.model_validate(raw, context={"check_data": check_data})
    except ValidationError as err:
        raise ConfigError(format_validation_error(err)) from None


def load_config(path: str | Path, overrides: list[str] = (), check_data: bool | str = True) -> NeuroGraphConfig:
    """Read a YAML config, apply CLI overrides and validate, against the prepared data (`check_data`
    True) or against them once they exist ("if_prepared"). Relative data and run paths stay relative
    to the current directory; `resolved` makes them absolute."""
    return validate_config(apply_overrides(read_yaml(path), list(overrides)), check_data)


def resolved(cfg: NeuroGraphConfig) -> NeuroGraphConfig:
    """The config with absolute data and run paths, as saved with the run."""
    raw = cfg.model_dump(mode="json")
    raw["data"]["path"] = _absolute(cfg.data.path)
    for source in raw["data"]["mixture"]:
        source["path"] = _absolute(source["path"])
    raw["trainer"]["run_dir"] = str(Path(cfg.trainer.run_dir).resolve())
    return validate_config(raw)


def _absolute(path: str) -> str:
    """A local path made absolute; URLs (s3://...) as they are."""
    return path if "://" in path else str(Path(path).resolve())


def save_config(cfg: NeuroGraphConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
