"""`vqstudy pair`: a hierarchical VQ-VAE and its capacity-matched single-level twin, same data/steps/seed.

Writes <out_dir>/<name>/ in this order, so that a failure in reporting never loses a trained model
or its numbers: <model>/model.safetensors + model.json (final weights), <model>/per_image.csv,
curves.csv, metrics.json, summary.md; then the reporting: recon_samples.safetensors,
utilization.png, usage_hist.png, recon_grid.png, learning_curves.png (an error there is logged and
re-raised after the core files exist). Lightning CSV logs per model; checkpoints under ckpt_dir.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch

from vqstudy.quantize import distributed as D
from vqstudy.images.capacity import CapacityMatch, count_parameters, match_single_level
from vqstudy.config import load_config, to_dict
from vqstudy.quantize import QuantizerConfig
from vqstudy.images.data.module import ImageDataConfig, ImageDataModule
from vqstudy.images.evaluate import PER_IMAGE, evaluate, image_sources, lpips_model_for, save_model, write_per_image
from vqstudy.images.config import HierarchicalVQVAEConfig, VQVAEConfig
from vqstudy.images.models import build_model
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
    single_quantizer: dict[str, Any] = field(default_factory=dict)
    """Quantizer fields in which the single-level twin differs from the hierarchical bottom level (e.g. {codebook_dim: 16}); everything else is the bottom level's; codebook_size and dim come from capacity matching."""
    single_downsample: int | None = None
    """Downsampling factor of the twin (None: the hierarchical bottom factor, else the nearest that matches)."""
    match_tolerance: float = 0.005
    """Largest relative bits gap allowed between the twin and the hierarchical model (0.005 = 0.5%)."""
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
        if self.single_quantizer is None:
            self.single_quantizer = {}
        if not isinstance(self.single_quantizer, dict):
            raise ValueError(f"PairConfig.single_quantizer ({self.single_quantizer!r}) must be a mapping of QuantizerConfig fields")
        allowed = {f.name for f in fields(QuantizerConfig)} - {"codebook_size", "dim"}
        bad = sorted(set(self.single_quantizer) - allowed)
        if bad:
            raise ValueError(f"PairConfig.single_quantizer: unknown or matched field(s) {bad}; allowed: {sorted(allowed)}")
        try:
            replace(self.hierarchical.bottom, **self.single_quantizer)
        except ValueError as err:
            raise ValueError(f"PairConfig.single_quantizer ({self.single_quantizer}): {err}") from err


def load_pair_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> PairConfig:
    """Defaults <- YAML file <- `overrides` (nested dicts, e.g. {'train': {'max_steps': 10}})."""
    return load_config(PairConfig, path, overrides)


def single_config(cfg: PairConfig) -> tuple[VQVAEConfig, CapacityMatch]:
    """The capacity-matched single-level config and the match.

    The twin's quantizer is the hierarchical bottom level's with the matched codebook_size, then the
    fields in `single_quantizer` (and nothing else) replaced.
    """
    match = match_single_level(cfg.hierarchical, cfg.data.crop_size, tolerance=cfg.match_tolerance,
                               downsample=cfg.single_downsample)
    single = match.single_config
    if cfg.single_quantizer:
        single = replace(single, quantizer=replace(single.quantizer, **cfg.single_quantizer))
    return single, match


def run_pair(cfg: PairConfig, recon_metrics_factory=None, command: str | None = None) -> dict[str, Any]:
    """Train the pair and write every output; returns the metrics dict (also in metrics.json)."""
    import shlex
    import sys
    import time

    from vqstudy.machine import machine_line

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
    lpips_model = lpips_model_for(cfg.train.lpips)
    models: dict[str, torch.nn.Module] = {}
    for which in cfg.models:
        torch.manual_seed(cfg.train.seed)
        model = build_model(configs[which])
        fit = fit_model(model, datamodule, cfg.train, run_dir, which, recon_metrics=recon_metrics_factory(),
                        ckpt_dir=Path(cfg.ckpt_dir) / cfg.name / which)
        models[which] = model
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
        if D.rank() == 0:
            save_model(model, run_dir / which)
            loader = datamodule.val_dataloader()
            ev = evaluate(model, loader, lpips_model, sources=image_sources(datamodule.val_ds))
            write_per_image(run_dir / which / PER_IMAGE, ev.rows)
            results["models"][which]["eval"] = ev.metrics
            results["models"][which]["val"] = {**fit.val, **ev.metrics}  # per-image evaluation of the final weights
    if D.rank() != 0:  # under multi-process DDP every rank runs this function; rank 0 writes the outputs
        return results
    write_curves(run_dir, cfg.models)
    results["machine"] = machine_line()
    results["wall_seconds"] = time.perf_counter() - t0
    write_core_outputs(run_dir, results)
    write_reports(run_dir, models, datamodule)
    return results


def write_core_outputs(run_dir: Path, results: dict[str, Any]) -> None:
    """metrics.json and summary.md: written before any figure or sample, so reporting cannot lose them."""
    with open(run_dir / "metrics.json", "w") as f:
        json.dump(results, f, indent=2, default=float)
    (run_dir / "summary.md").write_text(summary_markdown(results))


def write_reports(run_dir: Path, models: dict[str, torch.nn.Module], datamodule: Any) -> None:
    """Reconstruction samples and figures. A failure is logged and re-raised (the core outputs already exist)."""
    from vqstudy.images.plots import plot_run

    try:
        images = first_images(datamodule.val_dataloader(), 8)
        samples = {which: reconstruct(model, images) for which, model in models.items()}
        save_samples(run_dir / "recon_samples.safetensors", {**samples, "target": images})
        plot_run(run_dir)
    except Exception:
        log.exception("reporting failed for %s; metrics.json, summary.md and the model weights were written first", run_dir)
        raise


