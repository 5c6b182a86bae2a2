"""The image study: hierarchical vs capacity-matched single-level variants, over seeds (arXiv 2601.22244).

Each variant is a PairConfig override applied on a base config; every run trains one model of the
pair (same data, steps, optimizer, seed), so all variants have the same bits per image.
Writes <out>/study.json, <out>/study.md, <out>/study_psnr_vs_util.png and a throughput table.
"""

from __future__ import annotations

import json
import logging
import math
import statistics
import time
from pathlib import Path
from typing import Any

from vqstudy.config import deep_merge
from vqstudy.machine import machine_line
from vqstudy.images.pair import load_pair_config, run_pair

log = logging.getLogger(__name__)

PLAIN = {"kmeans_init": False, "dead_code_reset": False, "codebook_dim": None}
"""Random init, no resets, code dim = model dim: the collapse-prone baseline."""

VARIANTS: dict[str, dict[str, Any]] = {
    "hier_plain": {"models": ["hierarchical"], "hierarchical": {"top": PLAIN, "bottom": PLAIN}},
    "hier_full": {"models": ["hierarchical"]},
    "single_plain": {"models": ["single"], "single_quantizer": PLAIN},
    "single_kmeans": {"models": ["single"], "single_quantizer": {**PLAIN, "kmeans_init": True}},
    "single_kmeans_reset": {
        "models": ["single"],
        "single_quantizer": {**PLAIN, "kmeans_init": True, "dead_code_reset": True},
    },
    "single_full": {"models": ["single"]},
}
"""Variant name -> PairConfig overrides. 'full' = the base config's quantizer (k-means, resets, low-dim)."""


def code_dim_variants(dims: list[int]) -> dict[str, dict[str, Any]]:
    """Single-level 'full' variants with other lookup widths (the code-dimension sweep)."""
    return {f"single_cdim{d}": {"models": ["single"], "single_quantizer": {"codebook_dim": d}} for d in dims}


def seed_overrides(seed: int) -> dict[str, Any]:
    """PairConfig overrides that make `seed` vary everything a seed should: model init (train.seed), data order and
    crops (data.seed), and every quantizer's own random choices (k-means++ seeding, resets, random codebooks)."""
    return {"train": {"seed": seed}, "data": {"seed": seed},
            "hierarchical": {"top": {"seed": seed}, "bottom": {"seed": seed}},
            "single_quantizer": {"seed": seed}}


def study_run_config(base_config: str | Path | None, variant: dict[str, Any], seed: int, name: str, out_dir: str | Path,
                     overrides: dict[str, Any] | None = None):
    """The PairConfig of one (variant, seed) run: base YAML <- overrides <- variant <- seed <- name/out_dir."""
    extra = deep_merge(deep_merge(variant, seed_overrides(seed)), {"name": f"{name}_s{seed}", "out_dir": str(out_dir)})
    return load_pair_config(base_config, deep_merge(overrides or {}, extra))


