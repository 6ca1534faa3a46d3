"""Model and hardware FLOP utilization (MFU, HFU) from a table of dense peak rates.

    MFU = model FLOPs/s / (peak FLOP/s x devices)          model FLOPs: `flops_per_token` x tokens/s
    HFU = MFU x (1 + recomputed forward share / 3)          activation checkpointing re-runs forwards

Peaks are the vendors' dense (no sparsity) tensor-core rates for bf16 and the plain fp32
rates (fp32 matmuls do not use TF32 unless a run enables it). The device is detected from
`torch.cuda.get_device_name`; `trainer.peak_tflops` overrides the table. Without a CUDA
device and without an override there is no peak to divide by, and no MFU is reported.
"""
from __future__ import annotations

import logging
from typing import Optional

import torch

log = logging.getLogger("neurograph.trainer")

# (substring of torch.cuda.get_device_name, {precision: dense peak TFLOP/s, "hbm": memory bandwidth TB/s,
# "link": GPU-to-GPU bandwidth GB/s per direction (NVLink; PCIe for PCIe cards)}); first match wins,
# so the more specific names come first. The bandwidths are the datasheets' (`neurograph plan`'s roofline).
PEAK_TFLOPS: tuple[tuple[str, dict[str, float]], ...] = (
    ("H200", {"bf16": 989.0, "fp32": 67.0, "hbm": 4.8, "link": 450.0}),
    ("H100 PCIe", {"bf16": 756.0, "fp32": 51.0, "hbm": 2.0, "link": 64.0}),
    ("H100 NVL", {"bf16": 835.0, "fp32": 60.0, "hbm": 3.9, "link": 300.0}),
    ("H100", {"bf16": 989.0, "fp32": 67.0, "hbm": 3.35, "link": 450.0}),  # SXM ("NVIDIA H100 80GB HBM3")
    ("A100", {"bf16": 312.0, "fp32": 19.5, "hbm": 2.0, "link": 300.0}),  # SXM 80 GB (the 40 GB: 1.6 TB/s)
    ("L40S", {"bf16": 362.0, "fp32": 91.6, "hbm": 0.86, "link": 32.0}),
    ("L4", {"bf16": 121.0, "fp32": 30.3, "hbm": 0.3, "link": 32.0}),
    ("A10", {"bf16": 125.0, "fp32": 31.2, "hbm": 0.6, "link": 32.0}),
)

# Names the planner accepts for --gpu, mapped to a device name the table knows.
GPU_NAMES = {"h200": "H200", "h100": "H100", "h100-pcie": "H100 PCIe", "a100": "A100", "a100-40gb": "A100", "l40s": "L40S", "l4": "L4",
             "a10": "A10"}


def table_rates(device_name: str) -> dict[str, float]:
    """The table's row for one device ({} if not in the table)."""
    return next((rates for key, rates in PEAK_TFLOPS if key.lower() in device_name.lower()), {})


def table_peak_tflops(device_name: str, precision: str) -> Optional[float]:
    """Dense peak TFLOP/s of one device for `precision` (fp32 | bf16), None if not in the table."""
    return table_rates(device_name).get(precision)


def detect_peak_tflops(precision: str) -> Optional[float]:
    """The table's peak for this process's CUDA device; None on CPU or for an unknown GPU."""
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    peak = table_peak_tflops(name, precision)
    if peak is None:
        log.warning("no peak FLOP rate known for %r (%s): set trainer.peak_tflops to log train/mfu", name, precision)
    return peak


class Utilization:
    """train/mfu and train/hfu from the model FLOP rate of the whole job."""

    def __init__(self, peak_tflops: float, world_size: int, recompute: float = 0.0):
        self.peak_flops = peak_tflops * 1e12 * world_size  # FLOP/s of all devices
        self.hardware_factor = 1.0 + recompute / 3.0  # forward = 1/3 of forward + backward

    def metrics(self, model_flops_per_s: float) -> dict[str, float]:
        mfu = model_flops_per_s / self.peak_flops
        return {"train/mfu": mfu, "train/hfu": mfu * self.hardware_factor}

    @classmethod
    def for_run(cls, trainer_cfg, world_size: int, recompute: float) -> Optional["Utilization"]:
        """From `trainer.peak_tflops` or the detected device; None when no peak is known (CPU)."""
        peak = trainer_cfg.peak_tflops or detect_peak_tflops(trainer_cfg.precision)
        return cls(peak, world_size, recompute) if peak else None
