"""Selective SSM block (Mamba-1, SPEC section 1) with a recurrent step for decoding.

The block maps x [..., T, D] -> [..., T, D]; every leading index is an independent sequence
(the INN passes [B, N, T, D]: neurons ride along as batch). Options used by the INN to
break neuron symmetry (both off by default, then the block is the plain Mamba-1 block):
- `n_neurons` + `per_neuron_conv`: one depthwise conv kernel per neuron, weight [N, d_inner, K],
  applied to inputs whose dim -3 is the neuron axis.
- `n_neurons` + `adapter_rank` r > 0: per-neuron low-rank adapter on in_proj,
  in_proj(x) + (x U_n) V_n with U [N, D, r] (random) and V [N, r, 2 d_inner] (zero at init).

The scan itself lives in kernels/selective_scan/; this module calls its dispatch only.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .causal_conv1d import causal_conv1d_silu  # kernels/causal_conv1d/
from .registry import option
from .selective_scan import (cpp_scan_backward, cpp_scan_forward, resolve_scan_impl,  # kernels/selective_scan/
                             selective_scan)


ConvImpl = Literal["auto", "reference", "cpp", "cuda", "triton"]  # kernels/causal_conv1d/'s impls


def conv_impl_option():
    """The `conv_impl` field of the configs of models built from MambaBlocks."""
    return option("auto", description="the Mamba blocks' causal conv + SiLU: cpp (CPU), cuda (causal-conv1d), triton "
                  "or reference (PyTorch); auto: cpp on CPU, causal-conv1d on CUDA where installed and one kernel "
                  "serves all neurons, else triton")


def no_weight_decay(param: nn.Parameter) -> nn.Parameter:
    """Mark a parameter to be left out of weight decay (trainers check `_no_weight_decay`)."""
    param._no_weight_decay = True
    return param


@dataclass
class MambaState:
    """Recurrent state of one block: the last K-1 conv inputs and the SSM state.
    conv [..., K-1, d_inner]; ssm [..., d_inner, S] (fp32)."""

    conv: torch.Tensor
    ssm: torch.Tensor


class MambaBlock(nn.Module):
    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 4, expand: int = 2,
                 dt_rank: Optional[int] = None, dt_min: float = 1e-3, dt_max: float = 1e-1,
                 dt_init_floor: float = 1e-4, conv_bias: bool = True, bias: bool = False,
                 n_neurons: int = 0, per_neuron_conv: bool = False, adapter_rank: int = 0,
                 scan_impl: str = "auto", chunk_size: int = 0, conv_impl: str = "auto"):
        super().__init__()
        if (per_neuron_conv or adapter_rank) and n_neurons <= 0:
            raise ValueError("per-neuron options need n_neurons > 0")
        self.d_model, self.d_state, self.d_conv = d_model, d_state, d_conv
        self.d_inner = d_inner = expand * d_model
        self.dt_rank = dt_rank or math.ceil(d_model / 16)
        self.n_neurons = n_neurons
        self.scan_impl, self.chunk_size = scan_impl, chunk_size
        # the reference scan runs all in PyTorch unless a conv is named
        self.conv_impl = "reference" if scan_impl == "sequential" and conv_impl == "auto" else conv_impl

        self.in_proj = nn.Linear(d_model, 2 * d_inner, bias=bias)
        # Depthwise causal conv + SiLU (kernels/causal_conv1d/), kernel stored as [(N,) d_inner, K].
        conv_shape = (n_neurons, d_inner, d_conv) if per_neuron_conv else (d_inner, d_conv)
        bound = 1.0 / math.sqrt(d_conv)  # nn.Conv1d's default init for a depthwise kernel
        self.conv_weight = nn.Parameter(torch.empty(conv_shape).uniform_(-bound, bound))
        self.conv_bias = nn.Parameter(torch.empty(conv_shape[:-1]).uniform_(-bound, bound)) if conv_bias else None
        if adapter_rank > 0:
            self.adapter_down = nn.Parameter(torch.randn(n_neurons, d_model, adapter_rank) / math.sqrt(d_model))
            self.adapter_up = nn.Parameter(torch.zeros(n_neurons, adapter_rank, 2 * d_inner))
        else:
            self.adapter_down = self.adapter_up = None
        self.x_proj = nn.Linear(d_inner, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, d_inner, bias=True)
        dt_std = self.dt_rank ** -0.5
        nn.init.uniform_(self.dt_proj.weight, -dt_std, dt_std)
        # dt bias = softplus^-1(dt), dt log-uniform in [dt_min, dt_max].
        dt = torch.exp(torch.rand(d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=dt_init_floor)
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        A = torch.arange(1, d_state + 1, dtype=torch.float32).repeat(d_inner, 1)  # [d_inner, S]
        self.A_log = no_weight_decay(nn.Parameter(torch.log(A)))
        self.D = no_weight_decay(nn.Parameter(torch.ones(d_inner)))
        self.out_proj = nn.Linear(d_inner, d_model, bias=bias)

    # -- pieces shared by forward and step ---------------------------------------------------
    def _in_proj(self, x: torch.Tensor) -> torch.Tensor:
        xz = self.in_proj(x)  # [..., (T,) 2 d_inner]
        if self.adapter_up is not None:
            # x [B, N, T, D] (forward) or [B, N, D] (step): the neuron axis is dim 1.
            spec = "bntd,ndr,nre->bnte" if x.dim() == 4 else "bnd,ndr,nre->bne"
            xz = xz + torch.einsum(spec, x, self.adapter_down, self.adapter_up)
        return xz

    def _ssm_params(self, x: torch.Tensor):
        """x [..., d_inner] -> dt (pre-softplus, no bias) [..., d_inner], B, C [..., S]."""
        dbc = self.x_proj(x)
        dt, B, C = dbc.split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        return F.linear(dt, self.dt_proj.weight), B, C

    def _scan_inputs(self, x: torch.Tensor):
        """x [..., T, D] -> the conv input xi and the scan's inputs, each [..., T, F]: u (the conv
        output), dt (before bias and softplus), z (the gate), B, C."""
        xi, z = self._in_proj(x).chunk(2, dim=-1)  # [..., T, d_inner] each
        xc = causal_conv1d_silu(xi, self.conv_weight, self.conv_bias, impl=self.conv_impl)  # [..., T, d_inner]
        dt, B, C = self._ssm_params(xc)
        return xi, xc, dt, z, B, C

    def _scan_constants(self, dtype: torch.dtype):
        """A = -exp(A_log), D and the dt bias for inputs of `dtype`: in fp32 (the scan's compute type),
        fp64 for fp64 inputs."""
        dtype = torch.promote_types(dtype, torch.float32)
        return -torch.exp(self.A_log.to(dtype)), self.D.to(dtype), self.dt_proj.bias.to(dtype)

    # -- full sequence -------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, return_state: bool = False):
        """x [..., T, D] -> y [..., T, D], starting from a zero state; with `return_state`,
        also the MambaState after the last token (to continue with `step`)."""
        lead, t = x.shape[:-2], x.shape[-2]
        xi, xc, dt, z, B, C = self._scan_inputs(x)
        A, D, dt_bias = self._scan_constants(x.dtype)
        flat = lambda v: v.reshape(-1, t, v.shape[-1]).transpose(1, 2)  # noqa: E731  [M, F, T]
        y = selective_scan(
            flat(xc), flat(dt), A, flat(B), flat(C), D, flat(z), delta_bias=dt_bias, delta_softplus=True,
            return_last_state=return_state, impl=self.scan_impl, chunk_size=self.chunk_size)
        if return_state:
            y, last = y
        out = self.out_proj(y.transpose(1, 2).reshape(*lead, t, self.d_inner))
        if not return_state:
            return out
        K = self.d_conv
        conv = F.pad(xi[..., max(0, t - (K - 1)):, :], (0, 0, max(0, K - 1 - t), 0))  # last K-1 inputs
        return out, MambaState(conv=conv.contiguous(), ssm=last.reshape(*lead, self.d_inner, self.d_state))

    def recomputed(self, norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """self(norm(x)) for training with recomputation in backward (activation checkpointing).
        On the fused C++ scan only x and the scan's chunk-start states are kept, and backward runs
        neither the scan's forward nor out_proj again (`_RecomputedMamba`); elsewhere (CUDA, other
        scans, bf16, T = 0) torch's checkpoint of the same."""
        if (resolve_scan_impl(self.scan_impl, x) == "cpp" and x.device.type == "cpu" and x.shape[-2] > 0
                and x.dtype in (torch.float32, torch.float64) and torch.is_grad_enabled()):
            return _RecomputedMamba.apply(self, norm, x, *norm.parameters(), *self.parameters())
        return checkpoint(lambda v: self(norm(v)), x, use_reentrant=False)

    # -- one token -------------------------------------------------------------------------------
    def step(self, x: torch.Tensor, state: MambaState) -> tuple[torch.Tensor, MambaState]:
        """x [..., D] (one token per sequence) -> (y [..., D], new state). O(1) in sequence length."""
        xi, z = self._in_proj(x).chunk(2, dim=-1)  # [..., d_inner]
        window = torch.cat([state.conv, xi[..., None, :]], dim=-2)  # [..., K, d_inner]
        xc = (window * self.conv_weight.transpose(-1, -2)).sum(-2)  # kernel [(N,) K, d_inner]
        if self.conv_bias is not None:
            xc = xc + self.conv_bias
        xc = F.silu(xc)
        dt, B, C = self._ssm_params(xc)
        delta = F.softplus(dt.float() + self.dt_proj.bias.float())  # [..., d_inner]
        A = -torch.exp(self.A_log.float())
        h = torch.exp(delta[..., None] * A) * state.ssm + (delta * xc.float())[..., None] * B.float()[..., None, :]
        y = (h * C.float()[..., None, :]).sum(-1) + self.D.float() * xc.float()
        y = (y * F.silu(z.float())).to(x.dtype)
        return self.out_proj(y), MambaState(conv=window[..., 1:, :], ssm=h)

    def flops_per_token(self) -> float:
        """Forward FLOPs per token of one sequence: matmuls, conv and the scan (9 per state element)."""
        di, s, r = self.d_inner, self.d_state, self.dt_rank
        matmul = self.d_model * 2 * di + di * (r + 2 * s) + r * di + di * self.d_model
        if self.adapter_up is not None:
            matmul += self.adapter_down.shape[-1] * (self.d_model + 2 * di)
        return 2 * matmul + 2 * di * self.d_conv + 9 * di * s + 2 * di


