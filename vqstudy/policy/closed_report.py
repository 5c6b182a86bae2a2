"""Analysis of a closed-loop grid (`vqstudy.policy.grid`): success vs encoder quality per head, the lift
from the poorest to the best rung with paired bootstrap intervals, the paper's three lines of evidence,
open-loop error beside success, rollout throughput.

Units of the paired bootstrap: (seed, task) cells. Within a cell every rung and head is rolled out
from the same held-out initial states, so a difference of success rates is paired; cells are resampled
with replacement (`n_boot` times, fixed seed) and the 2.5/97.5 percentiles give the 95% interval.

The three claims of arXiv 2604.03191, each answered yes / no / inconclusive:
1. continuous heads: a better encoder lifts success (lift interval above 0: yes; below `margin`: no);
2. a discrete head through a fixed codebook (`reference_head`) barely lifts: its lift interval lies
   below `barely` (0.10 success): yes; above it: no; and (2b) it lifts less than each continuous head
   (paired lift difference above 0: yes; below 0: no);
3. a larger codebook restores part of the lift (lift of the largest-K parallel head minus the smallest-K
   one above 0: yes; below 0: no).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vqstudy.files import write_atomic
from vqstudy.sim.rollout import wilson_interval

CONTINUOUS = ("mlp", "flow")


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def head_names(rows: Sequence[dict[str, Any]]) -> list[str]:
    return list(dict.fromkeys(r["head"] for r in rows))


def rung_names(rows: Sequence[dict[str, Any]]) -> list[str]:
    return [name for _, name in sorted({(r["rung"], r["encoder"]) for r in rows})]


def aggregate(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (head, encoder): success pooled over seeds with its Wilson interval, mean probe R^2,
    open-loop error, throughput."""
    out = []
    for head in head_names(rows):
        for enc in rung_names(rows):
            sel = [r for r in rows if r["head"] == head and r["encoder"] == enc]
            if not sel:
                continue
            k, n = sum(r["successes"] for r in sel), sum(r["n"] for r in sel)
            low, high = wilson_interval(k, n)
            out.append({
                "head": head, "head_kind": sel[0]["head_kind"], "vocab_size": sel[0]["vocab_size"], "encoder": enc,
                "rung": sel[0]["rung"], "seeds": len(sel), "probe_r2": float(np.mean([r["probe_r2"] for r in sel])),
                "probe_r2_hand": float(np.mean([r["probe_r2_hand"] for r in sel])),
                "probe_r2_object": float(np.mean([r["probe_r2_object"] for r in sel])),
                "successes": k, "n": n, "success": k / n, "ci_low": low, "ci_high": high,
                "val_chunk_mse": float(np.mean([r["val/chunk_mse"] for r in sel])),
                "token_acc": float(np.mean([r["val/token_acc"] for r in sel])) if "val/token_acc" in sel[0] else None,
                "floor_mse": float(np.mean([r["val/tokenizer_floor_mse"] for r in sel]))
                if "val/tokenizer_floor_mse" in sel[0] else None,
                "steps_per_s": float(np.mean([r["timing"]["env_steps_per_s"] for r in sel])),
                "sim_fraction": float(np.mean([r["timing"]["sim_fraction"] for r in sel])),
                "infer_ms": float(np.mean([r["source_stats"].get("infer_ms_per_call", float("nan")) for r in sel])),
            })
    return out


def cells(rows: Sequence[dict[str, Any]], head: str, encoder: str) -> dict[tuple[int, str], float]:
    """(seed, task) -> success rate of `head` on rung `encoder`."""
    return {(r["seed"], t): s / n for r in rows if r["head"] == head and r["encoder"] == encoder
            for t, (s, n) in r["tasks"].items()}


def lift_cells(rows: Sequence[dict[str, Any]], head: str, worst: str, best: str) -> dict[tuple[int, str], float]:
    """(seed, task) -> success(best rung) - success(worst rung) of `head`, on the cells both have."""
    lo, hi = cells(rows, head, worst), cells(rows, head, best)
    return {c: hi[c] - lo[c] for c in sorted(set(lo) & set(hi))}


