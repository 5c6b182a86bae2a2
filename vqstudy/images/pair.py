"""`vqstudy pair`: a hierarchical VQ-VAE and its capacity-matched single-level twin, same data/steps/seed.

Writes results/<run>/: metrics.json, curves.csv, utilization.png, usage_hist.png, recon_grid.png,
recon_samples.safetensors, summary.md (and the Lightning CSV logs and checkpoints per model).
"""

from __future__ import annotations

import csv
import json
import logging
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from vqstudy.quantize import distributed as D
from vqstudy.images.capacity import count_parameters, match_single_level
from vqstudy.config import load_config, to_dict
from vqstudy.quantize import QuantizerConfig
from vqstudy.images.data.module import ImageDataConfig, ImageDataModule
from vqstudy.images.models import HierarchicalVQVAEConfig, VQVAEConfig, build_model
from vqstudy.images.train import TrainConfig, fit_model

log = logging.getLogger(__name__)

CURVE_KEYS = ("utilization", "perplexity", "effective_bits", "dead_fraction")


@dataclass
class PairConfig:
    """A capacity-matched pair run. Merge order: defaults <- YAML (--config) <- command line."""

    name: str = "default_pair"
    """Run name: outputs go to <out_dir>/<name>/."""
    out_dir: str = "runs"
    """Parent folder of the run folder (metrics, curves, figures)."""
    ckpt_dir: str = "runs/checkpoints"
    """Parent folder of the checkpoints (<ckpt_dir>/<name>/<model>/), kept out of results/."""
    hierarchical: HierarchicalVQVAEConfig = field(default_factory=HierarchicalVQVAEConfig)
    """The two-level model; the single-level twin gets the same bits per image."""
    single_quantizer: QuantizerConfig | None = None
    """Quantizer options of the single-level twin (codebook_size is set by capacity matching); None: the bottom level's."""
    single_downsample: int | None = None
    """Downsampling factor of the twin (None: the hierarchical bottom factor, else the nearest that matches)."""
    data: ImageDataConfig = field(default_factory=ImageDataConfig)
    """Images (embedded photos by default)."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Optimizer, steps, logging."""
    models: tuple[str, ...] = ("hierarchical", "single")
    """Which of the pair to train."""

    def __post_init__(self) -> None:
        bad = sorted(set(self.models) - {"hierarchical", "single"})
        if bad or not self.models:
            raise ValueError(f"PairConfig.models ({list(self.models)}) must be a non-empty subset of ['hierarchical', 'single']")
        self.models = tuple(self.models)


def load_pair_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> PairConfig:
    """Defaults <- YAML file <- `overrides` (nested dicts, e.g. {'train': {'max_steps': 10}})."""
    return load_config(PairConfig, path, overrides)


def single_config(cfg: PairConfig) -> tuple[VQVAEConfig, Any]:
    """The capacity-matched single-level config (with `single_quantizer` options applied) and the match."""
    match = match_single_level(cfg.hierarchical, cfg.data.crop_size, downsample=cfg.single_downsample)
    single = match.single_config
    if cfg.single_quantizer is not None:
        q = replace(cfg.single_quantizer, codebook_size=single.quantizer.codebook_size, dim=single.quantizer.dim)
        single = replace(single, quantizer=q)
    return single, match


def run_pair(cfg: PairConfig, recon_metrics_factory=None, command: str | None = None) -> dict[str, Any]:
    """Train the pair and write every output; returns the metrics dict (also in metrics.json)."""
    import shlex
    import sys
    import time

    from vqstudy.machine import machine_line
    from vqstudy.images.plots import plot_run

    t0 = time.perf_counter()

    run_dir = Path(cfg.out_dir) / cfg.name
    run_dir.mkdir(parents=True, exist_ok=True)
    single, match = single_config(cfg)
    configs = {"hierarchical": cfg.hierarchical, "single": single}
    datamodule = ImageDataModule(cfg.data)
    if recon_metrics_factory is None:
        recon_metrics_factory = default_recon_metrics(cfg.train)
    results: dict[str, Any] = {
        "name": cfg.name,
        "command": command or shlex.join(["vqstudy", *sys.argv[1:]]),
        "config": to_dict(cfg),
        "single_config": to_dict(single),
        "capacity": match.as_row(),
        "models": {},
    }
    samples: dict[str, torch.Tensor] = {}
    for which in cfg.models:
        torch.manual_seed(cfg.train.seed)
        model = build_model(configs[which])
        fit = fit_model(model, datamodule, cfg.train, run_dir, which, recon_metrics=recon_metrics_factory(),
                        ckpt_dir=Path(cfg.ckpt_dir) / cfg.name / which)
        params = count_parameters(model)
        results["models"][which] = {
            "val": fit.val,
            "images_per_second": fit.images_per_second,
            "train_seconds": fit.seconds,
            "params": params._asdict(),
            "bits_per_image": match.hier_bits if which == "hierarchical" else match.single_bits,
            "usage_histograms": fit.module.usage_histograms(),
            "levels": {k: v for k, v in fit.module.levels.items()},
        }
        samples[which] = reconstruct_samples(model, datamodule)
    samples["target"] = next(iter(datamodule.val_dataloader()))[:8]
    if D.rank() != 0:  # under multi-process DDP every rank runs this function; rank 0 writes the outputs
        return results
    write_curves(run_dir, cfg.models)
    save_samples(run_dir / "recon_samples.safetensors", samples)
    results["machine"] = machine_line()
    results["wall_seconds"] = time.perf_counter() - t0
    with open(run_dir / "metrics.json", "w") as f:
        json.dump(results, f, indent=2, default=float)
    plot_run(run_dir)
    (run_dir / "summary.md").write_text(summary_markdown(results))
    return results


