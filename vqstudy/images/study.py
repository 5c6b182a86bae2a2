"""The image study: hierarchical vs capacity-matched single-level VQ-VAEs, made trustworthy (arXiv 2601.22244).

Design (every choice is in `StudyPlan` or `VARIANTS`):
- equal tuning: each collapse fix (none, k-means + resets, + low-dim lookup, + rotation trick, SimVQ) is
  applied to both models of the pair (the twin inherits the bottom level's quantizer);
- systematic tuning at fixed bits: single-level code dim and grid size (f=2 is the nearest the grid
  allows, +3.4% bits), hierarchical top/bottom bit split;
- cross-validation by photo: the embedded photos are split into `n_folds` folds; seed s trains on the
  other folds and validates on fold s % n_folds, so with n_folds seeds every photo is validation once;
  a seed sets train.seed, data.seed and every quantizer seed (init, data order, crops, k-means);
- per-image PSNR/SSIM/LPIPS, paired comparisons with bootstrap intervals over photos (`compare.py`),
  learning curves, per-level contributions (`evaluate.py`), a recon grid, and JPEG/WebP at the same
  bits per image on the same validation tiles (`classical.py`).
Runs go to <runs_dir>/<variant>_s<seed>/ (weights included); their small files are copied to
<out>/runs/ and the study writes <out>/study.json, study.md, per_image.csv, comparisons.csv and figures.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import shutil
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from vqstudy.config import deep_merge
from vqstudy.images.compare import Paired, paired_difference, verdict
from vqstudy.images.data.embedded import EMBEDDED_IMAGES
from vqstudy.images.evaluate import PER_IMAGE, read_per_image
from vqstudy.images.pair import PairConfig, load_pair_config, run_pair
from vqstudy.machine import machine_line

log = logging.getLogger(__name__)

PLAIN = {"kmeans_init": False, "dead_code_reset": False, "codebook_dim": None}
"""Random init, no resets, code dim = model dim: the collapse-prone baseline."""
KMEANS_RESET = {"codebook_dim": None}
"""k-means init + dead-code resets (the base config's), full-width codes."""
ROTATION = {"rotation_trick": True}
"""The base config (k-means, resets, code dim 8) with the rotation trick (arXiv 2410.06424)."""
AFFINE_SYNC = {"update": "grad", "affine": True, "sync_nu": 0.2}
"""The base config (k-means, resets, code dim 8) with a gradient-learned codebook under vqtorch's affine
reparameterization and synchronized update (arXiv 2305.08842; nu = 0.2, vqtorch's example value)."""
SIMVQ = {"simvq": True, "update": "grad", "kmeans_init": False, "dead_code_reset": False, "codebook_dim": None}
"""SimVQ (arXiv 2411.02038): frozen random codebook, learned linear map, no init or resets, full-width codes."""


def both_levels(q: dict[str, Any]) -> dict[str, Any]:
    """A variant applying quantizer fields `q` to both hierarchical levels (and so to the twin, which inherits the bottom)."""
    return {"hierarchical": {"top": q, "bottom": q}}


VARIANTS: dict[str, dict[str, Any]] = {
    # equal tuning: every collapse fix on both models
    "plain": both_levels(PLAIN),
    "kmeans_reset": both_levels(KMEANS_RESET),
    "full": {},
    "rotation": both_levels(ROTATION),
    "simvq": both_levels(SIMVQ),
    "affine_sync": both_levels(AFFINE_SYNC),
    # systematic tuning at fixed bits, single-level: code dim, grid size
    "single_cdim4": {"models": ["single"], "single_quantizer": {"codebook_dim": 4}},
    "single_cdim16": {"models": ["single"], "single_quantizer": {"codebook_dim": 16}},
    "single_f2": {"models": ["single"], "single_downsample": 2, "match_tolerance": 0.04},
    # systematic tuning at fixed bits, hierarchical: top/bottom split of 2,560 bits (64 px)
    "hier_split_16_512": {"models": ["hierarchical"], "hierarchical": {"top": {"codebook_size": 16}, "bottom": {"codebook_size": 512}}},
    "hier_split_4096_128": {"models": ["hierarchical"], "hierarchical": {"top": {"codebook_size": 4096}, "bottom": {"codebook_size": 128}}},
}
"""Variant name -> PairConfig overrides on the base config. 'full' = the base config (k-means, resets, code dim 8)."""

EQUAL_TUNING = ("plain", "kmeans_reset", "full", "rotation", "simvq", "affine_sync")
"""Variants trained for both models of the pair."""


def seed_overrides(seed: int) -> dict[str, Any]:
    """PairConfig overrides that make `seed` vary everything a seed should: model init (train.seed), data order and
    crops (data.seed), and every quantizer's own random choices (k-means++ seeding, resets, random codebooks)."""
    return {"train": {"seed": seed}, "data": {"seed": seed},
            "hierarchical": {"top": {"seed": seed}, "bottom": {"seed": seed}},
            "single_quantizer": {"seed": seed}}


def photo_folds(n_folds: int, names: list[str] | None = None) -> list[tuple[str, ...]]:
    """The embedded photos dealt into `n_folds` folds in catalogue order (fold i = names[i::n_folds])."""
    names = list(EMBEDDED_IMAGES) if names is None else list(names)
    if not 2 <= n_folds <= len(names):
        raise ValueError(f"n_folds ({n_folds}) must be in [2, {len(names)}] (the embedded photos)")
    return [tuple(names[i::n_folds]) for i in range(n_folds)]


def study_run_config(base_config: str | Path | None, variant: dict[str, Any], seed: int, name: str, out_dir: str | Path,
                     overrides: dict[str, Any] | None = None, val_images: tuple[str, ...] | None = None) -> PairConfig:
    """The PairConfig of one (variant, seed) run: base YAML <- overrides <- variant <- seed (<- fold) <- name/out_dir."""
    extra = deep_merge(deep_merge(variant, seed_overrides(seed)), {"name": f"{name}_s{seed}", "out_dir": str(out_dir)})
    if val_images is not None:
        extra = deep_merge(extra, {"data": {"val_images": list(val_images)}})
    return load_pair_config(base_config, deep_merge(overrides or {}, extra))


@dataclass
class StudyPlan:
    """What the study trains and where it writes."""

    base_config: str | None = "configs/pair_study.yaml"
    """Base PairConfig YAML (each variant is applied on top of it)."""
    out_dir: str = "results/image_study"
    """Tables, figures and copies of each run's small files."""
    runs_dir: str = "runs/image_study"
    """Full run folders (weights, checkpoints) of each (variant, seed)."""
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    """Seeds; seed s validates on photo fold s % n_folds."""
    n_folds: int = 5
    """Photo folds for cross-validation."""
    variants: tuple[str, ...] = tuple(VARIANTS)
    """Variant names (keys of VARIANTS), trained in this order within each seed."""
    overrides: dict[str, Any] = field(default_factory=dict)
    """PairConfig overrides applied to every run (under the variant)."""
    jobs: int = 1
    """Runs trained in parallel processes."""
    threads: int = 1
    """torch threads per process (1 avoids OpenMP oversubscription on a shared 2-core machine)."""
    train: bool = True
    """False: train nothing, analyse the finished runs found under runs_dir (a (variant, seed) without one is left out)."""

    def __post_init__(self) -> None:
        unknown = sorted(set(self.variants) - set(VARIANTS))
        if unknown:
            raise ValueError(f"StudyPlan.variants: unknown {unknown}; choose from {list(VARIANTS)}")
        if not self.seeds:
            raise ValueError("StudyPlan.seeds must not be empty")
        if self.jobs < 1 or self.threads < 1:
            raise ValueError(f"StudyPlan.jobs ({self.jobs}) and threads ({self.threads}) must be >= 1")
        photo_folds(self.n_folds)

    def runs(self) -> list[tuple[str, int, PairConfig]]:
        """(variant, seed, config) of every run, seed-major so that partial results cover every variant."""
        folds = photo_folds(self.n_folds)
        return [(name, seed, study_run_config(self.base_config, VARIANTS[name], seed, name, self.runs_dir,
                                              self.overrides, folds[seed % self.n_folds]))
                for seed in self.seeds for name in self.variants]


def _train_one(cfg: PairConfig, threads: int, command: str) -> tuple[str, float]:
    torch.set_num_threads(threads)
    run_dir = Path(cfg.out_dir) / cfg.name
    if (run_dir / "metrics.json").is_file():  # finished earlier: resume a study by re-running it
        return str(run_dir), 0.0
    t0 = time.perf_counter()
    run_pair(cfg, recon_metrics_factory=lambda: None, command=command)  # evaluate() computes PSNR/SSIM/LPIPS once, per image
    return str(run_dir), time.perf_counter() - t0


def train_all(plan: StudyPlan) -> list[tuple[str, int, str]]:
    """Train every run of `plan` (skipping finished ones); returns (variant, seed, run_dir)."""
    runs = plan.runs()
    done: list[tuple[str, int, str]] = []
    if not plan.train:
        finished = [(n, s, str(Path(c.out_dir) / c.name)) for n, s, c in runs if (Path(c.out_dir) / c.name / "metrics.json").is_file()]
        log.info("study: analysing %d finished runs of %d planned", len(finished), len(runs))
        return finished
    if plan.jobs == 1:
        for i, (name, seed, cfg) in enumerate(runs):
            path, secs = _train_one(cfg, plan.threads, f"vqstudy.images.study: variant {name}, seed {seed}")
            log.info("study run %d/%d %s seed %d: %.0f s", i + 1, len(runs), name, seed, secs)
            done.append((name, seed, path))
        return done
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=plan.jobs, mp_context=mp.get_context("spawn")) as pool:
        futures = [(name, seed, pool.submit(_train_one, cfg, plan.threads, f"vqstudy.images.study: variant {name}, seed {seed}"))
                   for name, seed, cfg in runs]
        for i, (name, seed, fut) in enumerate(futures):
            path, secs = fut.result()
            log.info("study run %d/%d %s seed %d: %.0f s", i + 1, len(runs), name, seed, secs)
            done.append((name, seed, path))
    return done


