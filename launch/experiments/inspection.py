"""Inspection of a trained neuron graph (`neurograph inspect`): what an INN's neurons became and
how they route, against the untrained model with the same initialisation; how many integrator
iterations an INL spends per token and where its controller sits against the stability region.

Everything is measured on held-out text (the first samples of the run's validation split) in eval
mode through forward hooks: the model runs its own forward, unchanged; the routers' mixing weights
are recomputed from their inputs with their own projections (`routing_weights`).

INN, per layer, on the neuron states after the layer (h [B, N, T, D]):
- neuron_mean, neuron_std, neuron_abs_mean [N]: each neuron's state over tokens and channels;
- similarity_matrix [N, N]: cosine similarity of two neurons' states at the same token, averaged
  over tokens; similarity: its mean off the diagonal; distinctness = 1 - similarity (0 when all
  neurons carry the same state, as in the authors' symmetric variant);
- attention [N, N]: row i, how neuron i's update mixes neurons j, averaged over tokens and heads
  (rows sum to 1); in_degree [N]: its column sums (1 each when uniform, above 1 for a hub);
  entropy [N]: each query neuron's mixing entropy in nats, averaged over tokens and heads (log N
  when uniform). What the graph is depends on the routing: ROUTING_SHOWN.
INL, per layer: the iterations each token uses under adaptive stopping (the run's min_iterations
and stop_threshold), and the controller's (alpha, p = dt gate beta) over every (token, channel,
iteration) run, against the analytic stability region p < 2 (1 + alpha) (kernels/integrator/linear_dynamics.py).
"""
from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from neurograph.data_pipeline import iter_split
from neurograph.kernels.integrator import controller_activations
from neurograph.model import build_model
from neurograph.model.inl import IntegratorController
from neurograph.model.neuron_router import HierarchicalRouter, StaticRouter, TopKRouter
from neurograph.trainer.checkpoint import CheckpointManager

from ..config import ConfigError, NeuroGraphConfig
from ..inference import load_run, load_run_config

ARCHS = ("inn", "inl")
BATCH = 4  # held-out sequences per forward
ROUTE_CHUNK = 2**22  # bound on the (token, neuron, neuron) mixing weights recomputed at a time, per head
SUMMARY = "summary.json"
ROUTING_SHOWN = {
    "dense": "attention over all neurons",
    "topk": "attention over each neuron's top-k picked neurons (0 for the others)",
    "hierarchical": "attention inside groups of group_size neurons (block diagonal; one group when N <= "
                    "group_size); the attention among group summaries is not shown",
    "static": "the fixed random mixing matrix (not learned: the same before and after training)",
    "none": "no graph: with routing none the neurons do not communicate",
}
ALPHA_BINS, P_BINS, P_RANGE = 50, 60, (1e-4, 10.0)  # (alpha, p) histogram: alpha in [0, 1], p log-spaced


def inspect_run(run: str, out: str | Path, checkpoint: str = "latest", sequences: int = 8) -> dict:
    """Inspect a run's checkpoint on `sequences` held-out samples: write the figures and
    summary.json into `out` and return the summary."""
    if sequences <= 0:
        raise ConfigError(f"--sequences must be > 0, got {sequences}")
    if not (Path(run) / "config.yaml").is_file():
        raise ConfigError(f"--run {run}: not a training run directory (no config.yaml)")
    cfg = load_run_config(Path(run))
    if cfg.model.arch not in ARCHS:
        raise ConfigError(f"inspect supports {' and '.join(ARCHS)}, the run has model.arch={cfg.model.arch}")
    model, _ = load_run(run, checkpoint)
    ids = held_out(cfg.data.path, sequences)
    tag = CheckpointManager(Path(run) / "checkpoints").resolve(checkpoint)
    summary = {"run": str(Path(run).resolve()), "checkpoint": tag, "arch": cfg.model.arch,
               "sequences": ids.shape[0], "tokens": ids.numel()}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.model.arch == "inn":
        summary["baseline"] = (f"untrained: the run's model as training started (seed {cfg.trainer.seed}"
                               + (f", weights {cfg.trainer.init_weights})" if cfg.trainer.init_weights else ")"))
        summary |= inspect_inn(model, untrained_model(cfg), ids, out)
    else:
        summary |= inspect_inl(model, ids, out)
    (out / SUMMARY).write_text(json.dumps(summary, indent=1))
    return summary


