"""The `trainer`, `deepspeed` and `tracking` sections of a run configuration."""
from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TrainerConfig(_Section):
    max_steps: int = Field(100, gt=0, description="optimizer steps")
    exit_after: int = Field(0, ge=0, description="checkpoint and stop after this many steps of this invocation "
                                                 "(to fit a job time slot; resume continues); 0: run to max_steps")
    num_processes: int = Field(1, gt=0, description="data-parallel processes on this machine (local launcher)")
    lr: float = Field(3e-4, gt=0, le=1.0)
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="final lr / peak lr for the cosine schedule")
    weight_decay: float = Field(0.1, ge=0)
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = Field(1e-8, gt=0)
    micro_batch_size: int = Field(8, gt=0, description="sequences per process per micro-step")
    grad_accum_steps: int = Field(1, gt=0)
    schedule: Literal["cosine", "onecycle", "constant"] = "cosine"
    warmup_steps: int = Field(0, ge=0, description="linear warm-up steps (cosine and constant schedules)")
    pct_start: float = Field(0.3, gt=0, lt=1, description="rising fraction of the onecycle schedule")
    grad_clip: float = Field(1.0, ge=0, description="max gradient norm, 0 disables clipping")
    precision: Literal["fp32", "bf16"] = "fp32"
    checkpoint_every: int = Field(0, ge=0, description="steps between checkpoints (0: only at the end)")
    keep_checkpoints: int = Field(2, gt=0, description="published checkpoints kept on disk")
    eval_every: int = Field(0, ge=0, description="steps between evaluations (0: only at the end)")
    eval_batches: int = Field(8, gt=0, description="validation micro-batches per process and evaluation")
    log_every: int = Field(10, gt=0)
    seed: int = Field(1234, ge=0)
    run_dir: str = Field("runs/default", min_length=1)


class DeepSpeedConfig(_Section):
    zero_stage: Literal[0, 1, 2, 3] = 2
    offload_optimizer: bool = Field(False, description="ZeRO-Offload of optimizer states to CPU (DeepSpeed CPU Adam)")
    reduce_bucket_size: int = Field(50_000_000, gt=0)


class TrackingConfig(_Section):
    enabled: bool = True
    uri: Optional[str] = Field(None, description="MLflow tracking URI; default: sqlite store in the run directory")
    experiment: str = Field("neurograph", min_length=1)
    run_name: Optional[str] = None
    checkpoint_artifacts_every: int = Field(
        0, ge=0, description="log every k-th checkpoint (and the last of each invocation) as MLflow artifacts "
                             "`checkpoints/<tag>`, so `--resume-from mlflow:RUN_ID` can continue the run; 0: off")
    system_metrics_every: float = Field(10.0, ge=0, description="seconds between system metrics samples "
                                                                "(system/cpu_percent, ...); 0: off")
    retry_interval: float = Field(10.0, gt=0, description="seconds between retries while the server is unreachable")
    finish_timeout: float = Field(60.0, ge=0, description="seconds to wait at the end of a run for an unreachable "
                                                          "server before counting buffered points as dropped")
