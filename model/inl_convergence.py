"""Convergence made visible: the integrator's energy and update norm per layer and iteration,
and the iterations each token actually used under adaptive stopping.

    trace = trace_convergence(model, ids)           # numbers only
    plot_convergence(model, ids, "convergence.png")  # PNG (matplotlib, Agg backend)

Energy at iteration k (token-wise, averaged over the prompt's tokens), measured against the
fixed point of the update with iteration k's coefficients, v* = 0 and
z*_k = mu + (1 - alpha_k) v_target,k / beta_k:  E_k = ||z_k - z*_k||^2 + ||v_k||^2 (zero once
converged; ||z - mu|| is not: the equilibrium is shifted by the target velocity);
update U_k = ||z_k - z_{k-1}||. With constant coefficients the iteration converges exactly when
p = dt * gate * beta < 2 (1 + alpha) (kernels/integrator/linear_dynamics.py, `is_stable`).
Works for INLModel and for HF models whose FFNs were replaced by `replace_ffn_with_inl`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn

from .inl import IntegratorBranch


@dataclass
class ConvergenceTrace:
    energy: torch.Tensor            # [L, K] mean over tokens of ||z_k - z*_k||^2 + ||v_k||^2
    update: torch.Tensor            # [L, K] mean over tokens of ||z_k - z_{k-1}||
    iterations: Optional[torch.Tensor]  # [L, T] iterations used per token with adaptive stopping (batch row 0)
    threshold: float
    min_iterations: int


def _integrators(model: nn.Module) -> list[IntegratorBranch]:
    its = [m for m in model.modules() if isinstance(m, IntegratorBranch)]
    if not its:
        raise ValueError(f"{type(model).__name__} has no INL integrator")
    return sorted(its, key=lambda m: m.layer)


@torch.no_grad()
def trace_convergence(model: nn.Module, input_ids: torch.Tensor, threshold: Optional[float] = None,
                      min_iterations: Optional[int] = None) -> ConvergenceTrace:
    """Run `input_ids` ([T] or [B, T]) twice in eval mode: with all K iterations (recording energy
    and update norms per iteration) and with per-token adaptive stopping (recording iterations)."""
    ids = input_ids[None] if input_ids.dim() == 1 else input_ids
    its = _integrators(model)
    was_training = model.training
    saved = [(it.adaptive_stopping, it.stop_threshold, it.min_iterations) for it in its]
    model.eval()
    try:
        for it in its:
            it.trace = []
        model(ids)
        energy = torch.stack([torch.stack([r["energy"].mean() for r in it.trace]) for it in its])
        update = torch.stack([torch.stack([r["update"].mean() for r in it.trace]) for it in its])
        for it in its:
            it.trace = None
            it.adaptive_stopping = True
            if threshold is not None:
                it.stop_threshold = threshold
            if min_iterations is not None:
                it.min_iterations = min_iterations
        model(ids)
        iterations = torch.stack([it.last_iterations[0] for it in its]).cpu()
        thr, mi = its[0].stop_threshold, its[0].min_iterations
    finally:
        for it, (a, t, m) in zip(its, saved):
            it.trace = None
            it.adaptive_stopping, it.stop_threshold, it.min_iterations = a, t, m
        model.train(was_training)
    return ConvergenceTrace(energy, update, iterations, thr, mi)


def plot_convergence(model: nn.Module, input_ids: torch.Tensor, path: str | Path, threshold: Optional[float] = None,
                     min_iterations: Optional[int] = None, tokens: Optional[list[str]] = None) -> Path:
    """Write a PNG with three panels: energy per iteration (one line per layer, log scale),
    update norm per iteration, and the iterations used per (layer, token) under adaptive stopping."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tr = trace_convergence(model, input_ids, threshold, min_iterations)
    n_layers, k = tr.energy.shape
    steps = range(1, k + 1)
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    cmap = plt.get_cmap("viridis")
    for layer in range(n_layers):
        color = cmap(layer / max(1, n_layers - 1))
        axes[0].plot(steps, tr.energy[layer].numpy(), marker="o", color=color, label=f"layer {layer}")
        axes[1].plot(steps, tr.update[layer].numpy(), marker="o", color=color)
    axes[0].set(title="energy ||z-z*||^2 + ||v||^2", xlabel="iteration", yscale="log")
    axes[1].axhline(tr.threshold, color="red", linestyle="--", label=f"threshold {tr.threshold:g}")
    axes[1].set(title="update ||z_k - z_(k-1)||", xlabel="iteration", yscale="log")
    axes[1].legend(fontsize=7)
    if n_layers <= 12:
        axes[0].legend(fontsize=7)
    im = axes[2].imshow(tr.iterations.numpy(), aspect="auto", cmap="magma", vmin=1, vmax=k, interpolation="nearest")
    axes[2].set(title=f"iterations used (adaptive, min {tr.min_iterations})", xlabel="token", ylabel="layer")
    if tokens is not None and len(tokens) <= 64:
        axes[2].set_xticks(range(len(tokens)), tokens, fontsize=6, rotation=90)
    fig.colorbar(im, ax=axes[2])
    saved = 1 - tr.iterations.float().mean().item() / k
    fig.suptitle(f"INL convergence: {n_layers} layers x {k} iterations; adaptive stopping saves {saved:.0%} of iterations")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