def summary_lines(summary: dict, out: str | Path) -> list[str]:
    """What `neurograph inspect` prints: the files written and one line per layer."""
    lines = [f"{summary['arch']} {summary['checkpoint']} on {summary['tokens']} held-out tokens: wrote "
             f"{', '.join([SUMMARY, *summary['figures']])} to {out}"]
    if summary["arch"] == "inn":
        for layer in summary["headline"]:
            u, t = layer["untrained"], layer["trained"]
            hub = f"; hub neuron {t['hub']} (in-degree {t['max_in_degree']:.2f})" if t["hub"] is not None else ""
            lines.append(f"  layer {layer['layer']}: distinctness {t['distinctness']:.4f} "
                         f"(untrained {u['distinctness']:.4f}){hub}")
    else:
        for layer in summary["layers"]:
            lines.append(f"  layer {layer['layer']}: {layer['mean_iterations']:.2f} of {summary['num_iterations']} "
                         f"iterations per token, {layer['stable_fraction']:.1%} of controller outputs in the "
                         "stability region")
    return lines


def held_out(data_dir: str, sequences: int) -> torch.Tensor:
    """[S, seq_len] token ids: the first `sequences` samples of the prepared data's validation split."""
    rows = [row[:-1] for _, row in itertools.islice(iter_split(data_dir, "val"), sequences)]
    if not rows:
        raise ConfigError(f"data {data_dir}: the validation split is empty (prepare it with --val-fraction > 0)")
    return torch.from_numpy(np.stack(rows).astype(np.int64))


def untrained_model(cfg: NeuroGraphConfig) -> nn.Module:
    """The run's model as training started: built right after seeding torch with trainer.seed (as the
    trainer does), or trainer.init_weights when the run started from other weights."""
    torch.manual_seed(cfg.trainer.seed)
    model = build_model(cfg.model)
    if cfg.trainer.init_weights:
        from safetensors.torch import load_file

        model.load_state_dict(load_file(cfg.trainer.init_weights), strict=False)
    return model.eval()


# ---- INN ---------------------------------------------------------------------------------------

