"""Results of the bottleneck grid: aggregation over seeds, the paper's three claims checked, table, plot.

Files written to `out_dir`: results.json (config, machine, command, every row, the aggregate, the
claims), runs.csv (one row per seed x rung x head), table.md, error_vs_encoder.png, README.md.
"""

from __future__ import annotations

import csv
import json
import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vqstudy.machine import machine_info, machine_line

PAPER = "The Compression Gap, arXiv 2604.03191"


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    arr = np.asarray([v for v in values if v is not None], dtype=np.float64)
    if arr.size == 0:
        return float("nan"), float("nan")
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else 0.0


def aggregate(rows: Sequence[dict[str, Any]], quality: str) -> list[dict[str, Any]]:
    """Mean and std over seeds per (encoder, head), numeric keys only; `quality` sets the x value."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[(row["encoder"], row["head"])].append(row)
    out = []
    for (encoder, head), members in groups.items():
        first = members[0]
        agg: dict[str, Any] = {"encoder": encoder, "head": head, "rung": first["rung"], "head_kind": first["head_kind"],
                               "vocab_size": first["vocab_size"], "bits_per_chunk": first["bits_per_chunk"],
                               "feature_dim": first["feature_dim"], "seeds": len(members)}
        for key, value in first.items():
            if key in agg or key == "seed" or not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            agg[key], agg[f"{key}_std"] = _mean_std([m[key] for m in members])
        agg["quality"] = float(first["rung"]) if quality == "rung" else agg[quality]
        agg["quality_std"] = 0.0 if quality == "rung" else agg[f"{quality}_std"]
        out.append(agg)
    return sorted(out, key=lambda a: (a["rung"], a["head"]))


def head_order(agg: Sequence[dict[str, Any]]) -> list[str]:
    """'continuous' first, then the discrete heads by vocabulary size."""
    heads = {a["head"]: (a["vocab_size"] or 0) for a in agg}
    return sorted(heads, key=lambda h: (h != "continuous", heads[h], h))


def sensitivity(rows: Sequence[dict[str, Any]], agg: Sequence[dict[str, Any]], metric: str,
                split: str = "val") -> dict[str, dict[str, Any]]:
    """Per head: error at the lowest- and highest-quality rung (by mean quality), the relative gain of that
    encoder upgrade (e_low - e_high) / e_low per seed and its mean, the least-squares slope of error
    against quality, and the best rung's error over the tokenizer floor (1 = the codebook binds fully)."""
    key = f"{split}/{metric}"
    by_seed = {(r["seed"], r["encoder"], r["head"]): r[key] for r in rows}
    seeds = sorted({r["seed"] for r in rows})
    out = {}
    for head in head_order(agg):
        pts = sorted((a for a in agg if a["head"] == head), key=lambda a: a["quality"])
        if len(pts) < 2:
            continue
        q = np.array([a["quality"] for a in pts])
        e = np.array([a[key] for a in pts])
        low, high = pts[0], pts[-1]
        e_low = [by_seed[(s, low["encoder"], head)] for s in seeds]
        e_high = [by_seed[(s, high["encoder"], head)] for s in seeds]
        gains = [(a - b) / a for a, b in zip(e_low, e_high)]
        best = min(pts, key=lambda a: a[key])
        floor = best.get(f"floor_{split}/{metric}")
        out[head] = {
            "low_rung": low["encoder"], "high_rung": high["encoder"],
            "err_low": low[key], "err_low_std": low[f"{key}_std"],
            "err_high": high[key], "err_high_std": high[f"{key}_std"],
            "gain": float(np.mean(gains)), "gain_std": _mean_std(gains)[1], "gain_by_seed": gains,
            "slope": float(np.polyfit(q, e, 1)[0]) if np.ptp(q) > 0 else float("nan"),
            "best_rung": best["encoder"], "err_best": best[key],
            "floor": floor if floor is not None else float("nan"),
            "best_over_floor": best[key] / floor if floor else float("nan"),
            "vocab_size": float(low["vocab_size"] or 0),
        }
    return out