def eval_output_dir(run_dir: str | Path, out: str | Path | None, cfg: PairConfig) -> Path:
    """Where `vqstudy eval` writes: <out or runs/eval>/<run name>_on_<source>; never inside a run under results/."""
    run_dir = Path(run_dir)
    tag = cfg.data.source if cfg.data.root is None else f"{cfg.data.source}_{Path(cfg.data.root).name}"
    target = Path(out if out is not None else Path("runs") / "eval") / f"{run_dir.name}_on_{tag}"
    resolved, source = target.resolve(), run_dir.resolve()
    if "results" in source.parts and (resolved == source or source in resolved.parents):
        raise ValueError(f"eval output ({target}) must not be inside the committed run {run_dir}; pass --out elsewhere")
    return target


def load_eval_config(run_dir: str | Path, path: str | Path | None = None,
                     overrides: dict[str, Any] | None = None) -> PairConfig:
    """The PairConfig of a trained run (its metrics.json) <- YAML file <- `overrides`, e.g. another data source."""
    run_dir = Path(run_dir)
    metrics = run_dir / "metrics.json"
    if not metrics.is_file():
        raise FileNotFoundError(f"{run_dir}: no metrics.json; expected a run directory written by `vqstudy pair`")
    saved = json.loads(metrics.read_text())["config"]
    return load_config(PairConfig, path, overrides, base=saved)


def run_eval(run_dir: str | Path, cfg: PairConfig, out_dir: str | Path, command: str = "") -> dict[str, Any]:
    """Evaluate the models saved in `run_dir` on `cfg.data`'s validation images; write metrics.json, per-image
    tables (<model>/per_image.csv), summary.md, recon samples and figures into `out_dir`. Returns the metrics dict."""
    import time

    from vqstudy.images.evaluate import load_model
    from vqstudy.images.plots import plot_recon_grid, plot_usage_hist
    from vqstudy.machine import machine_line

    t0 = time.perf_counter()
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    trained = json.loads((run_dir / "metrics.json").read_text())
    names = [m for m in trained["models"] if (run_dir / m / "model.safetensors").is_file()]
    if not names:
        raise FileNotFoundError(f"{run_dir}: no <model>/model.safetensors; re-run `vqstudy pair` (it saves final weights)")
    out_dir.mkdir(parents=True, exist_ok=True)
    datamodule = ImageDataModule(cfg.data)
    lpips_model = lpips_model_for(cfg.train.lpips)
    results: dict[str, Any] = {"name": out_dir.name, "command": command, "evaluated_run": str(run_dir),
                               "config": to_dict(cfg), "capacity": trained.get("capacity", {}), "models": {}}
    models = {}
    for which in names:
        model = models[which] = load_model(run_dir / which)
        loader = datamodule.val_dataloader()
        ev = evaluate(model, loader, lpips_model, sources=image_sources(datamodule.val_ds))
        write_per_image(out_dir / which / PER_IMAGE, ev.rows)
        levels = {name: spec.quantizer.codebook_size for name, spec in model.config.levels().items()}
        results["models"][which] = {
            "val": ev.metrics, "eval": ev.metrics, "images_per_second": math.nan,
            "params": count_parameters(model)._asdict(), "bits_per_image": trained["models"][which]["bits_per_image"],
            "levels": levels, "usage_histograms": ev.histograms,
        }
    results["machine"] = machine_line()
    results["wall_seconds"] = time.perf_counter() - t0
    write_core_outputs(out_dir, results)
    try:
        images = first_images(datamodule.val_dataloader(), 8)
        save_samples(out_dir / "recon_samples.safetensors",
                     {**{w: reconstruct(m, images) for w, m in models.items()}, "target": images})
        plot_recon_grid(out_dir)
        plot_usage_hist(out_dir)
    except Exception:
        log.exception("eval reporting failed for %s; metrics.json and per-image tables were written first", out_dir)
        raise
    return results


def default_recon_metrics(train_cfg: TrainConfig):
    """A factory of ReconstructionMetrics as the training config asks (LPIPS/rFID need offline weights)."""
    from vqstudy.images.metrics import ReconstructionMetrics

    def make():
        return ReconstructionMetrics(lpips=train_cfg.lpips, rfid=train_cfg.rfid, rfid_min_images=train_cfg.rfid_min_images)

    return make


def first_images(loader: Any, n: int) -> torch.Tensor:
    """The first `n` images (n, 3, H, W) of a loader (fewer if it has fewer)."""
    out, seen = [], 0
    for batch in loader:
        images = batch[0] if isinstance(batch, (tuple, list)) else batch
        out.append(images[: n - seen])
        seen += out[-1].shape[0]
        if seen >= n:
            break
    if not out:
        raise ValueError("the validation source yielded no images")
    return torch.cat(out)


@torch.no_grad()
def reconstruct(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Reconstructions (n, 3, H, W) in [0, 1] of `images` (eval mode, no codebook updates)."""
    model.eval()
    return model(images.to(next(model.parameters()).device)).recon.clamp(0, 1).cpu()


def reconstruct_samples(model: torch.nn.Module, datamodule: ImageDataModule, n: int = 8) -> torch.Tensor:
    """Reconstructions (n, 3, H, W) of the first n validation images."""
    return reconstruct(model, first_images(datamodule.val_dataloader(), n))


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
