"""A crash while a checkpoint is being written never damages the last published one."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import torch

SCRIPT = textwrap.dedent('''
    import os, sys
    from pathlib import Path
    import torch, deepspeed
    from neurograph.trainer.checkpoint import CheckpointManager

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="29531", RANK="0", LOCAL_RANK="0", WORLD_SIZE="1")
    deepspeed.init_distributed(dist_backend="gloo")
    root = Path(sys.argv[1])
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 4)
    engine, *_ = deepspeed.initialize(model=model, optimizer=torch.optim.AdamW(model.parameters(), lr=0.1),
                                      config={"train_batch_size": 1, "zero_optimization": {"stage": 2}})
    manager = CheckpointManager(root, keep=2)

    def train_step():
        loss = engine(torch.ones(1, 4)).sum()
        engine.backward(loss)
        engine.step()

    train_step()
    manager.save(engine, 1, {"step": 1})
    good = {k: v.clone() for k, v in model.state_dict().items()}

    train_step()
    real_save = engine.save_checkpoint
    def crashing_save(save_dir, tag, **kw):   # writes part of the checkpoint, then the process "dies"
        (Path(save_dir) / tag).mkdir(parents=True)
        (Path(save_dir) / tag / "mp_rank_00_model_states.pt").write_bytes(b"partial")
        raise KeyboardInterrupt("killed while saving")
    engine.save_checkpoint = crashing_save
    try:
        manager.save(engine, 2, {"step": 2})
    except KeyboardInterrupt:
        pass
    engine.save_checkpoint = real_save
    assert manager.latest_tag() == "step_00000001", manager.latest_tag()
    assert manager.published() == ["step_00000001"], manager.published()

    state = manager.load(engine, manager.resolve("latest"))
    assert state["step"] == 1
    assert all(torch.equal(good[k], v) for k, v in model.state_dict().items())

    train_step()
    manager.save(engine, 2, {"step": 2})                  # the partial staging copy is replaced
    assert manager.latest_tag() == "step_00000002"
    assert manager.load(engine, "step_00000002")["step"] == 2
    print("OK")
''')


def test_crash_during_save_keeps_last_checkpoint(tmp_path):
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "checkpoints")], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "DS_ACCELERATOR": "cpu"})
    assert proc.returncode == 0 and proc.stdout.strip().endswith("OK"), proc.stdout[-2000:] + proc.stderr[-4000:]


def test_weights_mismatch_names_missing_reshaped_and_unknown_keys():
    from neurograph.trainer.checkpoint import weights_mismatch

    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    state = {k: v.clone() for k, v in model.state_dict().items() if "running" not in k}  # buffers may be absent
    assert weights_mismatch(model, state) == []
    state["0.weight"] = torch.zeros(4, 2)
    del state["1.bias"]
    state["2.weight"] = torch.zeros(1)
    assert weights_mismatch(model, state) == ["0.weight (4, 2) (model: (4, 3))", "1.bias missing (model: (4,))",
                                              "2.weight (not in the model)"]