RECOMPUTE_ROWS = 32768  # sequence positions per slice of _RecomputedMamba's backward (~0.5 GB at D 256)


class _RecomputedMamba(torch.autograd.Function):
    """out = block(norm(x)) on the fused C++ scan, for training with recomputation. Saves x and the
    scan's chunk-start states. Backward recomputes norm, in_proj, conv, x_proj and dt_proj (under
    autograd, for their gradients), runs the scan's backward kernel from the saved states, which
    also returns the scan output out_proj's weight gradient needs: the scan's forward and out_proj
    run once per step instead of twice under a plain checkpoint."""

    @staticmethod
    def _scan_args(block: MambaBlock, x: torch.Tensor):
        """The block's scan inputs for the C++ kernel: u, dt, z, B, C as [M, T, F] (time-major), and
        A, D, dt bias in fp32 (fp64 for fp64 x)."""
        t = x.shape[-2]
        _, *seqs = block._scan_inputs(x)
        flat = [v.reshape(-1, t, v.shape[-1]) for v in seqs]  # u, dt, z, B, C
        return flat, block._scan_constants(x.dtype)

    @staticmethod
    def forward(ctx, block: MambaBlock, norm: nn.Module, x: torch.Tensor, *params: torch.Tensor):
        chunk = block.chunk_size  # 0: the kernel's default, in backward as well
        with torch.no_grad():
            (u, dt, z, B, C), (A, D, bias) = _RecomputedMamba._scan_args(block, norm(x))
            y, starts, _ = cpp_scan_forward(u, dt, A, B, C, D, z, bias, True, chunk)
            out = block.out_proj(y.view(*x.shape[:-1], -1))
        ctx.modules, ctx.chunk = (block, norm), chunk
        ctx.save_for_backward(x, starts)
        return out

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        """In slices of x's first axis of at most RECOMPUTE_ROWS positions each: the recomputed
        activations and their gradients (several times x's size) exist for one slice at a time."""
        block, norm = ctx.modules
        x, starts = ctx.saved_tensors
        params = (*norm.parameters(), *block.parameters())
        xb, gb = (x, g) if x.dim() > 2 else (x[None], g[None])  # a first axis to slice
        n = min(xb.shape[0], math.ceil(x.numel() / x.shape[-1] / RECOMPUTE_ROWS))
        per_index = starts.shape[0] // xb.shape[0]  # scan sequences per index of the first axis
        slice_grads, grads, lo = [], [None] * len(params), 0
        for xs, gs in zip(xb.tensor_split(n), gb.tensor_split(n)):
            hi = lo + xs.shape[0]
            gx, g_params = _RecomputedMamba._slice_backward(ctx, block, norm, params, xs,
                                                            starts[lo * per_index:hi * per_index], gs)
            slice_grads.append(gx)
            grads = [a if b is None else b if a is None else a + b for a, b in zip(grads, g_params)]
            lo = hi
        grad_x = None
        if ctx.needs_input_grad[2]:
            grad_x = (slice_grads[0] if n == 1 else torch.cat(slice_grads)).view_as(x)
        return (None, None, grad_x, *grads)

    @staticmethod
    def _slice_backward(ctx, block: MambaBlock, norm: nn.Module, params, x, starts, g):
        """Gradients (of x or None, of each parameter or None) for one slice of the sequences."""
        with torch.enable_grad():
            # A view, not a leaf: hooks on a module's inputs (FlopCounterMode's module tracker) ask
            # torch._C._will_engine_execute_node about its grad_fn, which refuses leaves under autograd.grad.
            x_in = x.detach().requires_grad_(ctx.needs_input_grad[2]).view_as(x)
            (u, dt, z, B, C), (A, D, bias) = _RecomputedMamba._scan_args(block, norm(x_in))
        g2 = g.reshape(-1, g.shape[-1])  # [M T, D]
        gy = (g2 @ block.out_proj.weight).view_as(u)  # out = y W^T (+ b)
        gu, gdt, gz, gA, gD, gbias, gB, gC, y = cpp_scan_backward(
            u.detach(), dt.detach(), A.detach(), B.detach(), C.detach(), D.detach(), z.detach(), bias.detach(),
            True, ctx.chunk, starts, gy, with_output=True)
        out_grads = {block.out_proj.weight: g2.T @ y.reshape(-1, y.shape[-1]), block.out_proj.bias: g2.sum(0)}
        del gy, y  # [M T, d_inner] each: freed before the recomputed graph's backward
        wanted = [v for v in (x_in, *params) if v.requires_grad]
        found = iter(torch.autograd.grad((u, dt, z, B, C, A, D, bias), wanted, (gu, gdt, gz, gB, gC, gA, gD, gbias),
                                         allow_unused=True))
        grads = [next(found) if v.requires_grad else None for v in (x_in, *params)]
        for i, p in enumerate(params, start=1):  # out_proj's own gradients: not in the recomputed graph
            if p.requires_grad and (p is block.out_proj.weight or p is block.out_proj.bias):
                grads[i] = out_grads[p]
        return grads[0], grads[1:]
