"""The `data` section of a run configuration."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class DataConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str = Field(description="directory written by `neurograph data prepare` (holds manifest.json)")
    seq_len: int = Field(256, gt=0, description="tokens per training sequence (<= the prepared length)")
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes per rank")
    shuffle: bool = Field(True, description="reshuffle shard order every epoch (seeded by trainer.seed)")