def level_rows(name: str, seed: int, result: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for which, res in result["models"].items():
        val = res["val"]
        for level in res["levels"]:
            rows.append(
                {
                    "variant": name,
                    "seed": seed,
                    "model": which,
                    "level": level,
                    "K": res["levels"][level],
                    "bits_per_image": res["bits_per_image"],
                    "params": res["params"]["total"],
                    "utilization": val.get(f"val/{level}/utilization", math.nan),
                    "effective_bits": val.get(f"val/{level}/effective_bits", math.nan),
                    "psnr": val.get("val/psnr", math.nan),
                    "ssim": val.get("val/ssim", math.nan),
                    "lpips": val.get("val/lpips", math.nan),
                    "images_per_second": res["images_per_second"],
                }
            )
    return rows


def aggregate(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and sample std over seeds per (variant, level)."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["variant"], row["level"]), []).append(row)
    out = []
    for (variant, level), members in groups.items():
        agg: dict[str, Any] = {"variant": variant, "level": level, "K": members[0]["K"],
                               "bits_per_image": members[0]["bits_per_image"], "params": members[0]["params"],
                               "seeds": len(members)}
        for key in ("utilization", "effective_bits", "psnr", "ssim", "lpips", "images_per_second"):
            values = [m[key] for m in members if not math.isnan(m[key])]
            agg[key] = statistics.fmean(values) if values else math.nan
            agg[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else math.nan
        out.append(agg)
    return out


def run_study(
    base_config: str | Path,
    out_dir: str | Path,
    seeds: list[int],
    variants: dict[str, dict[str, Any]],
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train every (variant, seed); write study.json/study.md; returns the aggregate."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    for name, variant in variants.items():
        for seed in seeds:
            cfg = study_run_config(base_config, variant, seed, name, out_dir / "runs", overrides)
            log.info("study: %s seed %d", name, seed)
            rows += level_rows(name, seed, run_pair(cfg, command=f"vqstudy.images.study.run_study: variant {name}, seed {seed}"))
    study = {"base_config": str(base_config), "seeds": seeds, "variants": variants, "overrides": overrides or {},
             "machine": machine_line(), "wall_seconds": time.perf_counter() - t0, "rows": rows, "aggregate": aggregate(rows)}
    (out_dir / "study.json").write_text(json.dumps(study, indent=2, default=float))
    return study


def run_throughput(base_config: str | Path, out_dir: str | Path, steps: int, overrides: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Training images/s of both models with the vqstudy quantizer vs the vector-quantize-pytorch backend."""
    rows = []
    for backend in ("vqstudy", "vqp"):
        q = {"backend": backend}
        extra = {"name": f"throughput_{backend}", "out_dir": str(Path(out_dir) / "runs"),
                 "hierarchical": {"top": q, "bottom": q}, "single_quantizer": q,
                 "train": {"max_steps": steps, "val_every": steps, "lpips": False, "rfid": False}}
        cfg = load_pair_config(base_config, deep_merge(overrides or {}, extra))
        result = run_pair(cfg, command=f"vqstudy.images.study.run_throughput: backend {backend}")
        for which, res in result["models"].items():
            rows.append({"model": which, "backend": backend, "images_per_second": res["images_per_second"]})
    return rows


def _fmt(mean: float, std: float, digits: int = 3) -> str:
    if math.isnan(mean):
        return "n/a"
    return f"{mean:.{digits}f}" + ("" if math.isnan(std) else f" ± {std:.{digits}f}")


def study_markdown(study: dict[str, Any], command: str) -> str:
    lines = [
        "# Image study: hierarchical vs capacity-matched single-level VQ-VAEs",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {study['machine']}. Wall time: {study['wall_seconds'] / 60:.1f} min.",
        f"Seeds: {study['seeds']}; mean ± std over seeds. Validation: held-out whole images (tiles).",
        "",
        "| variant | level | K | bits/img | params | utilization | eff. bits/code | PSNR (dB) | SSIM | LPIPS | train img/s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for a in study["aggregate"]:
        lines.append(
            f"| {a['variant']} | {a['level']} | {a['K']} | {a['bits_per_image']:.0f} | {a['params']} | "
            f"{_fmt(a['utilization'], a['utilization_std'])} | {_fmt(a['effective_bits'], a['effective_bits_std'], 2)} | "
            f"{_fmt(a['psnr'], a['psnr_std'], 2)} | {_fmt(a['ssim'], a['ssim_std'])} | {_fmt(a['lpips'], a['lpips_std'])} | "
            f"{_fmt(a['images_per_second'], math.nan, 1)} |"
        )
    return "\n".join(lines) + "\n"


def throughput_markdown(rows: list[dict[str, Any]], command: str) -> str:
    """Training img/s of each model with the vqstudy quantizer vs the vqp backend, same run."""
    by = {(r["model"], r["backend"]): r["images_per_second"] for r in rows}
    lines = ["# Training throughput: vqstudy quantizer vs vector-quantize-pytorch backend", "",
             f"Command: `{command}`", "", f"Machine: {machine_line()}.", "",
             "| model | vqstudy img/s | vqp img/s | speed-up |", "|---|---|---|---|"]
    for model in ("hierarchical", "single"):
        ours, theirs = by.get((model, "vqstudy"), math.nan), by.get((model, "vqp"), math.nan)
        lines.append(f"| {model} | {ours:.1f} | {theirs:.1f} | {ours / theirs:.2f}x |")
    return "\n".join(lines) + "\n"


def plot_study(study: dict[str, Any], out: Path) -> Path:
    """PSNR against codebook utilization, one marker per variant (error bars over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for a in study["aggregate"]:
        label = f"{a['variant']} / {a['level']}"
        for ax, key in zip(axes, ("utilization", "effective_bits")):
            ax.errorbar(a[key], a["psnr"], xerr=0 if math.isnan(a[f"{key}_std"]) else a[f"{key}_std"],
                        yerr=0 if math.isnan(a["psnr_std"]) else a["psnr_std"], fmt="o", capsize=3, label=label)
    axes[0].set(xlabel="codebook utilization (validation)", ylabel="PSNR (dB)")
    axes[1].set(xlabel="effective bits per code (log2 perplexity)", ylabel="PSNR (dB)")
    for ax in axes:
        ax.grid(alpha=0.3)
    if axes[1].get_legend_handles_labels()[0]:
        axes[1].legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