def default_recon_metrics(train_cfg: TrainConfig):
    """A factory of ReconstructionMetrics as the training config asks (LPIPS/rFID need offline weights)."""
    from vqstudy.images.metrics import ReconstructionMetrics

    def make():
        return ReconstructionMetrics(lpips=train_cfg.lpips, rfid=train_cfg.rfid, rfid_min_images=train_cfg.rfid_min_images)

    return make


@torch.no_grad()
def reconstruct_samples(model: torch.nn.Module, datamodule: ImageDataModule, n: int = 8) -> torch.Tensor:
    """Reconstructions (n, 3, H, W) of the first n validation images."""
    model.eval()
    images = next(iter(datamodule.val_dataloader()))[:n]
    return model(images.to(next(model.parameters()).device)).recon.clamp(0, 1).cpu()


def save_samples(path: Path, samples: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in samples.items()}, str(path))


def write_curves(run_dir: Path, models: tuple[str, ...]) -> Path:
    """Merge the per-model Lightning CSV logs into run_dir/curves.csv (model, step, key, value)."""
    rows = []
    for which in models:
        path = run_dir / which / "metrics.csv"
        if not path.exists():
            continue
        with open(path) as f:
            for row in csv.DictReader(f):
                for key, value in row.items():
                    if key in ("step", "epoch") or value in ("", None):
                        continue
                    if key.startswith("train/") and key.rsplit("/", 1)[-1] not in CURVE_KEYS + ("recon_loss", "psnr"):
                        continue
                    rows.append({"model": which, "step": int(row["step"]), "key": key, "value": float(value)})
    out = run_dir / "curves.csv"
    with open(out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["model", "step", "key", "value"])
        writer.writeheader()
        writer.writerows(rows)
    return out


def summary_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (model, level): bits, params, utilization, effective bits, PSNR, SSIM, LPIPS, rFID, img/s."""
    rows = []
    for which, res in results["models"].items():
        val = res["val"]
        for level, k in res["levels"].items():
            rows.append(
                {
                    "model": which,
                    "level": level,
                    "K": k,
                    "bits/img": res["bits_per_image"],
                    "params": res["params"]["total"],
                    "utilization": val.get(f"val/{level}/utilization", math.nan),
                    "eff. bits/code": val.get(f"val/{level}/effective_bits", math.nan),
                    "dead": val.get(f"val/{level}/dead_fraction", math.nan),
                    "PSNR": val.get("val/psnr", math.nan),
                    "SSIM": val.get("val/ssim", math.nan),
                    "LPIPS": val.get("val/lpips", math.nan),
                    "rFID": val.get("val/rfid", math.nan),
                    "img/s": res["images_per_second"],
                }
            )
    return rows


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def summary_markdown(results: dict[str, Any]) -> str:
    rows = summary_rows(results)
    cap = results["capacity"]
    lines = [
        f"# Pair run `{results['name']}`",
        "",
        f"Command: `{results.get('command', '')}`",
        "",
        f"Machine: {results.get('machine', 'unknown')}. Wall time: {results.get('wall_seconds', math.nan) / 60:.1f} min.",
        "",
        f"Capacity: hierarchical {cap.get('hier_bits')} bits/image vs single {cap.get('single_bits')} "
        f"(relative gap {cap.get('relative_gap', math.nan):.4%}).",
        "Validation on held-out images (no crop of them is trained on).",
        "",
    ]
    if rows:
        keys = list(rows[0])
        lines += ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
        lines += ["| " + " | ".join(_fmt(r[k]) for k in keys) + " |" for r in rows]
    return "\n".join(lines) + "\n"
