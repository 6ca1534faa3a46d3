"""INL — Integrator Neuron Layer language model (SPEC section 3).

Pre-norm decoder block with three residual branches:
  a = Attn(LN_a(x)); x = x + a
  integrator: z_0 = LN_1(x), v_0 = 0, context h = a, K iterations of
      alpha, beta, gate, v_target = Controller(h, z, v);  v = alpha v + (1-alpha) v_target - beta (z - mu);
      z = z + dt gate v
    x = x + z_K
  x = x + FFN(LN_2(x))   (only when feedforward_dim > 0)

Every option of the model card is a config switch and is implemented for real: a shared
controller (one for all layers, per-layer [L, 4] scale/bias modulation), hierarchical
equilibrium mu (one global value plus zero-sum per-group offsets), per-token adaptive stopping
at inference (converged tokens are removed from the computation), sparse harmonic excitation
(random in training, its expectation at evaluation, like dropout's rescaling), low-rank embeddings and
sinusoidal or rotary positions. Attention keys/values are cached for generation; the
integrator runs only for new tokens.

Component names (used by `parameters_per_component` and the generic model summary):
embed, blocks.N.{ln_attn, attn, ln_int, integrator, ln_ffn, ffn}, controller (shared), ln_f, head.
The hot iteration math lives in kernels/integrator/ (`integrator_step`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .generation import generate
from .integrator import (INIT_RAW_BIAS, controller_activations, integrator_adaptive,  # kernels/integrator/
                         integrator_iterations, integrator_step, use_fused_iterations)
from .layers import (MLP, CausalSelfAttention, Dropout, KVCache, Padding, RotaryEmbedding, TokenPositions,
                     check_shapes, init_gpt_weights)
from .registry import ModelConfig, option, register_model


@dataclass(frozen=True, kw_only=True)
class INLConfig(ModelConfig):
    arch: Literal["inl"] = "inl"
    d_model: int = option(256, gt=0)
    n_layer: int = option(6, gt=0)
    n_head: int = option(4, gt=0)
    num_iterations: int = option(5, gt=0, description="integrator iterations K per layer")
    feedforward_dim: int = option(0, ge=0, description="hidden width of the FFN branch; 0 removes the branch")
    max_seq_len: int = option(256, gt=0)
    dropout: float = option(0.0, ge=0.0, lt=1.0)
    positions: Literal["sinusoidal", "rope"] = "sinusoidal"
    bias: bool = option(False, description="biases in attention and FFN linears")
    dt: float = option(0.1, gt=0.0, description="fixed integration step")
    controller_rank: int = option(64, gt=0, description="hidden width r of the controller MLP")
    shared_controller: bool = option(True, description="one controller for all layers + per-layer [4] scale/bias")
    hierarchical_equilibrium: bool = option(False, description="mu = one global value + per-group offsets summing to "
                                           "zero (D / group_size parameters); off: one mu per channel (D)")
    group_size: int = option(64, gt=0, description="channels per equilibrium group (hierarchical_equilibrium)")
    adaptive_stopping: bool = option(False, description="per-token early stop at inference (eval mode)")
    min_iterations: int = option(3, gt=0)
    stop_threshold: float = option(1e-3, ge=0.0, description="stop once ||z_k - z_{k-1}||_2 < threshold")
    excitation_sparsity: float = option(0.0, ge=0.0, le=1.0, description="probability p that a (token, channel) pair is "
                                       "excited in training; evaluation adds the expected excitation (p x the wave)")
    lowrank_embeddings: bool = False
    lowrank_ratio: float = option(0.125, gt=0.0, le=1.0)
    tie_embeddings: bool = option(False, description="output head reuses the (low-rank) input embedding")
    integrator_impl: Literal["auto", "reference", "compiled", "triton"] = option(
        "auto", description="K iterations with the controller as the PyTorch loop (reference; auto on CPU), that loop "
        "under torch.compile as one graph (compiled; auto on CUDA) or one Triton kernel (triton, opt-in: slower than "
        "the loop on an H200, see BENCHMARKS.md). Traces and the convergence loss use the loop")
    convergence_weight: float = option(0.0, ge=0.0, description="weight of the auxiliary convergence loss: mean "
                                      "||z_k - z_(k-1)||^2 / D over k > min_iterations (training; "
                                      "`INLModel.aux_loss()`), 0 disables")

    def __post_init__(self):
        check_shapes(self.d_model, self.n_head, self.positions == "rope",
                     self.group_size if self.hierarchical_equilibrium else 0)

    @property
    def context_length(self) -> int:
        return self.max_seq_len

    @property
    def embedding_rank(self) -> int:
        """r = max(64, D * lowrank_ratio) (216 for D = 1728, ratio 1/8)."""
        return min(self.d_model, max(64, round(self.d_model * self.lowrank_ratio)))


# --------------------------------------------------------------------------- components
class LowRankEmbedding(nn.Module):
    """Embed(V, r) -> Linear(r -> D)."""

    def __init__(self, vocab_size: int, rank: int, d_model: int):
        super().__init__()
        self.tokens = nn.Embedding(vocab_size, rank)
        self.proj = nn.Linear(rank, d_model, bias=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.proj(self.tokens(ids))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Tied output head through the factorisation: x [.., D] -> [.., V]."""
        return (x @ self.proj.weight) @ self.tokens.weight.T


