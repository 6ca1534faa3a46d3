"""Drop-in FFN replacement: INL integrator blocks inside a Hugging Face decoder.

`replace_ffn_with_inl(hf_model, ...)` swaps the MLP of every decoder layer of a GPT-2 or
Llama model (built from a config, no download) for an `INLFeedForward`: K integrator
iterations starting from the MLP's (already normalised) input u, with context h = u,
returning z_K — which the HF block adds to its residual exactly as it added the MLP output.
All layers share ONE `IntegratorController` (registered once on the HF model as
`inl_controller`, with per-layer [L, 4] scale/bias modulation).

Registered as architecture "hf_inl" (config `HFINLConfig`) so the NeuroGraph trainer can
train it: forward(input_ids [B, T]) -> logits [B, T, V]. transformers is imported lazily,
so importing this module (and `model`) needs torch alone.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

import torch
import torch.nn as nn

from .inl import INLConfig, IntegratorBranch, IntegratorController
from .layers import check_shapes
from .registry import ModelConfig, option, register_model


class INLFeedForward(nn.Module):
    """Replaces an HF MLP: u [B, T, D] -> z_K [B, T, D]. The shared controller is held by
    reference (not registered here), so its parameters exist once in the model."""

    def __init__(self, cfg: INLConfig, layer: int, controller: IntegratorController):
        super().__init__()
        self.integrator = IntegratorBranch(cfg, layer, own_controller=False)
        self._controller = [controller]  # a list: not a registered submodule

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return self.integrator(hidden_states, hidden_states, self._controller[0])


def _decoder_layers(hf_model: nn.Module) -> nn.ModuleList:
    for path in ("transformer.h", "model.layers", "model.decoder.layers", "gpt_neox.layers"):
        obj = hf_model
        try:
            for part in path.split("."):
                obj = getattr(obj, part)
        except AttributeError:
            continue
        if isinstance(obj, nn.ModuleList) and all(hasattr(layer, "mlp") for layer in obj):
            return obj
    raise ValueError(f"cannot find decoder layers with an `mlp` in {type(hf_model).__name__}")


def replace_ffn_with_inl(hf_model: nn.Module, num_iterations: int = 5, dt: float = 0.1, controller_rank: int = 64,
                         hierarchical_equilibrium: bool = False, group_size: int = 64,
                         excitation_sparsity: float = 0.0, adaptive_stopping: bool = False,
                         min_iterations: int = 3, stop_threshold: float = 1e-3) -> IntegratorController:
    """Replace every decoder layer's MLP with an INL integrator block sharing one controller.
    Works in place; returns the shared controller (also registered as `hf_model.inl_controller`)."""
    layers = _decoder_layers(hf_model)
    d_model = hf_model.config.hidden_size
    icfg = INLConfig(d_model=d_model, n_layer=len(layers), n_head=1, num_iterations=num_iterations, dt=dt,
                     controller_rank=controller_rank, hierarchical_equilibrium=hierarchical_equilibrium,
                     group_size=group_size, excitation_sparsity=excitation_sparsity,
                     adaptive_stopping=adaptive_stopping, min_iterations=min_iterations, stop_threshold=stop_threshold)
    ref = next(hf_model.parameters())
    controller = IntegratorController(d_model, controller_rank, len(layers)).to(device=ref.device, dtype=ref.dtype)
    hf_model.inl_controller = controller
    for i, layer in enumerate(layers):
        layer.mlp = INLFeedForward(icfg, i, controller).to(device=ref.device, dtype=ref.dtype)
    return controller


@dataclass(frozen=True, kw_only=True)
class HFINLConfig(ModelConfig):
    arch: Literal["hf_inl"] = "hf_inl"
    base: Literal["gpt2", "llama"] = "gpt2"
    d_model: int = option(256, gt=0)
    n_layer: int = option(6, gt=0)
    n_head: int = option(4, gt=0)
    max_seq_len: int = option(256, gt=0)
    dropout: float = option(0.0, ge=0.0, lt=1.0)
    num_iterations: int = option(5, gt=0)
    dt: float = option(0.1, gt=0.0)
    controller_rank: int = option(64, gt=0)
    hierarchical_equilibrium: bool = False
    group_size: int = option(64, gt=0)
    adaptive_stopping: bool = False
    min_iterations: int = option(3, gt=0)
    stop_threshold: float = option(1e-3, ge=0.0)
    excitation_sparsity: float = option(0.0, ge=0.0, le=1.0)

    def __post_init__(self):
        check_shapes(self.d_model, self.n_head, group_size=self.group_size if self.hierarchical_equilibrium else 0)

    @property
    def context_length(self) -> int:
        return self.max_seq_len


def build_hf_decoder(cfg: HFINLConfig) -> nn.Module:
    """The plain HF causal LM (GPT-2 or Llama) described by `cfg`, randomly initialised."""
    if cfg.base == "gpt2":
        from transformers import GPT2Config, GPT2LMHeadModel

        hf_cfg = GPT2Config(vocab_size=cfg.vocab_size, n_embd=cfg.d_model, n_layer=cfg.n_layer, n_head=cfg.n_head,
                            n_positions=cfg.max_seq_len, resid_pdrop=cfg.dropout, embd_pdrop=cfg.dropout,
                            attn_pdrop=cfg.dropout, use_cache=False,
                            bos_token_id=cfg.vocab_size - 1, eos_token_id=cfg.vocab_size - 1)
        return GPT2LMHeadModel(hf_cfg)
    from transformers import LlamaConfig, LlamaForCausalLM

    hf_cfg = LlamaConfig(vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, intermediate_size=4 * cfg.d_model,
                         num_hidden_layers=cfg.n_layer, num_attention_heads=cfg.n_head,
                         num_key_value_heads=cfg.n_head, max_position_embeddings=cfg.max_seq_len,
                         attention_dropout=cfg.dropout, use_cache=False, tie_word_embeddings=True)
    return LlamaForCausalLM(hf_cfg)


@register_model("hf_inl", HFINLConfig)
class HFINLModel(nn.Module):
    """A GPT-2 / Llama decoder whose FFNs are INL integrator blocks with one shared controller."""

    def __init__(self, cfg: HFINLConfig):
        super().__init__()
        self.cfg = cfg
        self.hf = build_hf_decoder(cfg)
        replace_ffn_with_inl(
            self.hf, cfg.num_iterations, cfg.dt, cfg.controller_rank, cfg.hierarchical_equilibrium, cfg.group_size,
            cfg.excitation_sparsity, cfg.adaptive_stopping, cfg.min_iterations, cfg.stop_threshold)

    @property
    def controller(self) -> IntegratorController:
        """The shared controller (registered once, as `hf.inl_controller`)."""
        return self.hf.inl_controller

    @property
    def context_length(self) -> int:
        return self.cfg.max_seq_len

    def forward(self, input_ids: torch.Tensor, caches: Optional[list] = None) -> torch.Tensor:
        if caches is not None:
            raise NotImplementedError("hf_inl does not take NeuroGraph KV caches; use self.hf.generate")
        return self.hf(input_ids=input_ids, use_cache=False).logits

    def repeated_blocks(self) -> list[nn.Module]:
        """The repeated blocks, in forward order (activation checkpointing and torch.compile act on them)."""
        return list(_decoder_layers(self.hf))

    def flops_per_token(self, seq_len: int) -> float:
        c = self.cfg
        d, r, k = c.d_model, c.controller_rank, c.num_iterations
        per_layer = 4 * d * d + 6 * k * d * r + 2 * seq_len * d  # integrator as in INLModel.flops_per_token
        return 3 * 2 * (c.n_layer * per_layer + d * c.vocab_size)
