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


def plot_learning_curves(runs: list[tuple[str, int, str]], out: Path, smooth: int = 20) -> Path:
    """Training PSNR (per-batch, moving average over `smooth` steps) and per-window utilization against step,
    mean over seeds, one line per variant; one column per model. `runs`: (variant, seed, run_dir)."""
    import numpy as np

    plt = _pyplot()
    series: dict[tuple[str, str, str], list[list[tuple[int, float]]]] = defaultdict(list)
    for variant, _, run_dir in runs:
        path = Path(run_dir) / "curves.csv"
        if not path.is_file():
            continue
        for (model, key), points in read_curves(path).items():
            if key == "train/psnr" or key in ("train/code/utilization", "train/bottom/utilization", "train/top/utilization"):
                series[(model, key, variant)].append(points)
    models = sorted({m for m, _, _ in series})
    fig, axes = plt.subplots(2, max(len(models), 1), figsize=(6 * max(len(models), 1), 7), squeeze=False)
    for col, model in enumerate(models):
        for (m, key, variant), runs_points in sorted(series.items()):
            if m != model:
                continue
            steps = sorted(set.intersection(*(set(s for s, _ in pts) for pts in runs_points)))
            if not steps:
                continue
            mean = np.array([np.mean([dict(pts)[s] for pts in runs_points]) for s in steps])
            if key == "train/psnr":
                kernel = np.ones(min(smooth, len(mean))) / min(smooth, len(mean))
                axes[0][col].plot(steps[len(kernel) - 1:], np.convolve(mean, kernel, mode="valid"), label=variant)
            else:
                level = key.split("/")[1]
                axes[1][col].plot(steps, mean, marker=".", label=f"{variant} / {level}")
        axes[0][col].set(title=model, xlabel="training step", ylabel=f"train PSNR (dB, {smooth}-step mean)")
        axes[1][col].set(xlabel="training step", ylabel="utilization per window", ylim=(0, 1.05))
    for ax in axes.flat:
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def diverse_tiles(sources: list[str], images, per_photo: int = 2) -> list[int]:
    """Indices of validation tiles spread over photos: per photo, its most and its median-textured tile (pixel std)."""
    by_photo: dict[str, list[tuple[float, int]]] = defaultdict(list)
    for i, name in enumerate(sources):
        by_photo[name].append((float(images[i].std()), i))
    picked = []
    for tiles in by_photo.values():
        tiles.sort()
        picked += [tiles[-1][1], tiles[len(tiles) // 2][1]][:per_photo]
    return picked


def plot_study_recon_grid(plan, done: list[tuple[str, int, str]], out: Path, budget_bits: float,
                          rows: tuple[tuple[str, str], ...] = (("full", "hierarchical"), ("full", "single"),
                                                               ("rotation", "single"), ("simvq", "single"),
                                                               ("plain", "hierarchical"))) -> Path | None:
    """Targets, JPEG, WebP and trained models' reconstructions of diverse validation tiles of the first seed."""
    import torch
    from torchvision.utils import make_grid

    from vqstudy.images.classical import code_at_budget
    from vqstudy.images.data.module import ImageDataModule
    from vqstudy.images.evaluate import load_model

    seed = plan.seeds[0]
    first = {name: cfg for name, s, cfg in plan.runs() if s == seed}
    if not first:
        return None
    data = ImageDataModule(next(iter(first.values())).data)
    data.setup()
    tiles = [data.val_ds[i] for i in range(len(data.val_ds))]
    pick = diverse_tiles([t[0] for t in data.val_ds.tiles], tiles)[:10]
    targets = torch.stack([tiles[i] for i in pick])  # (n, 3, c, c)
    named = [("target", targets)]
    for codec in ("jpeg", "webp"):
        named.append((f"{codec} {budget_bits:.0f} bits", torch.stack([code_at_budget(t, codec, budget_bits).image for t in targets])))
    paths = {(v, s): p for v, s, p in done}
    for variant, model in rows:
        folder = Path(paths.get((variant, seed), "")) / model
        if not (folder / "model.safetensors").is_file():
            continue
        net = load_model(folder)
        with torch.no_grad():
            named.append((f"{model[:4]} {variant}", net(targets).recon.clamp(0, 1)))
    plt = _pyplot()
    n = targets.shape[0]
    grid = make_grid(torch.cat([x for _, x in named]), nrow=n, padding=2)  # (3, H', W')
    fig, ax = plt.subplots(figsize=(1.2 * n + 1.5, 1.25 * len(named)))
    ax.imshow(grid.permute(1, 2, 0).numpy())
    ax.set_yticks([(i + 0.5) * grid.shape[1] / len(named) for i in range(len(named))], [k for k, _ in named], fontsize=8)
    ax.set_xticks([])
    ax.set_title(f"validation tiles of seed {seed} (photos {', '.join(sorted(set(data.val_ds.tiles[i][0] for i in pick)))})", fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