class TokenEmbedding(nn.Module):
    def __init__(self, vocab_size: int, d_model: int):
        super().__init__()
        self.tokens = nn.Embedding(vocab_size, d_model)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.tokens(ids)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.tokens.weight.T


class IntegratorController(nn.Module):
    """Linear(3D -> r) -> ReLU -> Linear(r -> 4D) on [h, z, v], producing raw
    (alpha, beta, gate, v_target) pre-activations [N, 4, D].

    With `n_layers > 0` it is the shared controller: learned per-layer scale/bias [L, 4]
    modulate the four outputs of layer l. The context part W_h h + b is the same for all
    K iterations of a layer and is computed once (`context`)."""

    def __init__(self, d_model: int, rank: int = 64, n_layers: int = 0):
        super().__init__()
        self.d_model = d_model
        self.fc_in = nn.Linear(3 * d_model, rank)
        self.fc_out = nn.Linear(rank, 4 * d_model)
        if n_layers > 0:
            self.layer_scale = nn.Parameter(torch.ones(n_layers, 4))
            self.layer_bias = nn.Parameter(torch.zeros(n_layers, 4))
        else:
            self.register_parameter("layer_scale", None)
            self.register_parameter("layer_bias", None)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        nn.init.normal_(self.fc_in.weight, std=0.02)
        nn.init.zeros_(self.fc_in.bias)
        nn.init.normal_(self.fc_out.weight, std=0.01)  # small: start near the bias operating point
        bias = torch.tensor(INIT_RAW_BIAS, dtype=self.fc_out.bias.dtype, device=self.fc_out.bias.device)
        self.fc_out.bias.copy_(bias.repeat_interleave(self.d_model))
        if self.layer_scale is not None:
            self.layer_scale.fill_(1.0)
            self.layer_bias.zero_()

    def context(self, h: torch.Tensor) -> torch.Tensor:
        """h [N, D] -> W_h h + b [N, r]."""
        return F.linear(h, self.fc_in.weight[:, : self.d_model], self.fc_in.bias)

    def forward(self, ctx: torch.Tensor, z: torch.Tensor, v: Optional[torch.Tensor], layer: int = 0) -> torch.Tensor:
        """ctx = context(h) [N, r], z [N, D], v [N, D] or None (= 0) -> raw [N, 4, D]."""
        d = self.d_model
        pre = ctx + F.linear(z, self.fc_in.weight[:, d : 2 * d])
        if v is not None:
            pre = pre + F.linear(v, self.fc_in.weight[:, 2 * d :])
        raw = self.fc_out(F.relu(pre)).view(-1, 4, d)
        if self.layer_scale is not None:
            raw = raw * self.layer_scale[layer, :, None] + self.layer_bias[layer, :, None]
        return raw

    def weights(self, layer: int = 0) -> tuple[torch.Tensor, ...]:
        """(Wz, Wv [r, D], Wout [4D, r], b_out [4D], scale, shift [4]) for kernels/integrator/'s fused iterations."""
        d, w = self.d_model, self.fc_in.weight
        scale = self.layer_scale[layer] if self.layer_scale is not None else w.new_ones(4)
        shift = self.layer_bias[layer] if self.layer_bias is not None else w.new_zeros(4)
        return w[:, d : 2 * d], w[:, 2 * d :], self.fc_out.weight, self.fc_out.bias, scale, shift

    def reference(self, h: torch.Tensor, z: torch.Tensor, v: torch.Tensor, layer: int = 0) -> torch.Tensor:
        """The literal definition on the concatenation [h, z, v] (tests compare with `forward`)."""
        raw = self.fc_out(F.relu(self.fc_in(torch.cat([h, z, v], dim=-1)))).view(-1, 4, self.d_model)
        if self.layer_scale is not None:
            raw = raw * self.layer_scale[layer, :, None] + self.layer_bias[layer, :, None]
        return raw