# ------------------------------------------------------------------------------------------------ collection
SMALL_FILES = ("metrics.json", "summary.md", "curves.csv")


def collect(done: list[tuple[str, int, str]], out_dir: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(run rows, per-image rows) of finished runs; copies each run's small files (not its per-image table, which
    the study's per_image.csv holds, nor its weights) to out_dir/runs/<run>/."""
    run_rows, image_rows = [], []
    for variant, seed, path in done:
        run_dir = Path(path)
        copy = out_dir / "runs" / run_dir.name
        copy.mkdir(parents=True, exist_ok=True)
        for name in SMALL_FILES:
            if (run_dir / name).is_file():
                shutil.copy2(run_dir / name, copy / name)
        result = json.loads((run_dir / "metrics.json").read_text())
        for model, res in result["models"].items():
            ev = res.get("eval", {})
            row = {"variant": variant, "model": model, "seed": seed, "bits_per_image": res["bits_per_image"],
                   "params": res["params"]["total"], "train_seconds": res["train_seconds"],
                   "images_per_second": res["images_per_second"], "levels": res["levels"],
                   "val_photos": result["config"]["data"]["val_images"]}
            for key in ("psnr", "psnr_mean_per_image", "ssim", "lpips"):
                row[key] = ev.get(f"val/{key}", math.nan)
            for level in res["levels"]:
                for key in ("utilization", "effective_bits", "dead_fraction", "psnr_drop_if_mean"):
                    row[f"{level}/{key}"] = ev.get(f"val/{level}/{key}", math.nan)
            run_rows.append(row)
            for r in read_per_image(run_dir / model / PER_IMAGE):
                image_rows.append({"variant": variant, "model": model, "seed": seed, **r})
    return run_rows, image_rows


def classical_rows(plan: StudyPlan, budget_bits: float, lpips_model: torch.nn.Module | None) -> list[dict[str, Any]]:
    """JPEG and WebP per validation tile of every seed's fold, at the pair's bits per image (payload bits)."""
    from vqstudy.images.classical import CODECS, code_at_budget
    from vqstudy.images.data.module import ImageDataModule
    from vqstudy.images.evaluate import psnr_per_image, ssim_per_image

    rows = []
    first_config: dict[int, PairConfig] = {}
    for _, seed, cfg in plan.runs():
        first_config.setdefault(seed, cfg)  # every variant of a seed validates on the same fold
    for seed, cfg in first_config.items():
        data = ImageDataModule(cfg.data)
        data.setup()
        sources = [t[0] for t in data.val_ds.tiles]
        targets = torch.stack([data.val_ds[i] for i in range(len(data.val_ds))])  # (N, 3, c, c)
        for codec in CODECS:
            coded = [code_at_budget(t, codec, budget_bits) for t in targets]
            recon = torch.stack([c.image for c in coded])  # (N, 3, c, c)
            psnr, ssim = psnr_per_image(recon, targets), ssim_per_image(recon, targets)
            lp = torch.full((len(coded),), math.nan)
            if lpips_model is not None:
                with torch.no_grad():
                    lp = torch.cat([lpips_model(recon[i:i + 64] * 2 - 1, targets[i:i + 64] * 2 - 1).flatten()
                                    for i in range(0, len(coded), 64)])
            for i, c in enumerate(coded):
                rows.append({"variant": codec, "model": codec, "seed": seed, "image": float(i), "source": sources[i],
                             "psnr": float(psnr[i]), "ssim": float(ssim[i]), "lpips": float(lp[i]), "quality": c.quality,
                             "payload_bits": c.payload_bits, "file_bits": c.file_bits, "fits": c.fits})
    return rows


CLASSICAL = "classical_per_image.csv"
"""The JPEG/WebP rows of a study, kept in its out_dir: they depend only on the folds, the crop and the budget."""


def cached_classical_rows(plan: StudyPlan, budget_bits: float, lpips_model: torch.nn.Module | None) -> list[dict[str, Any]]:
    """`classical_rows`, read back from <out_dir>/classical_per_image.csv when it holds every seed at this budget."""
    path = Path(plan.out_dir) / CLASSICAL
    if path.is_file():
        with open(path) as f:
            rows = [{k: (v if k in ("variant", "model", "source") else (v == "True" if k == "fits" else float(v)))
                     for k, v in r.items()} for r in csv.DictReader(f)]
        for r in rows:
            r["seed"] = int(r["seed"])
        if {r["seed"] for r in rows} >= set(plan.seeds) and rows and rows[0].get("budget_bits") == budget_bits:
            log.info("study: JPEG/WebP rows read from %s", path)
            return [r for r in rows if r["seed"] in plan.seeds]
    rows = [{**r, "budget_bits": budget_bits} for r in classical_rows(plan, budget_bits, lpips_model)]
    Path(plan.out_dir).mkdir(parents=True, exist_ok=True)
    write_csv(path, rows)
    return rows


# ------------------------------------------------------------------------------------------------ analysis
def photo_weighted(rows: list[dict[str, Any]], key: str) -> float:
    """Mean over (seed, photo) of the per-photo mean of `key` (each validated photo counts once)."""
    groups: dict[tuple[Any, str], list[float]] = {}
    for r in rows:
        if not math.isnan(r[key]):
            groups.setdefault((r["seed"], r["source"]), []).append(r[key])
    return statistics.fmean(statistics.fmean(v) for v in groups.values()) if groups else math.nan


def table_rows(run_rows: list[dict[str, Any]], image_rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (variant, model): photo-weighted per-image metrics, utilization, level use, over seeds."""
    keys = sorted({(r["variant"], r["model"]) for r in image_rows}, key=lambda k: (k[1] in ("jpeg", "webp"), k))
    out = []
    for variant, model in keys:
        imgs = [r for r in image_rows if (r["variant"], r["model"]) == (variant, model)]
        runs = [r for r in run_rows if (r["variant"], r["model"]) == (variant, model)]
        row: dict[str, Any] = {"variant": variant, "model": model, "seeds": len({r["seed"] for r in imgs}),
                               "images": len(imgs)}
        for key in ("psnr", "ssim", "lpips"):
            row[key] = photo_weighted(imgs, key)
        psnr_by_seed = [photo_weighted([r for r in imgs if r["seed"] == s], "psnr") for s in sorted({r["seed"] for r in imgs})]
        row["psnr_seed_std"] = statistics.stdev(psnr_by_seed) if len(psnr_by_seed) > 1 else math.nan
        if runs:
            row["bits_per_image"] = runs[0]["bits_per_image"]
            row["params"] = runs[0]["params"]
            row["levels"] = runs[0]["levels"]
            for level in runs[0]["levels"]:
                for key in ("utilization", "psnr_drop_if_mean"):
                    row[f"{level}/{key}"] = statistics.fmean(r[f"{level}/{key}"] for r in runs)
            if "top" in runs[0]["levels"]:
                row["top_unused_share"] = sum(r["top/psnr_drop_if_mean"] < TOP_UNUSED_DB for r in runs) / len(runs)
        else:
            row["bits_per_image"] = statistics.fmean(r["payload_bits"] for r in imgs)
            row["fits_share"] = sum(bool(r["fits"]) for r in imgs) / len(imgs)
            row["file_bits"] = statistics.fmean(r["file_bits"] for r in imgs)
            row["quality"] = statistics.fmean(r["quality"] for r in imgs)
        out.append(row)
    return out


TOP_UNUSED_DB = 0.1
"""A hierarchical run's top level counts as unused when replacing its codes by their mean costs < this PSNR (dB)."""


def comparison_pairs(variants: tuple[str, ...]) -> list[tuple[tuple[str, str], tuple[str, str]]]:
    """The (A, B) = ((variant, model), (variant, model)) pairs the study reports."""
    pairs = []
    for v in EQUAL_TUNING:
        if v in variants:
            pairs.append(((v, "single"), (v, "hierarchical")))  # the paper's question, per fix
    for model in ("hierarchical", "single"):
        for v in EQUAL_TUNING[1:]:
            if v in variants and "plain" in variants:
                pairs.append(((v, model), ("plain", model)))
        for v in ("rotation", "simvq", "affine_sync", "kmeans_reset"):
            if v in variants and "full" in variants:
                pairs.append(((v, model), ("full", model)))
    if "full" in variants:
        for v in ("single_cdim4", "single_cdim16", "single_f2"):
            if v in variants:
                pairs.append(((v, "single"), ("full", "single")))
        for v in ("hier_split_16_512", "hier_split_4096_128"):
            if v in variants:
                pairs.append(((v, "hierarchical"), ("full", "hierarchical")))
        for codec in ("jpeg", "webp"):
            pairs += [(("full", "single"), (codec, codec)), (("full", "hierarchical"), (codec, codec))]
    return pairs


def comparisons(image_rows: list[dict[str, Any]], variants: tuple[str, ...], n_boot: int = 10_000) -> list[dict[str, Any]]:
    """Paired differences A - B (PSNR dB, SSIM, LPIPS) with bootstrap 95% intervals over photos, and their verdicts."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in image_rows:
        groups.setdefault((r["variant"], r["model"]), []).append(r)
    out = []
    for a, b in comparison_pairs(variants):
        if a not in groups or b not in groups:
            continue
        row: dict[str, Any] = {"A": "/".join(a), "B": "/".join(b)}
        for key, unit, higher in (("psnr", "dB", True), ("ssim", "", True), ("lpips", "", False)):
            try:
                p = paired_difference(groups[a], groups[b], key, n_boot=n_boot)
            except ValueError:
                continue
            row.update({f"{key}_diff": p.mean, f"{key}_low": p.low, f"{key}_high": p.high, "photos": p.n_photos,
                        "images": p.n_images})
            row[f"{key}_verdict"] = verdict(p, unit, higher_is_better=higher, margin=0.25 if key == "psnr" else None)
        out.append(row)
    return out


def write_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    """Rows (union of keys, first-seen order) as CSV."""
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
    return path


def run_study(plan: StudyPlan, command: str = "") -> dict[str, Any]:
    """Train every run of `plan`, then write the study's tables and figures into plan.out_dir; returns study.json's dict."""
    from vqstudy.images.evaluate import lpips_model_for
    from vqstudy.images.plots import plot_learning_curves, plot_study_recon_grid

    out_dir = Path(plan.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    done = train_all(plan)
    train_seconds = time.perf_counter() - t0
    run_rows, image_rows = collect(done, out_dir)
    from vqstudy.images.capacity import bits_per_sample

    base = load_pair_config(plan.base_config, plan.overrides)
    budget = float(bits_per_sample(base.hierarchical, base.data.crop_size))  # the pair's bits per image
    lpips_model = lpips_model_for(base.train.lpips)
    log.info("study: collected %d runs (%.0f s); coding the validation tiles with JPEG/WebP", len(done), time.perf_counter() - t0)
    image_rows += cached_classical_rows(plan, budget, lpips_model)
    log.info("study: classical reference done (%.0f s); paired comparisons", time.perf_counter() - t0)
    table = table_rows(run_rows, image_rows)
    comps = comparisons(image_rows, plan.variants)
    write_csv(out_dir / "per_image.csv", image_rows)
    write_csv(out_dir / "runs.csv", [{k: v for k, v in r.items() if k != "levels"} for r in run_rows])
    write_csv(out_dir / "comparisons.csv", comps)
    study = {"command": command, "plan": {k: (list(v) if isinstance(v, tuple) else v) for k, v in plan.__dict__.items()},
             "folds": photo_folds(plan.n_folds), "budget_bits": budget, "crop_size": base.data.crop_size,
             "machine": machine_line(), "train_wall_seconds": train_seconds,
             "wall_seconds": time.perf_counter() - t0, "table": table, "comparisons": comps, "runs": run_rows}
    (out_dir / "study.json").write_text(json.dumps(study, indent=2, default=float))
    (out_dir / "study.md").write_text(study_markdown(study))
    plot_learning_curves(done, out_dir / "learning_curves.png")
    plot_study_recon_grid(plan, done, out_dir / "recon_grid.png", budget)
    return study


# ------------------------------------------------------------------------------------------------ report
def _f(value: Any, digits: int = 2) -> str:
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


def study_markdown(study: dict[str, Any]) -> str:
    """study.md: setup, the main table, the level use, and every paired comparison with its verdict."""
    plan = study["plan"]
    bpp = study["budget_bits"] / study["crop_size"] ** 2
    lines = [
        "# Image study: hierarchical vs capacity-matched single-level VQ-VAEs",
        "",
        f"Command: `{study['command']}`",
        "",
        f"Machine: {study['machine']}. Wall time: {study['wall_seconds'] / 60:.1f} min "
        f"(training {study['train_wall_seconds'] / 60:.1f} min; {plan['jobs']} process(es) x {plan['threads']} thread(s)).",
        f"Seeds {plan['seeds']}; seed s validates on photo fold s % {plan['n_folds']} and trains on the other photos "
        f"(folds: {'; '.join(', '.join(f) for f in study['folds'])}).",
        f"Rate: {study['budget_bits']:.0f} bits per {study['crop_size']} px crop = {bpp:.3f} bpp for every VQ model "
        "(except single_f2, the nearest a 32x32 grid allows). JPEG/WebP: quality searched per tile for the largest "
        "payload (entropy-coded data, headers and tables not counted) within the same bits; whole-file bits are listed too.",
        "Metrics are per validation tile (64 px), averaged per photo, then over photos (each validated photo counts once).",
        "",
        "| variant | model | seeds | PSNR (dB) | std over seeds (folds) | SSIM | LPIPS | bits/img | params | utilization (per level) | PSNR drop if level = mean (dB) | top unused |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in study["table"]:
        levels = list(r.get("levels", {}))
        util = " / ".join(f"{lv} {_f(r.get(f'{lv}/utilization', math.nan), 3)}" for lv in levels) or "-"
        drop = " / ".join(f"{lv} {_f(r.get(f'{lv}/psnr_drop_if_mean', math.nan))}" for lv in levels if len(levels) > 1) or "-"
        unused = _f(r["top_unused_share"]) if "top_unused_share" in r else "-"
        bits = _f(float(r["bits_per_image"]), 0)
        if "file_bits" in r:
            bits += f" payload ({_f(r['file_bits'], 0)} file; q {_f(r['quality'], 0)}; fits {_f(r['fits_share'])})"
        lines.append(f"| {r['variant']} | {r['model']} | {r['seeds']} | {_f(r['psnr'])} | {_f(r['psnr_seed_std'])} | {_f(r['ssim'], 3)} | "
                     f"{_f(r['lpips'], 3)} | {bits} | {r.get('params', '-')} | {util} | {drop} | {unused} |")
    lines += ["", "## Paired comparisons (A - B; bootstrap 95% intervals over validated photos; PSNR 'equivalent' means the interval lies within ±0.25 dB)", "",
              "| A | B | photos | PSNR | SSIM | LPIPS |", "|---|---|---|---|---|---|"]
    for c in study["comparisons"]:
        lines.append(f"| {c['A']} | {c['B']} | {c.get('photos', '-')} | {c.get('psnr_verdict', '-')} | "
                     f"{c.get('ssim_verdict', '-')} | {c.get('lpips_verdict', '-')} |")
    return "\n".join(lines) + "\n"


def run_throughput(base_config: str | Path, out_dir: str | Path, steps: int, overrides: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Training images/s of both models with the vqstudy quantizer vs the vector-quantize-pytorch backend."""
    rows = []
    for backend in ("vqstudy", "vqp"):
        q = {"backend": backend}
        extra = {"name": f"throughput_{backend}", "out_dir": str(Path(out_dir) / "runs"),
                 "hierarchical": {"top": q, "bottom": q},
                 "train": {"max_steps": steps, "val_every": steps, "lpips": False, "rfid": False}}
        cfg = load_pair_config(base_config, deep_merge(overrides or {}, extra))
        result = run_pair(cfg, command=f"vqstudy.images.study.run_throughput: backend {backend}")
        for which, res in result["models"].items():
            rows.append({"model": which, "backend": backend, "images_per_second": res["images_per_second"]})
    return rows


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


__all__ = ["EQUAL_TUNING", "VARIANTS", "Paired", "StudyPlan", "comparisons", "photo_folds", "run_study",
           "run_throughput", "seed_overrides", "study_markdown", "study_run_config", "table_rows", "throughput_markdown"]
