"""The `data` section of a run configuration."""
from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, model_validator


class MixtureSource(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str = Field(description="a prepared data directory (or URL) to blend in")
    weight: float = Field(gt=0, description="relative share of the training samples drawn from it")


class DataConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    path: Optional[str] = Field(None, description="directory or URL written by `neurograph data prepare` (holds "
                                                  "manifest.json); with a mixture, its first source by default")
    mixture: list[MixtureSource] = Field(
        default_factory=list, description="blend several prepared datasets by weight, e.g. [{path: a, weight: 3}, "
                                          "{path: b, weight: 1}]; validation reads every source's val split")
    seq_len: int = Field(256, gt=0, description="tokens per training sequence (<= the prepared length)")
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes per rank")
    shuffle: bool = Field(True, description="shuffle the sample order every epoch (seeded by trainer.seed)")
    shuffle_window: int = Field(8, gt=0, description="shards whose samples are shuffled together (larger: better "
                                                     "mixing, more shards held in memory per reader)")
    on_corrupt: Literal["fail", "skip"] = Field(
        "fail", description="a shard failing its checks: fail (stop, naming it) or skip (verify all shards at start "
                            "and leave the bad ones out, counted in data/skipped_shards)")

    @model_validator(mode="after")
    def _path_or_mixture(self) -> "DataConfig":
        if self.path is None and not self.mixture:
            raise ValueError("set data.path or data.mixture")
        if self.path is None:
            object.__setattr__(self, "path", self.mixture[0].path)
        return self

    @property
    def sources(self) -> list[str]:
        """Every prepared directory this section reads."""
        return [m.path for m in self.mixture] or [self.path]