class IntegratorBranch(nn.Module):
    """K iterations of the integrator dynamics for one layer. Holds the layer's equilibrium, its
    excitation parameters and — when the controller is not shared — its own controller.

    Equilibrium: per channel, mu_global [D]; hierarchical (G = D / group_size groups), the
    authors' global value plus per-group offsets without redundancy: mu_global [1] is the mean
    equilibrium and mu_group [G-1] the offsets of groups 0..G-2 (group G-1's offset is minus
    their sum), so mu has exactly G degrees of freedom and G parameters (one group: a single
    global value). Checkpoints with the old shapes (mu_global [D], mu_group [G]) are converted
    when their mu is constant within groups, and refused otherwise.

    Excitation (excitation_sparsity p > 0): iteration k adds mask * a * sin(f (k+1)) to the
    velocity, the mask drawn per (token, channel) with probability p, in training; evaluation
    adds its expectation p * a * sin(f (k+1)) (dropout's rescaling rule), so the amplitude a
    that training tunes is also used at inference. Each update is linear in the excitation,
    so the eval update equals the expectation of the training update over the mask.

    Runtime attributes (not config, may be changed on a built model):
    `adaptive_stopping`, `min_iterations`, `stop_threshold`; after an adaptive forward
    `last_iterations` [B, T] holds the iterations used per token; when `trace` is a list, every
    iteration appends {"energy", "update"} (per-token tensors, for convergence plots; see `_record`)."""

    def __init__(self, cfg: INLConfig, layer: int, own_controller: bool):
        super().__init__()
        d = cfg.d_model
        self.layer = layer
        self.d_model = d
        self.num_iterations = cfg.num_iterations
        self.dt = cfg.dt
        self.group_size = cfg.group_size if cfg.hierarchical_equilibrium else 0
        n_groups = d // cfg.group_size if self.group_size else 0
        self.mu_global = nn.Parameter(torch.zeros(1 if self.group_size else d))
        self.mu_group = nn.Parameter(torch.zeros(n_groups - 1)) if n_groups > 1 else None
        self.register_load_state_dict_pre_hook(_convert_old_equilibrium)
        self.excitation_sparsity = cfg.excitation_sparsity
        if cfg.excitation_sparsity > 0:
            self.excitation_amplitude = nn.Parameter(torch.full((d,), 0.05))
            self.excitation_frequency = nn.Parameter(torch.linspace(0.5, 2.0, d))
        self.controller = IntegratorController(d, cfg.controller_rank) if own_controller else None
        self.adaptive_stopping = cfg.adaptive_stopping
        self.impl = cfg.integrator_impl
        self.min_iterations = cfg.min_iterations
        self.stop_threshold = cfg.stop_threshold
        self.last_iterations: Optional[torch.Tensor] = None
        self.trace: Optional[list] = None
        self.track_convergence = cfg.convergence_weight > 0
        # mean over iterations k > min_iterations of ||z_k - z_(k-1)||^2 / D (training, with grad)
        self.last_update_sq: Optional[torch.Tensor] = None

    def equilibrium(self) -> torch.Tensor:
        """mu [D]."""
        if not self.group_size:
            return self.mu_global
        if self.mu_group is None:  # one group
            return self.mu_global.expand(self.d_model)
        offsets = torch.cat([self.mu_group, -self.mu_group.sum(0, keepdim=True)])  # [G], sums to zero
        return (self.mu_global + offsets).repeat_interleave(self.group_size)

    def excitation_mask(self, n: int, like: torch.Tensor) -> Optional[torch.Tensor]:
        """Training only: the (token, channel) pairs excited during this forward, each with
        probability `excitation_sparsity` ([N, D] 0/1 in like's dtype). None in eval mode or when disabled."""
        if not self.training or self.excitation_sparsity <= 0:
            return None
        return (torch.rand(n, self.d_model, device=like.device) < self.excitation_sparsity).to(like.dtype)

    def excitation(self, k: int, mask: Optional[torch.Tensor], like: torch.Tensor) -> Optional[torch.Tensor]:
        """Excitation of iteration k: mask * a * sin(f (k+1)) [N, D] with a training mask; in eval
        mode its expectation p * a * sin(f (k+1)) [D]. None when disabled."""
        if self.excitation_sparsity <= 0:
            return None
        wave = (self.excitation_amplitude * torch.sin(self.excitation_frequency * (k + 1))).to(like.dtype)  # [D]
        if self.training:
            return mask * wave
        return self.excitation_sparsity * wave

    def forward(self, z0: torch.Tensor, h: torch.Tensor, controller: Optional[IntegratorController] = None) -> torch.Tensor:
        """z0 = LN_1(x) [B, T, D], context h [B, T, D] -> z_K [B, T, D]."""
        ctrl = self.controller if self.controller is not None else controller
        b, t, d = z0.shape
        z = z0.reshape(b * t, d)
        ctx = ctrl.context(h.reshape(b * t, d))  # [N, r], constant over iterations
        mu = self.equilibrium()
        adaptive = self.adaptive_stopping and not self.training and self.trace is None
        if self.trace is None and not self.track_convergence and use_fused_iterations(self.impl, z.device):
            # all K iterations in one kernel; excitation passed as its mask and per-iteration waves [K, D]
            mask = self.excitation_mask(z.shape[0], z)
            unit = None if mask is None else torch.ones((), dtype=z.dtype, device=z.device)  # training: the wave itself
            waves = (None if self.excitation_sparsity <= 0
                     else torch.stack([self.excitation(k, unit, z) for k in range(self.num_iterations)]))
            args = (z, ctx, *ctrl.weights(self.layer), mu.expand(d), self.dt, self.num_iterations)
            if adaptive:
                z, iters = integrator_adaptive(*args, self.min_iterations, self.stop_threshold, impl=self.impl, waves=waves)
            else:
                z, iters = integrator_iterations(*args, impl=self.impl, mask=mask, waves=waves), None
            self.last_iterations, self.last_update_sq = None if iters is None else iters.view(b, t), None
            return z.view(b, t, d)
        if adaptive:
            z, iters = self._adaptive(z, ctx, mu, ctrl)
            self.last_iterations = iters.view(b, t)
            return z.view(b, t, d)
        v = None
        tail: list[torch.Tensor] = []  # updates after min_iterations (convergence loss)
        mask = self.excitation_mask(z.shape[0], z)
        for k in range(self.num_iterations):
            raw = ctrl(ctx, z, v, self.layer)
            z_new, v = integrator_step(z, v, mu, raw, self.dt, self.excitation(k, mask, z))
            if self.trace is not None:
                self._record(raw, z, z_new, v, mu)
            if self.track_convergence and self.training and k >= self.min_iterations:
                tail.append((z_new - z).pow(2).mean())
            z = z_new
        self.last_iterations = None
        self.last_update_sq = torch.stack(tail).mean() if tail else None
        return z.view(b, t, d)

    @torch.no_grad()
    def _record(self, raw, z_old, z_new, v_new, mu) -> None:
        """Energy against the fixed point of this iteration's update: v* = 0 and
        z* = mu + (1 - alpha) v_target / beta, so it goes to zero when the iteration converges."""
        alpha, beta, _, v_target = controller_activations(raw)
        z_star = mu + (1 - alpha) * v_target / beta
        self.trace.append({
            "energy": ((z_new - z_star).pow(2).sum(-1) + v_new.pow(2).sum(-1)).float().cpu(),
            "update": (z_new - z_old).norm(dim=-1).float().cpu(),
        })

    def _adaptive(self, z: torch.Tensor, ctx: torch.Tensor, mu: torch.Tensor, ctrl: IntegratorController):
        """Per-token early stopping. Every token runs `min_iterations`; before each further
        iteration, tokens whose last update ||z_k - z_{k-1}|| was below the threshold keep z_k and
        leave the working set, so they cost nothing more. The result tensor is the state after
        `min_iterations` (no copy); only the rows of tokens still iterating are rewritten.
        Returns z [N, D] and the iterations used per token [N]."""
        v, first = None, min(self.min_iterations, self.num_iterations)
        for k in range(first):
            prev = z
            z, v = integrator_step(z, v, mu, ctrl(ctx, z, v, self.layer), self.dt, self.excitation(k, None, z))
        out = z
        iters = torch.full((z.shape[0],), first, dtype=torch.int32, device=z.device)
        rows = None  # rows of `out` still iterating (None: all of them)
        for k in range(first, self.num_iterations):
            moving = ((z - prev).norm(dim=-1) >= self.stop_threshold).nonzero().squeeze(1)
            if moving.numel() == 0:
                break
            rows = moving if rows is None else rows[moving]
            z, v, ctx = z.index_select(0, moving), v.index_select(0, moving), ctx.index_select(0, moving)
            prev = z
            z, v = integrator_step(z, v, mu, ctrl(ctx, z, v, self.layer), self.dt, self.excitation(k, None, z))
            out[rows] = z
            iters[rows] += 1
        return out, iters