def _paired(diffs: Sequence[float]) -> tuple[float, float]:
    """Mean and standard error of paired per-seed differences (SE 0 with one seed)."""
    d = np.asarray(diffs, dtype=np.float64)
    return float(d.mean()), float(d.std(ddof=1) / np.sqrt(d.size)) if d.size > 1 else 0.0


def _verdict(mean: float, se: float, none: str) -> str:
    """'agrees' when mean > 2 SE, 'disagrees (opposite)' when mean < -2 SE, else 'disagrees (<none>)'."""
    if mean > 2 * se:
        return "agrees"
    return "disagrees (opposite)" if mean < -2 * se else f"disagrees ({none})"


def check_claims(sens: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The paper's three claims, each with a verdict from paired per-seed gains (2 standard errors)."""
    claims: list[dict[str, Any]] = []
    cont = sens.get("continuous")
    discrete = {h: s for h, s in sens.items() if h != "continuous"}
    floors = "; ".join(f"{h} best/floor {s['best_over_floor']:.2f}" for h, s in discrete.items())
    if cont is not None:
        mean, se = _paired(cont["gain_by_seed"])
        claims.append({
            "claim": "continuous head: a better encoder lowers the action error (the encoder binds)",
            "verdict": _verdict(mean, se, "no clear gain"),
            "evidence": f"{cont['low_rung']} -> {cont['high_rung']}: {cont['err_low']:.4g} -> {cont['err_high']:.4g}, "
                        f"gain {mean:.1%} ± {se:.1%} (SE over {len(cont['gain_by_seed'])} seeds)",
        })
    if cont is not None and discrete:
        smallest = min(discrete, key=lambda h: discrete[h]["vocab_size"])
        s = discrete[smallest]
        mean, se = _paired(np.subtract(cont["gain_by_seed"], s["gain_by_seed"]))
        claims.append({
            "claim": "discrete head with the smallest codebook: encoder upgrades help less than for the continuous "
                     "head (the codebook binds)",
            "verdict": _verdict(mean, se, "no clear difference"),
            "evidence": f"gain {smallest} {s['gain']:.1%} vs continuous {cont['gain']:.1%}, paired difference "
                        f"{mean:+.1%} ± {se:.1%}; {floors}",
        })
    if len(discrete) >= 2:
        ks = np.array([s["vocab_size"] for s in discrete.values()])
        gains = np.array([s["gain"] for s in discrete.values()])
        order = np.argsort(ks)
        names = list(discrete)
        lo, hi = discrete[names[order[0]]], discrete[names[order[-1]]]
        mean, se = _paired(np.subtract(hi["gain_by_seed"], lo["gain_by_seed"]))
        claims.append({
            "claim": "a larger codebook partially restores encoder sensitivity (the gain grows with K)",
            "verdict": _verdict(mean, se, "no clear trend"),
            "evidence": "gain by K: " + ", ".join(f"K={int(ks[i])} {gains[i]:.1%}" for i in order)
                        + f" (Spearman {_spearman(ks, gains):+.2f}); largest - smallest K {mean:+.1%} ± {se:.1%}",
        })
    return claims


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    rx, ry = np.argsort(np.argsort(x)), np.argsort(np.argsort(y))
    if np.std(rx) == 0 or np.std(ry) == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def plot(agg: Sequence[dict[str, Any]], metric: str, quality_label: str, path: Path) -> Path:
    """Error against encoder quality, one line per head (seed std as error bars), tokenizer floors dashed;
    left held-out samples, right the train samples."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, split in zip(axes, ("val", "train")):
        key = f"{split}/{metric}"
        for i, head in enumerate(head_order(agg)):
            pts = sorted((a for a in agg if a["head"] == head), key=lambda a: a["quality"])
            color = colors[i % len(colors)]
            label = head if head == "continuous" else (
                f"{head} (K={pts[0]['vocab_size']}, {pts[0]['bits_per_chunk']:.0f} bits)")
            ax.errorbar([a["quality"] for a in pts], [a[key] for a in pts], yerr=[a[f"{key}_std"] for a in pts],
                        xerr=[a["quality_std"] for a in pts], marker="o", ms=4, capsize=3, color=color, label=label)
            floor = f"floor_{split}/{metric}"
            if floor in pts[0]:
                ax.axhline(float(np.mean([a[floor] for a in pts])), color=color, ls="--", lw=0.9)
        cont = sorted((a for a in agg if a["head"] == head_order(agg)[0]), key=lambda a: a["quality"])
        for a in cont:
            ax.annotate(a["encoder"], (a["quality"], a[key]), textcoords="offset points", xytext=(3, 6), fontsize=7)
        ax.set_yscale("log")
        ax.set_xlabel(f"encoder quality: {quality_label}")
        ax.set_ylabel(f"{split} {metric} (original units)")
        ax.set_title(f"{'held-out' if split == 'val' else 'train'} samples; dashed = tokenizer floor")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"Where is the bottleneck? action error vs encoder quality ({PAPER})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _fmt(mean: float, std: float | None = None, digits: int = 4) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "-"
    return f"{mean:.{digits}g}" + (f" ± {std:.1g}" if std is not None and not math.isnan(std) else "")


def table_md(agg: Sequence[dict[str, Any]], metric: str) -> str:
    """Markdown table: one row per (rung, head), held-out and train errors, floors, gripper, phases."""
    cols = ["rung", "encoder", "probe R² val", "head", "K", f"val {metric}", f"floor val {metric}",
            f"train {metric}", f"floor train {metric}", "val mse coarse", "val mse fine", "val gripper err",
            "val token acc"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    order = {h: i for i, h in enumerate(head_order(agg))}
    for a in sorted(agg, key=lambda a: (a["rung"], order[a["head"]])):
        cells = [str(a["rung"]), a["encoder"], _fmt(a["probe_r2_val"], a["probe_r2_val_std"], 3), a["head"],
                 str(a["vocab_size"] or "-"),
                 _fmt(a[f"val/{metric}"], a[f"val/{metric}_std"]), _fmt(a.get(f"floor_val/{metric}")),
                 _fmt(a[f"train/{metric}"], a[f"train/{metric}_std"]), _fmt(a.get(f"floor_train/{metric}")),
                 _fmt(a["val/mse_coarse"]), _fmt(a["val/mse_fine"]), _fmt(a["val/gripper_error"], digits=3),
                 _fmt(a.get("val/token_acc"), digits=3)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_results(out_dir: str | Path, cfg_dict: dict[str, Any], rows: list[dict[str, Any]],
                  data_summary: dict[str, Any], seconds: float, command: str, metric: str, quality: str,
                  info: dict[str, Any] | None = None) -> dict[str, Path]:
    """Write results.json, runs.csv, table.md, error_vs_encoder.png and README.md into `out_dir`
    (`info`: the machine the rows were measured on; None: this one)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    agg = aggregate(rows, quality)
    sens = {split: sensitivity(rows, agg, metric, split) for split in ("val", "train")}
    claims = {split: check_claims(sens[split]) for split in ("val", "train")}
    info = info or machine_info()
    paths = {"json": out / "results.json", "csv": out / "runs.csv", "table": out / "table.md",
             "plot": out / "error_vs_encoder.png", "readme": out / "README.md"}
    payload = {"paper": PAPER, "command": command, "machine": info, "wall_seconds": seconds, "data": data_summary,
               "config": cfg_dict, "metric": metric, "quality": quality, "rows": rows, "aggregate": agg,
               "sensitivity": sens, "claims": claims}
    paths["json"].write_text(json.dumps(payload, indent=1, default=float) + "\n")
    keys = [k for k in rows[0] if k != "mse_dims" and not k.endswith("/mse_dims")]
    keys += sorted({k for r in rows for k in r} - set(keys) - {k for k in rows[0] if k.endswith("mse_dims")})
    with open(paths["csv"], "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[k for k in keys if not k.endswith("mse_dims")], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    table = table_md(agg, metric)
    paths["table"].write_text(table)
    quality_label = {"probe_r2_val": "linear-probe R² (held-out)", "probe_r2_train": "linear-probe R² (train)",
                     "rung": "rung index"}[quality]
    plot(agg, metric, quality_label, paths["plot"])
    paths["readme"].write_text(readme(command, info, seconds, data_summary, cfg_dict, table, sens, claims, metric))
    return paths


def readme(command: str, info: dict[str, Any], seconds: float, data: dict[str, Any], cfg: dict[str, Any], table: str,
           sens: dict[str, dict[str, dict[str, float]]], claims: dict[str, list[dict[str, Any]]], metric: str) -> str:
    """The summary page: command, machine, wall time, setup, claim verdicts, sensitivity and the table."""
    frac = f"{data['val_fraction']:.0%}"
    if data["split"].startswith("interleaved"):
        held_out = (f"the last {frac} of every segment of each demo, {data['split']}: one demo per task, so held-out "
                    "samples are unseen stretches of the same demos, between training stretches")
    elif data["split"] == "time_block":
        held_out = (f"the last {frac} of every demo (time_block split: one demo per task, so held-out samples are an "
                    "unseen final phase of the same task, not new demos)")
    else:
        held_out = "whole held-out episodes (episode split)"
    lines = [
        f"# Where is the bottleneck? ({PAPER})", "",
        "Generated by `vqstudy bottleneck`; do not edit numbers by hand (rerun the command).", "",
        f"- command: `{command}`",
        f"- machine: {machine_line(info)}",
        f"- wall time: {seconds / 60:.1f} min",
        f"- data: {data['train_samples']} train / {data['val_samples']} held-out chunks of H={data['horizon']} steps, "
        f"A={data['action_dim']}, state width {data['state_dim']}, tasks {data['tasks']}; held out: {held_out}",
        f"- seeds: {cfg['seeds']}; heads trained {cfg['head']['steps']} steps; error = {metric} in original action "
        "units (arm = the 6 non-gripper dims); error bars = std over seeds; dashed lines = tokenizer floor "
        "(decode(encode(true chunk)))",
        "", "![error vs encoder quality](error_vs_encoder.png)", "",
        "## The paper's claims, checked on held-out samples", "",
    ]
    for split, title in (("val", None), ("train", "## The same on the train samples (fit, no generalization)")):
        if title:
            lines += ["", title, ""]
        lines += [f"- **{c['verdict']}** - {c['claim']}: {c['evidence']}" for c in claims[split]]
        lines += ["", "| head | rung low -> high | error low | error high | gain (± seed std) | slope vs quality | "
                  "best rung | best / floor |", "|---|---|---|---|---|---|---|---|"]
        for head, s in sens[split].items():
            lines.append(f"| {head} | {s['low_rung']} -> {s['high_rung']} | {_fmt(s['err_low'], s['err_low_std'])} | "
                         f"{_fmt(s['err_high'], s['err_high_std'])} | {s['gain']:.1%} ± {s['gain_std']:.1%} | "
                         f"{s['slope']:.3g} | {s['best_rung']} | {_fmt(s['best_over_floor'], digits=3)} |")
    lines += ["", "## All cells (mean ± std over seeds)", "", table, "", "## How to read this", "", *CAVEATS]
    return "\n".join(lines) + "\n"


CAVEATS = [
    "- Encoders are frozen before the heads train (the `mlp` rungs are pretrained to predict the chunk through a "
    "linear readout), so every head of a rung sees the same information; the paper fine-tunes whole policies.",
    "- The x axis is measured: R² of a ridge probe from [encoder features, task one-hot] to the normalized next "
    "chunk, on the train samples (held-out R² is in the table; it goes negative when held-out states lie off the "
    "training ones).",
    "- Discrete heads predict the L token ids in parallel (cross-entropy per position, argmax, then the tokenizer's "
    "decoder); OAT decodes autoregressively with a transformer. The continuous head is plain MSE regression, not "
    "diffusion or flow.",
    "- `floor` = the tokenizer's own reconstruction error on the true chunks (decode(encode(chunk))); a discrete head "
    "predicting other ids is normally above it, and the gap between a head's error and its floor is what the "
    "policy adds on top of the codebook.",
    "- Success rates in a simulator are not measured; errors are open-loop, on held-out chunks of the same demos.",
]


def rewrite(out_dir: str | Path) -> dict[str, Path]:
    """Redraw table.md, error_vs_encoder.png and README.md of `out_dir` from its results.json."""
    out = Path(out_dir)
    p = json.loads((out / "results.json").read_text())
    return write_results(out, p["config"], p["rows"], p["data"], p["wall_seconds"], p["command"], p["metric"],
                         p["quality"], info=p["machine"])
