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
    lr: float = Field(3e-4, gt=0, le=1.0, description="peak learning rate (AdamW)")
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="final lr / peak lr for the cosine schedule")
    weight_decay: float = Field(0.1, ge=0, description="AdamW decoupled weight decay")
    betas: tuple[float, float] = Field((0.9, 0.95), description="AdamW (beta1, beta2)")
    eps: float = Field(1e-8, gt=0, description="AdamW epsilon")
    micro_batch_size: int = Field(8, gt=0, description="sequences per process per micro-step")
    grad_accum_steps: int = Field(1, gt=0, description="micro-batches per optimizer step")
    schedule: Literal["cosine", "onecycle", "constant"] = Field("cosine", description="learning-rate schedule")
    warmup_steps: int = Field(0, ge=0, description="linear warm-up steps (cosine and constant schedules)")
    pct_start: float = Field(0.3, gt=0, lt=1, description="rising fraction of the onecycle schedule")
    grad_clip: float = Field(1.0, ge=0, description="max gradient norm, 0 disables clipping")
    precision: Literal["fp32", "bf16"] = Field("fp32", description="training precision (bf16: DeepSpeed bf16 mode)")
    checkpoint_every: int = Field(0, ge=0, description="steps between checkpoints (0: only at the end)")
    keep_checkpoints: int = Field(2, gt=0, description="published checkpoints kept on disk")
    on_nonfinite: Literal["stop", "skip", "rollback"] = Field(
        "stop", description="a step with a non-finite loss or gradient norm: stop (no checkpoint after it), skip "
                            "(count it and go on while the weights are finite) or rollback (reload the last good "
                            "checkpoint, skip the step's batches)")
    eval_every: int = Field(0, ge=0, description="steps between evaluations (0: only at the end)")
    eval_batches: int = Field(0, ge=0, description="cap on validation micro-batches per process and evaluation "
                                                   "(0: the whole validation split, every token once)")
    log_every: int = Field(10, gt=0, description="steps between progress lines and throughput metrics")
    seed: int = Field(1234, ge=0, description="seed of the weights, the data order and dropout")
    run_dir: str = Field("runs/default", min_length=1, description="run directory: config.yaml, metrics.jsonl, "
                                                                    "checkpoints/, the MLflow store")
    activation_checkpointing: Literal["none", "layers", "every_k", "selective"] = Field(
        "none", description="recompute in backward (torch.utils.checkpoint, non-reentrant): every block (layers), "
                            "every k-th (every_k, k = activation_checkpointing_every), or in every block only the "
                            "parts its family names as cheap to recompute and costly to keep (selective; INL: the "
                            "integrator branch)")
    activation_checkpointing_every: int = Field(2, gt=0, description="k of activation_checkpointing: every_k")
    cpu_allocator: Literal["jemalloc", "system"] = Field(
        "jemalloc", description="memory allocator of CPU training processes (launch/allocator.py): jemalloc, "
                                "preloaded, reuses freed pages step after step; system: the C library's malloc")
    compile: bool = Field(False, description="torch.compile each block of the model (the whole model if it has no "
                                             "block list)")
    peak_tflops: Optional[float] = Field(None, gt=0, description="dense peak TFLOP/s of one device for train/mfu; "
                                                                 "default: the table in trainer/mfu.py (CUDA only)")
    init_weights: Optional[str] = Field(
        None, description="safetensors file of initial model weights for a new run (set by `train --init-from`); "
                          "ignored when resuming")
    preemption_grace_s: float = Field(
        60.0, ge=0, description="seconds a SIGINT/SIGTERM leaves the run to finish its step and checkpoint "
                                "before it is ended at once (0: no limit)")


class DeepSpeedConfig(_Section):
    zero_stage: Literal[0, 1, 2, 3] = Field(2, description="ZeRO partitioning: 1 optimizer states, 2 + gradients, "
                                                          "3 + parameters; 0 off")
    offload_optimizer: bool = Field(False, description="ZeRO-Offload of optimizer states to CPU (DeepSpeed CPU Adam)")
    reduce_bucket_size: int = Field(50_000_000, gt=0, description="elements per gradient reduction bucket")


class TrackingConfig(_Section):
    enabled: bool = Field(True, description="log to MLflow (metrics.jsonl is always written)")
    uri: Optional[str] = Field(None, description="MLflow tracking URI; default: sqlite store in the run directory")
    experiment: str = Field("neurograph", min_length=1, description="MLflow experiment name")
    run_name: Optional[str] = Field(None, description="MLflow run name; None: MLflow picks one")
    checkpoint_artifacts_every: int = Field(
        0, ge=0, description="log every k-th checkpoint (and the last of each invocation) as MLflow artifacts "
                             "`checkpoints/<tag>`, so `--resume-from mlflow:RUN_ID` can continue the run; 0: off")
    system_metrics_every: float = Field(10.0, ge=0, description="seconds between system metrics samples "
                                                                "(system/cpu_percent, ...); 0: off")
    retry_interval: float = Field(10.0, gt=0, description="seconds between retries while the server is unreachable")
    finish_timeout: float = Field(60.0, ge=0, description="seconds to wait at the end of a run for an unreachable "
                                                          "server before counting buffered points as dropped")