def _convert_old_equilibrium(branch: IntegratorBranch, state_dict: dict, prefix: str, *_) -> None:
    """load_state_dict pre-hook: a hierarchical checkpoint from before the non-redundant
    parametrisation (mu_global [D] + repeat(mu_group [G])) is rewritten in place to
    (mu_global [1], mu_group [G-1]) when its mu is constant within every group; otherwise
    it cannot be expressed and is refused."""
    g_key, o_key = prefix + "mu_global", prefix + "mu_group"
    old_global = state_dict.get(g_key)
    if not branch.group_size or old_global is None or old_global.shape != (branch.d_model,):
        return
    n_groups = branch.d_model // branch.group_size
    mu = old_global.double()
    if o_key in state_dict:
        mu = mu + state_dict[o_key].double().repeat_interleave(branch.group_size)
    per_group = mu.view(n_groups, branch.group_size).mean(1)  # [G]
    spread = (mu - per_group.repeat_interleave(branch.group_size)).abs().max().item()
    if spread > 1e-6 * (1.0 + mu.abs().max().item()):
        raise ValueError(
            f"{g_key}: checkpoint has the old redundant hierarchical equilibrium (mu_global of shape "
            f"[{branch.d_model}]) whose mu differs within groups of {branch.group_size} channels by up to "
            f"{spread:.3g}; the current model has one global value plus per-group offsets and cannot represent "
            "it: load it with hierarchical_equilibrium: false")
    mean = per_group.mean()
    state_dict[g_key] = mean.reshape(1).to(old_global.dtype)
    state_dict.pop(o_key, None)
    if n_groups > 1:
        state_dict[o_key] = (per_group[:-1] - mean).to(old_global.dtype)