def bootstrap(values: Sequence[float], n_boot: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Mean of `values` and the 95% percentile interval of its bootstrap distribution."""
    x = np.asarray(values, dtype=np.float64)
    if len(x) == 0:
        return float("nan"), float("nan"), float("nan")
    idx = np.random.default_rng(seed).integers(0, len(x), size=(n_boot, len(x)))
    means = x[idx].mean(1)
    return float(x.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def lifts(rows: Sequence[dict[str, Any]], n_boot: int = 2000) -> dict[str, dict[str, Any]]:
    """Per head: lift from the poorest to the best rung it was run on, paired over (seed, task) cells."""
    out = {}
    for head in head_names(rows):
        rungs = [e for e in rung_names(rows) if any(r["head"] == head and r["encoder"] == e for r in rows)]
        if len(rungs) < 2:
            continue
        d = lift_cells(rows, head, rungs[0], rungs[-1])
        mean, low, high = bootstrap(list(d.values()), n_boot)
        out[head] = {"worst": rungs[0], "best": rungs[-1], "lift": mean, "low": low, "high": high, "cells": len(d),
                     "diffs": d}
    return out


def paired_difference(a: dict[tuple, float], b: dict[tuple, float], n_boot: int = 2000) -> tuple[float, float, float, int]:
    """Mean of a - b over shared cells with its bootstrap interval, and the cell count."""
    shared = sorted(set(a) & set(b))
    mean, low, high = bootstrap([a[c] - b[c] for c in shared], n_boot)
    return mean, low, high, len(shared)


def _shared_means(a: dict[tuple, float], b: dict[tuple, float]) -> tuple[float, float]:
    """Means of `a` and of `b` over the cells both have (the two sides of `paired_difference`)."""
    shared = sorted(set(a) & set(b))
    if not shared:
        return float("nan"), float("nan")
    return float(np.mean([a[c] for c in shared])), float(np.mean([b[c] for c in shared]))


MIN_CELLS = 5
"""Fewer paired (seed, task) cells than this: a bootstrap interval means nothing, the answer is inconclusive."""


def verdict(low: float, high: float, no_below: float | None = None, cells: int | None = None) -> str:
    if np.isnan(low):
        return "inconclusive (not run)"
    if cells is not None and cells < MIN_CELLS:
        return f"inconclusive ({cells} cells < {MIN_CELLS})"
    if low > 0:
        return "yes"
    if high < 0 or (no_below is not None and high < no_below):
        return "no"
    return "inconclusive"


def check_claims(rows: Sequence[dict[str, Any]], reference_head: str, margin: float = 0.05, barely: float = 0.10,
                 n_boot: int = 2000) -> list[dict[str, Any]]:
    """The three lines of evidence with numbers (see the module docstring)."""
    lf = lifts(rows, n_boot)
    claims = []
    for head in [h for h in lf if h in CONTINUOUS]:
        x = lf[head]
        claims.append({"claim": f"1. continuous head '{head}': a better encoder lifts success",
                       "estimate": x["lift"], "low": x["low"], "high": x["high"], "cells": x["cells"],
                       "answer": verdict(x["low"], x["high"], margin, x["cells"]),
                       "what": f"success({x['best']}) - success({x['worst']})"})
    if not any(h in CONTINUOUS for h in lf):
        claims.append({"claim": "1. continuous head: a better encoder lifts success", "estimate": float("nan"),
                       "low": float("nan"), "high": float("nan"), "cells": 0, "answer": "inconclusive (not run)",
                       "what": "no continuous head on two rungs"})
        claims.append({"claim": f"2b. fixed codebook: '{reference_head}' lifts less than a continuous head",
                       "estimate": float("nan"), "low": float("nan"), "high": float("nan"), "cells": 0,
                       "answer": "inconclusive (not run)", "what": "no continuous head on two rungs"})
    ref = lf.get(reference_head)
    if ref is None:
        claims.append({"claim": f"2. fixed codebook '{reference_head}': a better encoder barely lifts success",
                       "estimate": float("nan"), "low": float("nan"), "high": float("nan"), "cells": 0,
                       "answer": "inconclusive (not run)", "what": "reference head missing"})
    else:
        claims.append({"claim": f"2. fixed codebook '{reference_head}': a better encoder barely lifts success "
                                f"(lift < {barely:.2f})", "estimate": ref["lift"], "low": ref["low"], "high": ref["high"],
                       "cells": ref["cells"], "answer": verdict(barely - ref["high"], barely - ref["low"], cells=ref["cells"]),
                       "what": f"success({ref['best']}) - success({ref['worst']})"})
        for head in [h for h in lf if h in CONTINUOUS]:
            mean, low, high, n = paired_difference(lf[head]["diffs"], ref["diffs"], n_boot)
            a, b = _shared_means(lf[head]["diffs"], ref["diffs"])
            claims.append({"claim": f"2b. '{reference_head}' lifts less than '{head}'", "estimate": mean, "low": low,
                           "high": high, "cells": n, "answer": verdict(low, high, cells=n),
                           "what": f"lift({head}) - lift({reference_head}) on shared cells = {a:.3f} - {b:.3f}"})
    parallel = sorted({(r["vocab_size"], r["head"]) for r in rows if r["head_kind"] == "parallel" and r["head"] in lf})
    if len(parallel) >= 2:
        (k_small, small), (k_large, large) = parallel[0], parallel[-1]
        mean, low, high, n = paired_difference(lf[large]["diffs"], lf[small]["diffs"], n_boot)
        lf_large, lf_small = _shared_means(lf[large]["diffs"], lf[small]["diffs"])
        claims.append({"claim": f"3. a larger codebook restores lift (K={k_large} vs K={k_small})", "estimate": mean,
                       "low": low, "high": high, "cells": n, "answer": verdict(low, high, cells=n),
                       "what": f"lift({large}) - lift({small}) on shared cells = {lf_large:.3f} - {lf_small:.3f}"})
    else:
        claims.append({"claim": "3. a larger codebook restores lift", "estimate": float("nan"), "low": float("nan"),
                       "high": float("nan"), "cells": 0, "answer": "inconclusive (not run)",
                       "what": "fewer than two parallel heads"})
    return claims


def plot(agg: Sequence[dict[str, Any]], path: Path) -> Path:
    """Success (Wilson 95% bars) vs held-out probe R^2, one line per head."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for head in dict.fromkeys(a["head"] for a in agg):
        pts = sorted((a for a in agg if a["head"] == head), key=lambda a: a["probe_r2"])
        x = [a["probe_r2"] for a in pts]
        y = [a["success"] for a in pts]
        err = [[a["success"] - a["ci_low"] for a in pts], [a["ci_high"] - a["success"] for a in pts]]
        style = "-" if pts[0]["head_kind"] in CONTINUOUS else "--"
        ax.errorbar(x, y, yerr=err, fmt=style + "o", capsize=3, label=head, alpha=0.85)
    ax.set_xlabel("encoder quality: held-out R² of a linear probe for hand + object position")
    ax.set_ylabel("task success (Wilson 95%)")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _f(x: Any, digits: int = 3) -> str:
    if x is None:
        return ""
    if isinstance(x, float):
        return "nan" if np.isnan(x) else f"{x:.{digits}f}"
    return str(x)


def tables(agg: Sequence[dict[str, Any]], lf: dict[str, dict[str, Any]], claims: Sequence[dict[str, Any]]) -> str:
    lines = ["## Success vs encoder quality (pooled over seeds and tasks)", "",
             "| head | K | encoder | probe R² (hand / object) | success | 95% Wilson | n | open-loop val MSE | "
             "token acc | tokenizer floor MSE | env steps/s | sim fraction | infer ms/call |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for a in agg:
        lines.append(f"| {a['head']} | {_f(a['vocab_size'])} | {a['encoder']} | {_f(a['probe_r2'])} "
                     f"({_f(a['probe_r2_hand'])} / {_f(a['probe_r2_object'])}) | {_f(a['success'])} | "
                     f"[{_f(a['ci_low'])}, {_f(a['ci_high'])}] | {a['n']} | {_f(a['val_chunk_mse'], 4)} | "
                     f"{_f(a['token_acc'])} | {_f(a['floor_mse'], 4)} | {a['steps_per_s']:.0f} | "
                     f"{a['sim_fraction']:.2f} | {_f(a['infer_ms'], 2)} |")
    lines += ["", "## Lift from the poorest to the best encoder (paired bootstrap over (seed, task) cells)", "",
              "| head | worst -> best | lift | 95% interval | cells |", "|---|---|---|---|---|"]
    for head, x in lf.items():
        lines.append(f"| {head} | {x['worst']} -> {x['best']} | {x['lift']:+.3f} | [{x['low']:+.3f}, {x['high']:+.3f}] | "
                     f"{x['cells']} |")
    lines += ["", "## The paper's three lines of evidence", "",
              "| claim | answer | estimate | 95% interval | cells | what |", "|---|---|---|---|---|---|"]
    for c in claims:
        lines.append(f"| {c['claim']} | **{c['answer']}** | {_f(c['estimate'])} | [{_f(c['low'])}, {_f(c['high'])}] | "
                     f"{c['cells']} | {c['what']} |")
    return "\n".join(lines) + "\n"


def per_task_table(rows: Sequence[dict[str, Any]]) -> str:
    """Successes / rollouts per task (pooled over seeds), one row per (head, encoder)."""
    tasks = list(dict.fromkeys(t for r in rows for t in r["tasks"]))
    lines = ["| head | encoder | " + " | ".join(tasks) + " |", "|---|---|" + "---|" * len(tasks)]
    for head in head_names(rows):
        for enc in rung_names(rows):
            sel = [r for r in rows if r["head"] == head and r["encoder"] == enc]
            if sel:
                cells = [f"{sum(r['tasks'][t][0] for r in sel if t in r['tasks'])}/"
                         f"{sum(r['tasks'][t][1] for r in sel if t in r['tasks'])}" for t in tasks]
                lines.append(f"| {head} | {enc} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def throughput(rows: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Env steps per second and the simulator's share of rollout time, over the whole grid."""
    steps = sum(r["timing"]["env_steps"] for r in rows)
    busy = sum(r["timing"]["wall_s"] - r["timing"]["setup_s"] for r in rows)
    sim = sum(r["timing"]["sim_fraction"] * (r["timing"]["wall_s"] - r["timing"]["setup_s"]) for r in rows)
    return {"env_steps": steps, "rollout_seconds": busy, "env_steps_per_s": steps / busy if busy else 0.0,
            "sim_fraction": sim / busy if busy else 0.0,
            "train_seconds": sum(r["train_seconds"] for r in rows),
            "tokenizer_seconds": sum({(r["seed"], r["head"]): r["tokenizer_seconds"] for r in rows}.values())}


def write_report(rows_path: str | Path, out_dir: str | Path, reference_head: str, header: str = "",
                 n_boot: int = 2000) -> dict[str, Path]:
    """results.md, results.json and success_vs_encoder.png in `out_dir` from the rows of a grid."""
    rows = read_rows(rows_path)
    if not rows:
        raise ValueError(f"{rows_path}: no rows")
    out = Path(out_dir)
    agg = aggregate(rows)
    lf = lifts(rows, n_boot)
    claims = check_claims(rows, reference_head, n_boot=n_boot)
    tp = throughput(rows)
    text = (header + "\n\n" if header else "") + tables(agg, lf, claims) + (
        f"\n## Rollout throughput\n\n{tp['env_steps']} env steps in {tp['rollout_seconds']:.0f} s of rollouts: "
        f"**{tp['env_steps_per_s']:.0f} env steps/s** with batched inference, simulator step "
        f"**{tp['sim_fraction']:.0%}** of rollout time (target >= 50%). Training: {tp['train_seconds']:.0f} s of "
        f"heads, {tp['tokenizer_seconds']:.0f} s of tokenizers.\n"
        f"\n## Per task (successes / rollouts, pooled over seeds)\n\n{per_task_table(rows)}")
    paths = {"md": out / "results.md", "json": out / "results.json", "png": out / "success_vs_encoder.png"}
    write_atomic(paths["md"], text.encode())
    lf_json = {h: {k: v for k, v in x.items() if k != "diffs"} for h, x in lf.items()}
    write_atomic(paths["json"], (json.dumps({"aggregate": agg, "lifts": lf_json, "claims": claims, "throughput": tp},
                                            indent=2) + "\n").encode())
    plot(agg, paths["png"])
    return paths
