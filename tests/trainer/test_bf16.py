"""A bf16 run (DeepSpeed bf16 mode, 2 real ranks with ZeRO-2 on gloo) checkpoints the fp32 master
weights: its model.safetensors equals the masters DeepSpeed's optimizer holds (read back from the
checkpoint's ZeRO shards by DeepSpeed's own `zero_to_fp32`, through the restricted unpickler), not
the bf16 weights the module ran with; and `export hf` (fp32) of that checkpoint gives the logits of
the trainer's model run in fp32 on those masters."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from neurograph.launch.export.hf import export_hf
from neurograph.launch.inference import load_run_config
from neurograph.model import build_model
from neurograph.trainer.checkpoint import WEIGHTS, CheckpointManager, restricted_torch_load, safe_load

from .runs import train

pytestmark = pytest.mark.slow


def test_bf16_checkpoint_holds_the_fp32_masters_and_exports_them(tmp_path, char_data):
    train(tmp_path, char_data, "run", "trainer.precision=bf16", "trainer.num_processes=2", "deepspeed.zero_stage=2",
          "trainer.max_steps=4")
    run_dir = tmp_path / "run"
    checkpoints = CheckpointManager(run_dir / "checkpoints")
    tag = checkpoints.latest_tag()
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    with restricted_torch_load():
        masters = get_fp32_state_dict_from_zero_checkpoint(str(checkpoints.root), tag=tag)
    module = safe_load(checkpoints.root / tag / "mp_rank_00_model_states.pt")["module"]  # what the ranks ran with
    params = [k for k, v in module.items() if v.dtype == torch.bfloat16]
    assert params and all(torch.equal(module[k], masters[k].bfloat16()) for k in params)  # rounded copies
    assert any(not torch.equal(masters[k], masters[k].bfloat16().float()) for k in params)  # which lose bits

    weights = load_file(checkpoints.root / tag / WEIGHTS)
    assert weights.keys() == masters.keys()
    assert all(weights[k].dtype == torch.float32 and torch.equal(weights[k], masters[k]) for k in masters)

    cfg = load_run_config(run_dir)
    model = build_model(cfg.model).float().eval()
    model.load_state_dict(masters)
    ids = torch.randint(0, cfg.model.vocab_size, (2, 48), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(ids)

    from transformers import AutoModelForCausalLM

    out = export_hf(run_dir, tmp_path / "bf16_export", dtype="fp32")
    exported = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True, dtype=torch.float32).eval()
    with torch.no_grad():
        logits = exported(input_ids=ids).logits[..., : cfg.model.vocab_size]  # ids the export appends: after
    torch.testing.assert_close(logits, expected, rtol=0, atol=0)
