"""Figures from results files (never from live models): `vqstudy plot <run_dir>` redraws them."""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from pathlib import Path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def read_curves(path: Path) -> dict[tuple[str, str], list[tuple[int, float]]]:
    """curves.csv -> {(model, key): [(step, value), ...]} sorted by step."""
    curves: dict[tuple[str, str], list[tuple[int, float]]] = defaultdict(list)
    with open(path) as f:
        for row in csv.DictReader(f):
            curves[(row["model"], row["key"])].append((int(row["step"]), float(row["value"])))
    return {k: sorted(v) for k, v in curves.items()}


def plot_utilization(run_dir: Path, out: Path | None = None) -> Path:
    """Codebook utilization and effective bits over training steps, per model and level."""
    plt = _pyplot()
    curves = read_curves(run_dir / "curves.csv")
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for (model, key), points in sorted(curves.items()):
        if not key.startswith("train/"):
            continue
        level, metric = key.split("/")[1], key.split("/")[-1]
        for ax, name in zip(axes, ("utilization", "effective_bits")):
            if metric == name:
                steps, values = zip(*points)
                ax.plot(steps, values, marker=".", label=f"{model} / {level}")
    axes[0].set(xlabel="training step", ylabel="utilization (share of codes used per window)", ylim=(0, 1.05))
    axes[1].set(xlabel="training step", ylabel="effective bits per code (log2 perplexity)")
    for ax in axes:
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.suptitle(run_dir.name)
    fig.tight_layout()
    out = out or run_dir / "utilization.png"
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def plot_usage_hist(run_dir: Path, out: Path | None = None) -> Path:
    """Sorted code frequencies (log scale) per model and level, from the last validation pass."""
    plt = _pyplot()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    fig, ax = plt.subplots(figsize=(6, 4))
    for model, res in metrics["models"].items():
        for level, counts in res.get("usage_histograms", {}).items():
            total = sum(counts) or 1
            freqs = sorted((c / total for c in counts), reverse=True)
            ax.plot(range(1, len(freqs) + 1), [max(f, 1e-7) for f in freqs], label=f"{model} / {level} (K={len(freqs)})")
    ax.set(xscale="log", yscale="log", xlabel="code rank", ylabel="usage frequency (validation)")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    out = out or run_dir / "usage_hist.png"
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def plot_recon_grid(run_dir: Path, out: Path | None = None) -> Path | None:
    """Rows: held-out targets, then each model's reconstructions (from recon_samples.safetensors)."""
    path = run_dir / "recon_samples.safetensors"
    if not path.exists():
        return None
    import torch
    from safetensors.torch import load_file
    from torchvision.utils import make_grid

    plt = _pyplot()
    samples = load_file(str(path))
    names = ["target"] + [k for k in samples if k != "target"]
    n = samples["target"].shape[0]
    grid = make_grid(torch.cat([samples[k][:n] for k in names]), nrow=n, padding=2)  # (3, H', W')
    fig, ax = plt.subplots(figsize=(1.4 * n, 1.5 * len(names)))
    ax.imshow(grid.permute(1, 2, 0).numpy())
    ax.set_yticks([(i + 0.5) * grid.shape[1] / len(names) for i in range(len(names))], names)
    ax.set_xticks([])
    fig.tight_layout()
    out = out or run_dir / "recon_grid.png"
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def plot_run(run_dir: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    """Redraw every figure of a pair run directory into `out_dir` (default: the run directory itself)."""
    run_dir = Path(run_dir)
    if not (run_dir / "curves.csv").exists():
        raise FileNotFoundError(f"{run_dir}: no curves.csv; expected a run directory written by `vqstudy pair`")
    out = Path(out_dir) if out_dir is not None else run_dir
    out.mkdir(parents=True, exist_ok=True)
    made = [plot_utilization(run_dir, out / "utilization.png"), plot_usage_hist(run_dir, out / "usage_hist.png"),
            plot_recon_grid(run_dir, out / "recon_grid.png")]
    return [p for p in made if p is not None]