def routing_weights(router: nn.Module, m: torch.Tensor) -> torch.Tensor:
    """Router input m [M, N, D] -> mixing weights [M, H, N, N] (row i: how neuron i's update mixes
    neurons j), recomputed with the router's own projections."""
    M, N, _ = m.shape
    if isinstance(router, StaticRouter):
        return router.mixing.expand(M, 1, N, N)
    if isinstance(router, HierarchicalRouter):
        groups = N // router.group_size if router.upper is not None else 1
        w = routing_weights(router.local, m.reshape(M * groups, N // groups, -1))  # [M*g, H, G, G]
        w = w.view(M, groups, *w.shape[1:])
        return torch.einsum("mghij,gk->mhgikj", w, torch.eye(groups)).reshape(M, -1, N, N)  # block diagonal
    q, k, _ = router.heads(m)  # [M, N, H, hd]
    logits = torch.einsum("mihd,mjhd->mhij", q, k) / math.sqrt(q.shape[-1])  # [M, H, N, N]
    if isinstance(router, TopKRouter):
        idx = router.select(q, k)[:, None].expand(-1, logits.shape[1], -1, -1)  # [M, H, N, k]
        picked = torch.zeros_like(logits, dtype=torch.bool).scatter_(-1, idx, True)
        logits = logits.masked_fill(~picked, float("-inf"))
    return torch.softmax(logits, dim=-1)


class _INNProbe:
    """Hooks on an INN's layers (their output states) and routers (their inputs) that sum the
    module docstring's statistics over every forward run while attached (float64 sums)."""

    def __init__(self, model: nn.Module):
        c = model.cfg
        L, N, sums = c.n_layer, c.n_neurons, dict(dtype=torch.float64)
        self.d_model = c.d_model
        self.moments = torch.zeros(L, 3, N, **sums)  # sums of h, h^2, |h| per neuron
        self.cosine = torch.zeros(L, N, N, **sums)  # sums over tokens of cos(h_i, h_j)
        self.attention = torch.zeros(L, N, N, **sums)  # sums over tokens and heads of the weights
        self.entropy = torch.zeros(L, N, **sums)
        self.tokens, self.rows = torch.zeros(L), torch.zeros(L)  # tokens seen, (token, head) rows seen
        self.routed = model.layers[0].router is not None
        self.handles = []
        for i, layer in enumerate(model.layers):
            self.handles.append(layer.register_forward_hook(lambda _, __, h, i=i: self._states(i, h)))
            if self.routed:
                self.handles.append(layer.router.register_forward_pre_hook(
                    lambda router, args, i=i: self._routes(i, router, args[0])))

    def _states(self, i: int, h: torch.Tensor) -> None:
        h = h.double()  # [B, N, T, D]
        self.moments[i] += torch.stack([h.sum((0, 2, 3)), h.square().sum((0, 2, 3)), h.abs().sum((0, 2, 3))])
        u = F.normalize(h, dim=-1)
        self.cosine[i] += torch.einsum("bitd,bjtd->ij", u, u)
        self.tokens[i] += h.shape[0] * h.shape[2]

    def _routes(self, i: int, router: nn.Module, m: torch.Tensor) -> None:
        for part in m.split(max(1, ROUTE_CHUNK // m.shape[1] ** 2)):  # m [M, N, D]
            w = routing_weights(router, part)  # [M', H, N, N]
            self.attention[i] += w.sum((0, 1), dtype=torch.float64)
            self.entropy[i] -= torch.special.xlogy(w, w).sum(-1).sum((0, 1), dtype=torch.float64)
            self.rows[i] += w.shape[0] * w.shape[1]

    def layers(self) -> list[dict]:
        n = self.cosine.shape[-1]
        out = []
        for i, tokens in enumerate(self.tokens.tolist()):
            mean, square, absolute = self.moments[i] / (tokens * self.d_model)
            sim = self.cosine[i] / tokens
            similarity = ((sim.sum() - sim.diagonal().sum()) / (n * (n - 1))).item()
            layer = {"layer": i, "similarity": similarity, "distinctness": 1.0 - similarity,
                     "neuron_mean": mean.tolist(), "neuron_std": (square - mean.square()).clamp_min(0).sqrt().tolist(),
                     "neuron_abs_mean": absolute.tolist(), "similarity_matrix": sim.tolist(),
                     "attention": None, "in_degree": None, "entropy": None}
            if self.routed:
                attention = self.attention[i] / self.rows[i]
                layer |= {"attention": attention.tolist(), "in_degree": attention.sum(0).tolist(),
                          "entropy": (self.entropy[i] / self.rows[i]).tolist()}
            out.append(layer)
        return out


@torch.no_grad()
def inn_statistics(model: nn.Module, ids: torch.Tensor) -> list[dict]:
    """The module docstring's INN statistics per layer of `model` (put in eval mode) on ids [S, T]."""
    if model.cfg.n_neurons < 2:
        raise ConfigError("inspect needs at least 2 neurons (model.n_neurons)")
    model.eval()
    probe = _INNProbe(model)
    try:
        for batch in ids.split(BATCH):
            model(batch)
    finally:
        for handle in probe.handles:
            handle.remove()
    return probe.layers()


def inspect_inn(model: nn.Module, untrained: nn.Module, ids: torch.Tensor, out: Path) -> dict:
    """Statistics of the trained and the untrained model, their figures in `out`, and per layer
    the headline numbers side by side."""
    c = model.cfg
    stats = {"trained": inn_statistics(model, ids), "untrained": inn_statistics(untrained, ids)}
    pairs = list(zip(stats["untrained"], stats["trained"]))
    figures = {"inn_similarity.png": [[(f"layer {u['layer']}, {name}: distinctness {s['distinctness']:.3f}",
                                        s["similarity_matrix"]) for name, s in (("untrained", u), ("trained", t))]
                                      for u, t in pairs]}
    rows = [("mean |h|", "neuron_abs_mean"), ("std of h", "neuron_std")]
    if c.routing != "none":
        figures["inn_routing.png"] = [[(f"layer {u['layer']}, {name}", s["attention"])
                                       for name, s in (("untrained", u), ("trained", t))] for u, t in pairs]
        rows += [("in-degree", "in_degree"), ("entropy (nats)", "entropy")]
    figures["inn_neurons.png"] = [[(f"{label}, {name}", [layer[key] for layer in stats[name]])
                                   for name in ("untrained", "trained")] for label, key in rows]
    axes = {"inn_similarity.png": ("neuron", "neuron"), "inn_routing.png": ("key neuron j", "query neuron i"),
            "inn_neurons.png": ("neuron", "layer")}
    for name, grid in figures.items():
        _heatmaps(out / name, f"INN ({c.n_neurons} neurons, routing {c.routing}, neuron_identity "
                              f"{c.neuron_identity}) on {ids.numel()} held-out tokens", grid, *axes[name])
    headline = [{"layer": u["layer"], "untrained": _headline(u), "trained": _headline(t)} for u, t in pairs]
    return {"model": {k: getattr(c, k) for k in ("n_neurons", "n_layer", "routing", "neuron_identity",
                                                  "per_neuron_conv", "adapter_rank")} | {"symmetric": c.symmetric},
            "routing_shown": ROUTING_SHOWN[c.routing], "headline": headline, "layers": stats,
            "figures": sorted(figures)}


def _headline(layer: dict) -> dict:
    """A layer's distinctness, hub (the neuron with the largest in-degree), its in-degree and the
    mean entropy (those three None without routing)."""
    degrees = layer["in_degree"]
    routed = degrees is not None
    return {"distinctness": layer["distinctness"], "hub": int(np.argmax(degrees)) if routed else None,
            "max_in_degree": max(degrees) if routed else None,
            "mean_entropy": float(np.mean(layer["entropy"])) if routed else None}


# ---- INL ---------------------------------------------------------------------------------------

class _INLProbe:
    """Hooks on an INL's integrators (which layer runs) and controllers (their raw outputs) that sum
    (alpha, p) statistics and histogram them per layer over every controller call."""

    def __init__(self, model: nn.Module):
        L = model.cfg.n_layer
        self.dt, self.layer = model.cfg.dt, 0
        self.histogram = torch.zeros(L, ALPHA_BINS, P_BINS)
        self.sums = torch.zeros(L, 4, dtype=torch.float64)  # samples, alpha, p, stable samples
        self.worst = torch.zeros(L)  # max of p / (2 (1 + alpha))
        controllers = [m for m in model.modules() if isinstance(m, IntegratorController)]
        self.handles = [it.register_forward_pre_hook(lambda it, _: setattr(self, "layer", it.layer))
                        for it in model.integrators()]
        self.handles += [c.register_forward_hook(lambda _, __, raw: self._controller(raw)) for c in controllers]

    def _controller(self, raw: torch.Tensor) -> None:
        alpha, beta, gate, _ = (x.float().flatten() for x in controller_activations(raw))  # [tokens * D] each
        p = self.dt * gate * beta
        ratio = p / (2 * (1 + alpha))
        self.sums[self.layer] += torch.stack([torch.ones_like(alpha), alpha, p, (ratio < 1).float()]).sum(
            1, dtype=torch.float64)
        self.worst[self.layer] = torch.maximum(self.worst[self.layer], ratio.max())
        logp = p.clamp(*P_RANGE).log10()
        self.histogram[self.layer] += torch.histogramdd(torch.stack([alpha, logp], 1), bins=[ALPHA_BINS, P_BINS],
                                                        range=[0.0, 1.0, *map(math.log10, P_RANGE)]).hist


@torch.no_grad()
def inl_statistics(model: nn.Module, ids: torch.Tensor) -> tuple[torch.Tensor, _INLProbe]:
    """(iterations used [L, S, T], controller probe) of `model` on ids [S, T], run in eval mode with
    adaptive stopping on (left on) and the integrators' PyTorch loop (where the controller is called)."""
    model.eval()
    model.set_adaptive_stopping(True)
    for it in model.integrators():
        it.impl = "reference"
    probe = _INLProbe(model)
    iterations = []
    try:
        for batch in ids.split(BATCH):
            model(batch)
            iterations.append(model.iterations_used())  # [L, B, T]
    finally:
        for handle in probe.handles:
            handle.remove()
    return torch.cat(iterations, 1), probe


def inspect_inl(model: nn.Module, ids: torch.Tensor, out: Path) -> dict:
    """Iterations and controller statistics of an INL, their figures in `out`."""
    c = model.cfg
    iterations, probe = inl_statistics(model, ids)
    first = model.integrators()[0]
    counts, alpha, p, stable = probe.sums.T
    layers = [{"layer": i, "mean_iterations": used.float().mean().item(),
               "iterations_histogram": torch.bincount(used.flatten(), minlength=c.num_iterations + 1)[1:].tolist(),
               "alpha_mean": (alpha[i] / counts[i]).item(), "p_mean": (p[i] / counts[i]).item(),
               "stable_fraction": (stable[i] / counts[i]).item(), "max_p_over_bound": probe.worst[i].item(),
               "controller_samples": int(counts[i])} for i, used in enumerate(iterations)]
    _plot_inl(out, iterations, probe, layers, c.num_iterations)
    mean = iterations.float().mean().item()
    return {"num_iterations": c.num_iterations, "min_iterations": first.min_iterations,
            "stop_threshold": first.stop_threshold, "dt": c.dt, "mean_iterations": mean,
            "saved_fraction": 1 - mean / c.num_iterations,
            "stability_region": "p = dt * gate * beta < 2 (1 + alpha)", "layers": layers,
            "iterations_per_token": iterations.tolist(), "figures": ["inl_alpha_p.png", "inl_iterations.png"]}


# ---- figures -----------------------------------------------------------------------------------

def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _heatmaps(path: Path, title: str, grid: list[list[tuple[str, list]]], xlabel: str, ylabel: str) -> None:
    """A PNG of heat maps: grid[row][col] = (panel title, matrix); each row shares one colour scale."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(len(grid), len(grid[0]), figsize=(4.5 * len(grid[0]), 3.5 * len(grid)),
                             squeeze=False, layout="constrained")
    for row, ax_row in zip(grid, axes):
        mats = [np.asarray(m, dtype=float) for _, m in row]
        lo, hi = min(m.min() for m in mats), max(m.max() for m in mats)
        for (name, _), mat, ax in zip(row, mats, ax_row):
            im = ax.imshow(mat, vmin=lo, vmax=hi, cmap="viridis", interpolation="nearest", aspect="auto")
            ax.set(title=name, xlabel=xlabel, ylabel=ylabel)
            for axis in (ax.xaxis, ax.yaxis):
                axis.set_major_locator(MaxNLocator(integer=True))  # neuron and layer indices
        fig.colorbar(im, ax=ax_row.tolist())
    fig.suptitle(title)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_inl(out: Path, iterations: torch.Tensor, probe: _INLProbe, layers: list[dict], k: int) -> None:
    """inl_iterations.png: iterations per (layer, token) and their mean per layer; inl_alpha_p.png:
    per layer, the (alpha, p) histogram (log counts) under the boundary p = 2 (1 + alpha)."""
    plt = _pyplot()
    n_layers, tokens = iterations.shape[0], iterations[0].numel()
    fig, (heat, bars) = plt.subplots(1, 2, figsize=(14, 3 + 0.25 * n_layers), width_ratios=(4, 1),
                                     layout="constrained")
    im = heat.imshow(iterations.flatten(1).numpy(), aspect="auto", cmap="magma", vmin=1, vmax=k,
                     interpolation="nearest")
    heat.set(title=f"iterations used per token (adaptive stopping; {iterations.shape[1]} held-out sequences, one after "
                   "the other)", xlabel="token", ylabel="layer", yticks=range(n_layers))
    fig.colorbar(im, ax=heat)
    bars.barh(range(n_layers), [layer["mean_iterations"] for layer in layers])
    bars.axvline(k, color="red", linestyle="--", label=f"K = {k}")
    bars.set(title="mean per layer", xlabel="iterations", ylim=(n_layers - 0.5, -0.5), yticks=range(n_layers))
    bars.legend(fontsize=7)
    fig.suptitle(f"INL: {tokens} held-out tokens, {n_layers} layers")
    fig.savefig(out / "inl_iterations.png", dpi=100)
    plt.close(fig)

    cols, rows = min(n_layers, 4), math.ceil(n_layers / 4)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.6 * rows), squeeze=False, layout="constrained")
    alpha_edges = np.linspace(0, 1, ALPHA_BINS + 1)
    p_edges = np.logspace(*np.log10(P_RANGE), P_BINS + 1)
    for i, ax in enumerate(axes.flat):
        if i >= n_layers:
            ax.axis("off")
            continue
        mesh = ax.pcolormesh(alpha_edges, p_edges, probe.histogram[i].T.log1p().numpy(), cmap="Blues")
        ax.plot(alpha_edges, 2 * (1 + alpha_edges), color="red", label="p = 2 (1 + alpha)")
        ax.fill_between(alpha_edges, 2 * (1 + alpha_edges), P_RANGE[1], color="red", alpha=0.15, label="unstable")
        ax.set(yscale="log", xlabel="alpha (damping)", ylabel="p = dt gate beta",
               title=f"layer {i}: {layers[i]['stable_fraction']:.1%} stable")
        ax.legend(fontsize=7, loc="lower left")
        fig.colorbar(mesh, ax=ax, label="log(1 + count)")
    fig.suptitle("INL controller over every (token, channel, iteration) run on held-out text")
    fig.savefig(out / "inl_alpha_p.png", dpi=100)
    plt.close(fig)