class INLBlock(nn.Module):
    def __init__(self, cfg: INLConfig, layer: int, rotary: Optional[RotaryEmbedding]):
        super().__init__()
        self.ln_attn = nn.LayerNorm(cfg.d_model)
        self.attn = CausalSelfAttention(cfg.d_model, cfg.n_head, cfg.dropout, cfg.bias, rotary)
        self.ln_int = nn.LayerNorm(cfg.d_model)
        self.integrator = IntegratorBranch(cfg, layer, own_controller=not cfg.shared_controller)
        self.drop = Dropout(cfg.dropout)
        if cfg.feedforward_dim > 0:
            self.ln_ffn = nn.LayerNorm(cfg.d_model)
            self.ffn = MLP(cfg.d_model, cfg.feedforward_dim, cfg.dropout, cfg.bias)
        else:
            self.ln_ffn = self.ffn = None

    def forward(self, x: torch.Tensor, cache: Optional[KVCache] = None,
                controller: Optional[IntegratorController] = None, padding: Optional[Padding] = None) -> torch.Tensor:
        a = self.attn(self.ln_attn(x), cache, padding)
        x = x + a
        x = x + self.drop(self.integrator(self.ln_int(x), a, controller))
        if self.ffn is not None:
            x = x + self.ffn(self.ln_ffn(x))
        return x


