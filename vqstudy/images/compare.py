"""Paired comparisons of per-image metrics with bootstrap 95% intervals, and wording that follows the interval.

Two configurations evaluated on the same images (same seed, same validation photos) are compared by
the per-photo mean of their per-tile differences; the interval resamples photos (tiles of one photo
are not independent). `verdict` turns an interval into the sentence the study prints.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np


class Paired(NamedTuple):
    """A paired difference A - B over photos."""

    mean: float
    """Mean over photos of the per-photo mean difference."""
    low: float
    """2.5th percentile of the bootstrap means."""
    high: float
    """97.5th percentile of the bootstrap means."""
    n_photos: int
    """Photos (resampling units)."""
    n_images: int
    """Image pairs (tiles)."""


def bootstrap_mean(values: Sequence[float], n_boot: int = 10_000, seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high): the mean of `values` and its percentile bootstrap 95% interval."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        raise ValueError("bootstrap_mean: no values")
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(axis=1)  # (n_boot,)
    return float(x.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def paired_difference(a: Sequence[dict[str, Any]], b: Sequence[dict[str, Any]], key: str,
                      n_boot: int = 10_000, seed: int = 0) -> Paired:
    """A - B for per-image rows matched on (seed, image); each row needs 'seed', 'image', 'source' and `key`."""
    by_b = {(r["seed"], r["image"]): r for r in b}
    per_photo: dict[tuple[Any, str], list[float]] = defaultdict(list)
    for r in a:
        other = by_b.get((r["seed"], r["image"]))
        if other is None:
            continue
        if other["source"] != r["source"]:
            raise ValueError(f"paired rows disagree on the image: {r['source']} vs {other['source']} (seed {r['seed']}, image {r['image']})")
        if math.isnan(r[key]) or math.isnan(other[key]):
            continue
        per_photo[(r["seed"], r["source"])].append(r[key] - other[key])
    if not per_photo:
        raise ValueError(f"paired_difference: no matched images with finite {key!r}")
    means = [float(np.mean(v)) for v in per_photo.values()]
    mean, low, high = bootstrap_mean(means, n_boot, seed)
    return Paired(mean, low, high, len(means), sum(len(v) for v in per_photo.values()))


def verdict(p: Paired, unit: str, higher_is_better: bool = True, margin: float | None = None) -> str:
    """The sentence an interval allows: 'A better by m (95% [l, h])', or 'no detectable difference, interval [l, h]';
    with `margin`, an interval inside (-margin, margin) reads 'equivalent within ±margin'."""
    interval = f"[{p.low:+.3g}, {p.high:+.3g}] {unit}".strip()
    if margin is not None and -margin < p.low and p.high < margin:
        return f"equivalent within ±{margin:g} {unit}: {p.mean:+.3g}, 95% interval {interval}"
    if p.low > 0 or p.high < 0:
        better = (p.low > 0) == higher_is_better
        return f"{'A' if better else 'B'} better: {p.mean:+.3g} {unit}, 95% interval {interval}"
    return f"no detectable difference: {p.mean:+.3g} {unit}, 95% interval {interval}"
