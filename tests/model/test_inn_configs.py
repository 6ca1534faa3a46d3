"""The INN, LSTM and Mamba-stack YAML configs validate section by section (the data manifest
check of the full run config needs prepared data, so it is left to `neurograph train`)."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from neurograph.data_pipeline.config import DataConfig
from neurograph.launch.config import LauncherConfig
from neurograph.model import parse_model_config
from neurograph.trainer.config import DeepSpeedConfig, TrackingConfig, TrainerConfig

CONFIGS = sorted(p for pattern in ("inn_*.yaml", "lstm_*.yaml", "mamba_*.yaml")
                 for p in (Path(__file__).resolve().parents[2] / "configs").glob(pattern))
SECTIONS = dict(data=DataConfig, trainer=TrainerConfig, deepspeed=DeepSpeedConfig, tracking=TrackingConfig,
                launcher=LauncherConfig)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_validates(path):
    raw = yaml.safe_load(path.read_text())
    assert set(raw) <= {"model", *SECTIONS}
    cfg = parse_model_config(raw["model"])
    assert cfg.vocab_size == 27
    for name, cls in SECTIONS.items():
        cls(**raw.get(name, {}))


def test_paper_config_is_the_papers():
    raw = yaml.safe_load((CONFIGS[0].parent / "inn_text8.yaml").read_text())
    m, t = raw["model"], raw["trainer"]
    assert (m["n_neurons"], m["d_model"], m["d_state"], m["n_layer"], m["n_head"], m["dropout"]) == (32, 256, 16, 6, 4, 0.1)
    assert (t["micro_batch_size"] * t["grad_accum_steps"], raw["data"]["seq_len"]) == (16, 256)
    assert (t["lr"], t["schedule"], t["grad_clip"]) == (4e-4, "onecycle", 1.0)