# --------------------------------------------------------------------------- the model
@register_model("inl", INLConfig)
class INLModel(nn.Module):
    def __init__(self, cfg: INLConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        if cfg.lowrank_embeddings:
            self.embed = LowRankEmbedding(cfg.vocab_size, cfg.embedding_rank, d)
        else:
            self.embed = TokenEmbedding(cfg.vocab_size, d)
        self.positions = TokenPositions(cfg.positions, cfg.max_seq_len, d, cfg.n_head)
        self.drop = Dropout(cfg.dropout)
        self.controller = IntegratorController(d, cfg.controller_rank, cfg.n_layer) if cfg.shared_controller else None
        self.blocks = nn.ModuleList(INLBlock(cfg, i, self.positions.rotary) for i in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(d)
        self.head = None if cfg.tie_embeddings else nn.Linear(d, cfg.vocab_size, bias=False)
        self.apply(init_gpt_weights)
        for m in self.modules():  # controllers keep their own (small-output) initialisation
            if isinstance(m, IntegratorController):
                m.reset_parameters()

    @property
    def context_length(self) -> int:
        return self.cfg.max_seq_len

    def integrators(self) -> list[IntegratorBranch]:
        return [blk.integrator for blk in self.blocks]

    def set_adaptive_stopping(self, enabled: bool, threshold: Optional[float] = None,
                              min_iterations: Optional[int] = None) -> None:
        """Switch per-token adaptive stopping (used in eval mode only) on a built model."""
        for it in self.integrators():
            it.adaptive_stopping = enabled
            if threshold is not None:
                it.stop_threshold = threshold
            if min_iterations is not None:
                it.min_iterations = min_iterations

    def iterations_used(self) -> Optional[torch.Tensor]:
        """[L, B, T] iterations per token of the last adaptive forward (None otherwise)."""
        its = [it.last_iterations for it in self.integrators()]
        return None if any(x is None for x in its) else torch.stack(its)

    def aux_loss(self) -> torch.Tensor:
        """convergence_weight x mean over layers of the last training forward's mean ||z_k - z_(k-1)||^2 / D
        for the iterations after min_iterations: teaches the integrator to settle early, which is what lets per-token adaptive
        stopping skip work at inference. Zero when disabled. Add it to the language-model loss."""
        terms = [it.last_update_sq for it in self.integrators() if it.last_update_sq is not None]
        if self.cfg.convergence_weight <= 0 or not terms:
            return torch.zeros((), device=self.ln_f.weight.device)
        return self.cfg.convergence_weight * torch.stack(terms).mean()

    def new_caches(self) -> list[KVCache]:
        return [KVCache() for _ in self.blocks]

    def forward(self, input_ids: torch.Tensor, caches: Optional[list[KVCache]] = None,
                attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """input_ids [B, T] -> logits [B, T, V]. With `caches` (one per layer) the tokens continue
        after the cached ones and the caches are extended. `attention_mask` [B, cached + T]
        (0: padding, left or right) hides padded keys and positions each row as if unpadded."""
        offset = caches[0].length if caches else 0
        padding = Padding.from_mask(attention_mask, offset, input_ids.shape[1])
        x = self.drop(self.positions(self.embed(input_ids), offset, padding))  # [B, T, D]
        for i, block in enumerate(self.blocks):
            x = block(x, caches[i] if caches else None, self.controller, padding)
        x = self.ln_f(x)
        return self.embed.logits(x) if self.head is None else self.head(x)

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                 top_k: Optional[int] = None, top_p: Optional[float] = None, do_sample: bool = False,
                 use_cache: bool = True, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        return generate(self, input_ids, max_new_tokens, temperature, top_k, top_p, do_sample, use_cache, generator)

    def repeated_blocks(self) -> list[nn.Module]:
        """The repeated blocks, in forward order (activation checkpointing and torch.compile act on them)."""
        return list(self.blocks)

    def selective_checkpointing(self) -> tuple[list[nn.Module], float]:
        """What trainer.activation_checkpointing=selective recomputes: each block's integrator branch (K iterations
        whose eager or compiled form keeps ~0.36 MiB per token and layer for backward at the 1.1B's width, against
        the block's 2 D for its inputs) and its share of a block's forward FLOPs (attention scores aside)."""
        c = self.cfg
        integrator = 6 * c.num_iterations * c.d_model * c.controller_rank
        share = integrator / (4 * c.d_model ** 2 + 2 * c.d_model * c.feedforward_dim + integrator)
        return [blk.integrator for blk in self.blocks], share

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token (forward + backward = 3 x forward), matmuls and attention scores.
        Per layer: attention 4 D^2, FFN 2 D F, integrator 6 K D r: the controller's context (once),
        z (K times) and v (K-1 times: v_0 = 0) inputs D r each, outputs 4 D r (K times)."""
        c = self.cfg
        d, r, k = c.d_model, c.controller_rank, c.num_iterations
        per_layer = 4 * d * d + 2 * d * c.feedforward_dim + 6 * k * d * r
        emb = c.embedding_rank * d if c.lowrank_embeddings else 0
        head = (c.embedding_rank * d + c.embedding_rank * c.vocab_size) if (c.tie_embeddings and c.lowrank_embeddings) \
            else d * c.vocab_size
        attention = c.n_layer * 2 * seq_len * d
        return 3 * 2 * (c.n_layer * per_layer + emb + head + attention)


# --------------------------------------------------------------------------- summary
COMPONENTS = ("embeddings", "blocks.attn", "blocks.integrator", "blocks.ffn", "shared_controller", "norms", "head")


def component_of(name: str) -> str:
    """Map a parameter name of INLModel to its component (one of COMPONENTS)."""
    if name.startswith("embed."):
        return "embeddings"
    if name.startswith("controller."):
        return "shared_controller"
    if name.startswith("head."):
        return "head"
    if name.startswith("ln_f.") or ".ln_" in name:
        return "norms"
    for part in ("attn", "integrator", "ffn"):
        if f".{part}." in name:
            return f"blocks.{part}"
    raise KeyError(name)


def parameters_per_component(model: nn.Module) -> dict[str, int]:
    """Parameters per component (works on the meta device)."""
    counts = dict.fromkeys(COMPONENTS, 0)
    for name, p in model.named_parameters():
        counts[component_of(name)] += p.numel()
    return counts


