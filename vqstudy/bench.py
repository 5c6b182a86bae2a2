"""Benchmark: nearest-code search and quantizer training step vs the machine's GEMM rate, FAISS, torch.cdist
and vector-quantize-pytorch (vqp). `python scripts/bench_nearest.py [--quick] [--out results/]` on the CPU;
`python scripts/bench_nearest.py --device cuda --out results/` on a GPU (writes bench_nearest_cuda.md/json).

Per grid entry (N, K, D), measured in one process, one after the other:
- gemm:          fp32 torch.mm of two (S, S) matrices just before the entry (best of a few) = the limit
                 (on CUDA also the TF32 rate);
- vqstudy:       `nearest_code(x, codebook)` with the auto backend (compiled C++ kernel on CPU, Triton on CUDA);
- vqstudy_tf32:  (CUDA) the Triton kernel with TF32 dot products;
- addmm:         (CUDA) the torch reference: addmm distance matrix + argmin;
- faiss:         (CPU) `faiss.IndexFlatL2(D)`, codebook added, `search(x, 1)`, with as many OpenMP threads as torch;
- cdist:         `torch.cdist(x, codebook).argmin(1)`;
- vqp_eval:      `VectorQuantize(dim=D, codebook_size=K)` eval forward under no_grad;
- vqp_train:     vqp forward + backward, kmeans_init=True, threshold_ema_dead_code=2, after a warm-up step;
- vqstudy_train: `Quantizer(dim=D, codebook_size=K)` forward + backward of loss + quantized.sum(),
                 after warm-up steps until its k-means init has run.
Times are medians of `repeats` calls (fewer for slow baselines, see `BenchConfig.budget_s`); GFLOP/s
counts 2*N*K*D flops (one search) for every method. Every search's ids are compared with the torch
reference (addmm + argmin, in row chunks). Peak extra memory of the searches is measured in a fresh
subprocess per (method, entry) on the CPU (see `memory_probe`), with torch.cuda's peak statistics on CUDA.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import re
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from vqstudy.files import write_atomic
from vqstudy.machine import loadavg, machine_info

log = logging.getLogger(__name__)

GRID = (
    (4096, 512, 32), (65536, 4096, 32), (32768, 1024, 64), (65536, 16384, 32),  # the original grid
    (65536, 256, 32), (16384, 65536, 32),  # K = 256 and 65536
    (65536, 4096, 8), (65536, 4096, 16), (16384, 4096, 128),  # D = 8, 16, 128 (64 above)
    (1024, 512, 32), (1024, 4096, 32),  # N = 1024: the batch of a small training step
)  # fmt: skip
QUICK_GRID = ((1024, 128, 16), (2048, 512, 32))
SEARCH_METHODS = ("vqstudy", "faiss", "cdist", "vqp_eval")
CUDA_SEARCH_METHODS = ("vqstudy", "vqstudy_tf32", "addmm", "cdist", "vqp_eval")
TRAIN_METHODS = ("vqp_train", "vqstudy_train")
ALL_METHODS = SEARCH_METHODS + CUDA_SEARCH_METHODS[1:3] + TRAIN_METHODS
MEMORY_METHODS = ("vqstudy", "vqstudy_tf32", "faiss", "addmm")
"""Searches whose peak memory is probed (a fresh process each; the N x K baselines are known to need N x K)."""
NEAR_TIE_REL = 1e-6
"""Differing ids whose float64 distances differ by less than this fraction of ||x||^2 + ||c||^2 are called near
ties (fp32 rounds those terms at ~6e-8 relative; the two computations accumulate in different orders)."""
PAIRED_TRAIN_MAX_S = 0.1
"""vqstudy's and vqp's training steps are also timed in interleaved pairs where both take at most this long
(the small shapes, where the margin over 5x is thin; a pair of the large ones would take seconds)."""
PAIRED_GEMM_MIN_S = 0.01
"""The interleaved GEMM share is measured where one search takes at least this long: a shorter search right after
a GEMM would be timed on caches the GEMM just evicted."""
REFERENCE_CHUNK_BYTES = 256 * 2**20
"""The ids reference (torch addmm + argmin) runs over row chunks whose (rows, K) matrix is at most this big."""


@dataclass
class BenchConfig:
    """What `run_bench` measures."""

    grid: tuple[tuple[int, int, int], ...] = GRID
    """(N, K, D) entries: N vectors of width D searched among K codes."""
    repeats: int = 7
    """Timed calls per search method and entry (median reported)."""
    train_repeats: int = 3
    """Timed training steps per training method and entry (after warm-up): at least this many ..."""
    train_min_seconds: float = 1.0
    """... and more until they add up to this many seconds (small steps are noisy; at most 500 steps)."""
    gemm_size: int = 2048
    """S of the (S, S) @ (S, S) fp32 GEMM that defines the machine's rate."""
    max_baseline_bytes: int = 2**31
    """Skip cdist/vqp at entries whose (N, K) fp32 matrix is larger than this (they materialize it, several
    times for vqp); vqstudy always runs."""
    memory: bool = True
    """Measure peak extra memory of the searches (one subprocess per method and entry on the CPU)."""
    seed: int = 0
    """Seed of the random inputs."""
    methods: tuple[str, ...] = SEARCH_METHODS + TRAIN_METHODS
    """Methods to run (subset of ALL_METHODS; on CUDA the training methods and faiss are not run)."""
    device: str = "cpu"
    """Device of the inputs: "cpu" or "cuda"."""
    budget_s: float = 15.0
    """A method whose first call takes longer than budget_s / repeats gets fewer timed calls (at least 3)."""
    paired_min_seconds: float = 2.0
    """vqstudy vs FAISS, interleaved: call pairs (order alternating) until both add up to this many seconds
    (at least `repeats` pairs, at most 200); 0 turns the paired measurement off."""

    def __post_init__(self) -> None:
        if not self.grid:
            raise ValueError("BenchConfig.grid must hold at least one (N, K, D) entry, got ()")
        for entry in self.grid:
            if len(entry) != 3 or min(entry) < 1:
                raise ValueError(f"BenchConfig.grid entries must be (N, K, D) of positive ints, got {entry!r}")
        for name in ("repeats", "train_repeats", "gemm_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"BenchConfig.{name} ({getattr(self, name)}) must be >= 1")
        unknown = set(self.methods) - set(ALL_METHODS)
        if unknown:
            raise ValueError(f"BenchConfig.methods has unknown {sorted(unknown)}; expected a subset of "
                             f"{list(ALL_METHODS)}")  # fmt: skip
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"BenchConfig.device must be 'cpu' or 'cuda', got {self.device!r}")


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _times(fn: Callable[[], Any], repeats: int, warmup: int = 1, budget_s: float | None = None,
           device: str = "cpu", min_total_s: float = 0.0, max_repeats: int = 500) -> list[float]:  # fmt: skip
    """Wall times of `repeats` calls after `warmup` calls; fewer (>= 3) when one call exceeds budget_s / repeats;
    more (up to `max_repeats`) until the timed calls add up to `min_total_s` (fast calls need many samples)."""
    for _ in range(warmup):
        start = time.perf_counter()
        fn()
        _sync(device)
        first = time.perf_counter() - start
        if budget_s is not None and first * repeats > budget_s:
            repeats = max(3, int(budget_s / first))
    out: list[float] = []
    while len(out) < repeats or (sum(out) < min_total_s and len(out) < max_repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        out.append(time.perf_counter() - start)
    return out


def paired_ratio(own: Callable[[], Any], peer: Callable[[], Any], pairs: int, min_total_s: float = 0.0,
                 max_pairs: int = 200) -> tuple[float, list[float]]:
    """Median over interleaved call pairs of peer time / own time, and the per-pair ratios.

    The two calls of a pair run back to back, in alternating order (own first in even pairs), so both see the
    same load: on a shared machine another process's burst slows a pair's two calls alike instead of whichever
    method happened to be timed during it. At least `pairs` pairs, more until they add up to `min_total_s`."""
    own(), peer()
    ratios: list[float] = []
    total = 0.0
    while len(ratios) < pairs or (total < min_total_s and len(ratios) < max_pairs):
        timed = {}
        for name, fn in (("own", own), ("peer", peer)) if len(ratios) % 2 == 0 else (("peer", peer), ("own", own)):
            start = time.perf_counter()
            fn()
            timed[name] = time.perf_counter() - start
        ratios.append(timed["peer"] / timed["own"])
        total += timed["own"] + timed["peer"]
    return statistics.median(ratios), ratios


def _quartiles(values: list[float]) -> list[float]:
    """[first, third] quartile."""
    return statistics.quantiles(values, n=4)[::2] if len(values) > 1 else [values[0]] * 2


def gemm_gflops(size: int = 2048, repeats: int = 3, device: str = "cpu", tf32: bool = False) -> float:
    """Best fp32 (or TF32 on CUDA) GFLOP/s of (size, size) @ (size, size) over `repeats` calls."""
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        best = min(_times(gemm_call(size, device), repeats, device=device))
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old
    return 2 * size**3 / best / 1e9


def gemm_call(size: int = 2048, device: str = "cpu") -> Callable[[], Any]:
    """One fp32 (size, size) @ (size, size) torch.mm into a preallocated output (2 size^3 flops)."""
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(size, size, generator=g).to(device), torch.randn(size, size, generator=g).to(device)
    c = torch.empty(size, size, device=device)
    return lambda: torch.mm(a, b, out=c)


def _inputs(n: int, k: int, d: int, seed: int, device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g).to(device), torch.randn(k, d, generator=g).to(device)


def faiss_threads() -> int:
    """Import faiss and give it as many OpenMP threads as torch has (ImportError says what to install)."""
    try:
        import faiss
    except ImportError as err:
        raise ImportError("the faiss baseline needs faiss-cpu: pip install 'vqstudy[bench]' (or faiss-cpu)") from err
    faiss.omp_set_num_threads(torch.get_num_threads())
    return torch.get_num_threads()


def _search_fn(method: str, x: torch.Tensor, codebook: torch.Tensor) -> Callable[[], Any]:
    """A zero-argument callable doing one search with `method` (index/module construction excluded)."""
    if method == "vqstudy":
        from vqstudy.kernels import nearest_code

        return lambda: nearest_code(x, codebook)
    if method == "vqstudy_tf32":
        from vqstudy.kernels import nearest_code

        return lambda: nearest_code(x, codebook, allow_tf32=True)
    if method == "addmm":
        from vqstudy.kernels import nearest_code

        return lambda: nearest_code(x, codebook, backend="torch")
    if method == "faiss":
        faiss_threads()
        import faiss

        index = faiss.IndexFlatL2(x.shape[1])
        index.add(codebook.numpy())
        queries = x.numpy()
        return lambda: index.search(queries, 1)
    if method == "cdist":
        return lambda: torch.cdist(x, codebook).argmin(dim=1)
    if method == "vqp_eval":
        from vector_quantize_pytorch import VectorQuantize

        vq = VectorQuantize(dim=x.shape[1], codebook_size=codebook.shape[0]).eval().to(x.device)
        vq._codebook.embed.data.copy_(codebook[None])  # (1, K, D): search the same codebook as the others
        batch = x[None]  # (1, N, D)

        def run() -> Any:
            with torch.no_grad():
                return vq(batch)

        return run
    raise ValueError(f"unknown search method {method!r}; expected one of {SEARCH_METHODS + CUDA_SEARCH_METHODS}")


def _ids(method: str, result: Any) -> torch.Tensor:
    """(N,) int64 ids from one search result of `method`."""
    if method in ("vqstudy", "vqstudy_tf32", "addmm"):
        return result.indices
    if method == "faiss":
        return torch.from_numpy(result[1][:, 0]).long()
    if method == "cdist":
        return result
    return result[1].reshape(-1)  # vqp: (quantized, indices (1, N), loss)


def reference_ids(x: torch.Tensor, codebook: torch.Tensor, chunk_bytes: int = REFERENCE_CHUNK_BYTES) -> torch.Tensor:
    """(N,) ids of the torch reference (addmm + argmin), over row chunks so the matrix stays small."""
    from vqstudy.kernels.reference import nearest_code_torch

    rows = max(1, chunk_bytes // (4 * codebook.shape[0]))
    return torch.cat([nearest_code_torch(x[i : i + rows], codebook)[0] for i in range(0, x.shape[0], rows)])


def compare_ids(x: torch.Tensor, codebook: torch.Tensor, ids: torch.Tensor, ref: torch.Tensor) -> dict[str, Any]:
    """How `ids` differ from the reference `ref`: count, and the float64 distance gap where they differ."""
    ids, ref = ids.to(ref.device), ref
    differ = (ids != ref).nonzero().squeeze(1)  # (M,)
    out: dict[str, Any] = {"ids_differ": int(differ.numel())}
    if differ.numel():
        xs = x[differ].double()  # (M, D)
        d_own = (xs - codebook[ids[differ]].double()).square().sum(1)  # (M,)
        d_ref = (xs - codebook[ref[differ]].double()).square().sum(1)
        scale = xs.square().sum(1) + codebook[ref[differ]].double().square().sum(1)  # size of the terms
        out["max_gap"] = float((d_own - d_ref).abs().max())
        out["max_rel_gap"] = float(((d_own - d_ref).abs() / scale).max())  # vs ||x||^2 + ||c||^2
        out["own_closer"] = int((d_own < d_ref).sum())
        out["ref_closer"] = int((d_own > d_ref).sum())
    return out


def _train_step_fn(method: str, x: torch.Tensor, k: int) -> tuple[Callable[[], Any], float]:
    """(one training step, seconds spent warming up until k-means init is done)."""
    d = x.shape[1]
    x = x.clone().requires_grad_(True)
    if method == "vqp_train":
        from vector_quantize_pytorch import VectorQuantize

        vq = VectorQuantize(dim=d, codebook_size=k, kmeans_init=True, threshold_ema_dead_code=2).train()
        batch = x[None]  # (1, N, D)

        def step() -> None:
            quantized, _, loss = vq(batch)
            (quantized.sum() + loss.sum()).backward()

        start = time.perf_counter()
        step()  # vqp runs k-means on its first training batch
        return step, time.perf_counter() - start
    if method == "vqstudy_train":
        from vqstudy.quantize import Quantizer

        q = Quantizer(dim=d, codebook_size=k).train()

        def step() -> None:
            out = q(x)
            (out.loss + out.quantized.sum()).backward()

        start = time.perf_counter()
        for _ in range(q.config.kmeans_max_steps + 1):  # collect vectors until k-means init has run
            step()
            if bool(q.initialized):
                break
        if not bool(q.initialized):
            raise RuntimeError("vqstudy Quantizer did not finish its k-means init during warm-up")
        return step, time.perf_counter() - start
    raise ValueError(f"unknown training method {method!r}; expected one of {TRAIN_METHODS}")


def _status_kib(key: str) -> int:
    text = Path("/proc/self/status").read_text()
    found = re.search(rf"^{key}:\s+(\d+) kB", text, re.M)
    if not found:
        raise OSError(f"{key} not in /proc/self/status")
    return int(found.group(1))


def memory_probe(method: str, n: int, k: int, d: int, seed: int = 0) -> int:
    """Peak extra resident memory (bytes) of one search call, in this process.

    After a warm-up call: reset the kernel's peak-RSS mark (`echo 5 > /proc/self/clear_refs`), read VmRSS,
    search once, read VmHWM; the difference is what the call touched beyond inputs and module state.
    Accurate when glibc maps every large buffer fresh (MALLOC_MMAP_THRESHOLD_ set, see `measure_memory`).
    """
    x, codebook = _inputs(n, k, d, seed)
    fn = _search_fn(method, x, codebook)
    fn()
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")
    base = _status_kib("VmRSS")
    result = fn()
    peak = _status_kib("VmHWM")
    del result
    return max(0, peak - base) * 1024


def _probe_main() -> None:
    method, n, k, d, seed = sys.argv[1], *map(int, sys.argv[2:6])
    print(json.dumps({"peak_extra_bytes": memory_probe(method, n, k, d, seed)}))


def measure_memory(method: str, n: int, k: int, d: int, seed: int = 0, timeout: float = 600) -> int | None:
    """`memory_probe` in a fresh Python process (glibc mmap threshold pinned at 64 KiB); None if unavailable."""
    root = str(Path(__file__).resolve().parent.parent)
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", PYTHONPATH=os.pathsep.join(
        p for p in (root, os.environ.get("PYTHONPATH")) if p))  # fmt: skip
    cmd = [sys.executable, "-c", "from vqstudy.bench import _probe_main; _probe_main()", method, *map(str, (n, k, d, seed))]
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, check=True)
        return int(json.loads(proc.stdout.strip().splitlines()[-1])["peak_extra_bytes"])
    except (subprocess.SubprocessError, OSError, ValueError, KeyError, IndexError) as err:
        log.warning("memory probe %s %s failed: %s", method, (n, k, d), err)
        return None


def _skip_reason(cfg: BenchConfig, method: str, n: int, k: int) -> str | None:
    cuda = cfg.device == "cuda"
    if cuda and method in ("faiss", *TRAIN_METHODS):
        return "CPU-only method in this benchmark"
    if not cuda and method in ("vqstudy_tf32", "addmm"):
        return "CUDA-only method (on the CPU vqstudy's reference is the ids check)"
    if method == "faiss":
        try:
            faiss_threads()
        except ImportError as err:
            return str(err)
    if method in ("vqstudy", "vqstudy_tf32", "faiss"):
        return None  # memory-bounded searches run at every size
    if n * k * 4 > cfg.max_baseline_bytes:
        if method == "vqstudy_train":
            return "no vqp baseline at this size (its k-means warm-up alone takes minutes)"
        return f"(N, K) fp32 matrix {n * k * 4 / 2**30:.1f} GiB > max_baseline_bytes"
    return None


def _cuda_peak_extra(fn: Callable[[], Any]) -> int:
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    result = fn()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    del result
    return peak - base


def _entry(cfg: BenchConfig, n: int, k: int, d: int) -> dict[str, Any]:
    flops = 2 * n * k * d
    gemm = gemm_gflops(cfg.gemm_size, device=cfg.device)
    gemm_tf32 = gemm_gflops(cfg.gemm_size, device=cfg.device, tf32=True) if cfg.device == "cuda" else None
    x, codebook = _inputs(n, k, d, cfg.seed, cfg.device)
    ref = reference_ids(x, codebook)
    rows: dict[str, dict[str, Any]] = {}
    steps: dict[str, Callable[[], Any]] = {}
    for method in cfg.methods:
        row: dict[str, Any] = {"method": method}
        rows[method] = row
        reason = _skip_reason(cfg, method, n, k)
        if reason:
            row["skipped"] = reason
            continue
        log.info("bench %s at N=%d K=%d D=%d", method, n, k, d)
        rate = gemm_tf32 if method == "vqstudy_tf32" else gemm
        if method in TRAIN_METHODS:
            step, row["warmup_s"] = _train_step_fn(method, x, k)
            times = _times(step, cfg.train_repeats, warmup=2, min_total_s=cfg.train_min_seconds)
            if statistics.median(times) <= PAIRED_TRAIN_MAX_S:
                steps[method] = step  # kept for the interleaved comparison below
        else:
            fn = _search_fn(method, x, codebook)
            times = _times(fn, cfg.repeats, budget_s=cfg.budget_s, device=cfg.device)
            row.update(compare_ids(x, codebook, _ids(method, fn()), ref))
        row["time_s"] = statistics.median(times)
        row["time_min_s"] = min(times)
        row["calls"] = len(times)
        row["gflops"] = flops / row["time_s"] / 1e9
        row["ratio_gemm"] = row["gflops"] / rate
        if cfg.memory and method in MEMORY_METHODS:
            if cfg.device == "cuda":
                row["peak_extra_bytes"] = _cuda_peak_extra(_search_fn(method, x, codebook))
            else:
                row["peak_extra_bytes"] = measure_memory(method, n, k, d, cfg.seed)
        gc.collect()
    for method, base in (("vqstudy", "vqp_eval"), ("vqstudy_tf32", "vqp_eval"), ("addmm", "vqp_eval"),
                         ("faiss", "vqp_eval"), ("cdist", "vqp_eval"), ("vqp_eval", "vqp_eval"),
                         ("vqstudy_train", "vqp_train"), ("vqp_train", "vqp_train")):  # fmt: skip
        if "time_s" in rows.get(method, {}) and "time_s" in rows.get(base, {}):
            rows[method]["speedup_vs_vqp"] = rows[base]["time_s"] / rows[method]["time_s"]
    if len(steps) == 2 and cfg.paired_min_seconds > 0:  # both training steps short: interleave them too
        log.info("bench vqstudy_train vs vqp_train, interleaved, at N=%d K=%d D=%d", n, k, d)
        ratio, ratios = paired_ratio(steps["vqstudy_train"], steps["vqp_train"], cfg.train_repeats,
                                     cfg.paired_min_seconds)  # fmt: skip
        rows["vqstudy_train"].update(speedup_vs_vqp_paired=ratio, paired_quartiles=_quartiles(ratios),
                                     paired_calls=len(ratios))  # fmt: skip
    steps.clear()
    own_time = rows.get("vqstudy", {}).get("time_s", 0.0)
    if own_time >= PAIRED_GEMM_MIN_S and cfg.paired_min_seconds > 0 and cfg.device == "cpu":
        log.info("bench vqstudy vs GEMM, interleaved, at N=%d K=%d D=%d", n, k, d)
        ratio, ratios = paired_ratio(_search_fn("vqstudy", x, codebook), gemm_call(cfg.gemm_size), cfg.repeats,
                                     cfg.paired_min_seconds)  # fmt: skip
        scale = flops / (2 * cfg.gemm_size**3)  # (search flops / search time) / (GEMM flops / GEMM time)
        rows["vqstudy"]["ratio_gemm_paired"] = ratio * scale
        rows["vqstudy"]["ratio_gemm_paired_quartiles"] = [q * scale for q in _quartiles(ratios)]
    if "time_s" in rows.get("vqstudy", {}) and "time_s" in rows.get("faiss", {}):
        rows["vqstudy"]["speedup_vs_faiss"] = rows["faiss"]["time_s"] / rows["vqstudy"]["time_s"]
        if cfg.paired_min_seconds > 0:
            log.info("bench vqstudy vs faiss, interleaved, at N=%d K=%d D=%d", n, k, d)
            ratio, ratios = paired_ratio(_search_fn("vqstudy", x, codebook), _search_fn("faiss", x, codebook),
                                         cfg.repeats, cfg.paired_min_seconds)  # fmt: skip
            rows["vqstudy"]["speedup_vs_faiss_paired"] = ratio
            rows["vqstudy"]["paired_calls"] = len(ratios)
            rows["vqstudy"]["paired_quartiles"] = _quartiles(ratios)
    entry: dict[str, Any] = {"n": n, "k": k, "d": d, "flops": flops, "gemm_gflops": gemm, "methods": list(rows.values())}
    if gemm_tf32 is not None:
        entry["gemm_tf32_gflops"] = gemm_tf32
    from vqstudy.kernels import blocked_plan, resolve_backend

    backend = resolve_backend("auto", x, codebook)
    entry["backend"] = backend
    if backend == "compiled":
        from vqstudy.kernels.compiled import compiled_plan, tile_shape

        threads, row_block, chunk_tiles = compiled_plan(n, k, d, torch.get_num_threads())
        entry["compiled_plan"] = {"threads": threads, "row_block": row_block, "chunk_codes": chunk_tiles * tile_shape()[1],
                                  "tile": list(tile_shape())}  # fmt: skip
    elif backend == "blocked":
        entry["blocked_plan"] = blocked_plan(n, k, d, 4, torch.get_num_threads())._asdict()
    return entry


def run_bench(
    cfg: BenchConfig | None = None, on_entry: Callable[[dict[str, Any]], None] | None = None
) -> dict[str, Any]:
    """Run every grid entry; returns a JSON-ready dict (machine, config, per-entry rows). `on_entry` gets the
    partial results after each entry (the CLI writes them, so a killed run leaves what it measured)."""
    cfg = cfg or BenchConfig()
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("BenchConfig.device is 'cuda' but torch.cuda.is_available() is False")
    machine = machine_info()
    if cfg.device == "cuda":
        machine["gpu"] = torch.cuda.get_device_name()
    try:
        from importlib.metadata import version

        machine["versions"]["faiss-cpu"] = version("faiss-cpu")
    except Exception:  # noqa: BLE001 - not installed (or not by pip): recorded as absent
        machine["versions"]["faiss-cpu"] = None
    started = time.time()
    entries: list[dict[str, Any]] = []
    for i, (n, k, d) in enumerate(cfg.grid):
        entries.append(_entry(cfg, n, k, d))
        machine["loadavg_end"] = loadavg()
        results = {
            "machine": machine,
            "config": asdict(cfg),
            "gemm_gflops_best": max(e["gemm_gflops"] for e in entries),
            "wall_s": time.time() - started,
            "complete": i == len(cfg.grid) - 1,
            "entries": entries,
            "targets": check_targets(entries),
        }
        if on_entry is not None:
            on_entry(results)
    return results


def check_targets(entries: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The study's performance targets, evaluated on the grid entries that exist."""

    def get(n: int, k: int, d: int, method: str, key: str) -> float | None:
        for e in entries:
            if (e["n"], e["k"], e["d"]) == (n, k, d):
                for row in e["methods"]:
                    if row["method"] == method:
                        return row.get(key)
        return None

    out = []
    checks = [
        ("search >= 0.5 of GEMM at (65536, 4096, 32) (interleaved pairs where measured)",
         get(65536, 4096, 32, "vqstudy", "ratio_gemm_paired") or get(65536, 4096, 32, "vqstudy", "ratio_gemm"), 0.5,
         ">="),
        ("search >= 10x vqp eval at (65536, 4096, 32)", get(65536, 4096, 32, "vqstudy", "speedup_vs_vqp"), 10, ">="),
        ("search extra memory <= 256 MiB at (65536, 16384, 32)",
         get(65536, 16384, 32, "vqstudy", "peak_extra_bytes"), 256 * 2**20, "<="),
    ]  # fmt: skip
    for e in entries:
        shape = f"({e['n']}, {e['k']}, {e['d']})"
        value, how = get(e["n"], e["k"], e["d"], "vqstudy", "speedup_vs_faiss_paired"), "median over interleaved pairs"
        if value is None:
            value, how = get(e["n"], e["k"], e["d"], "vqstudy", "speedup_vs_faiss"), "sequential medians"
        if value is not None:
            checks.append((f"search at least as fast as FAISS at {shape} (FAISS time / vqstudy time, {how})", value, 1,
                           ">="))  # fmt: skip
    for e in entries:
        value = get(e["n"], e["k"], e["d"], "vqstudy", "ids_differ")
        if value is not None:
            checks.append((f"search ids identical to the reference at ({e['n']}, {e['k']}, {e['d']}) (ids that differ)",
                           value, 0, "<="))  # fmt: skip
    for e in entries:
        value, how = get(e["n"], e["k"], e["d"], "vqstudy_train", "speedup_vs_vqp_paired"), " (interleaved pairs)"
        if value is None:
            value, how = get(e["n"], e["k"], e["d"], "vqstudy_train", "speedup_vs_vqp"), ""
        if value is not None:
            checks.append((f"training step >= 5x vqp at ({e['n']}, {e['k']}, {e['d']}){how}", value, 5, ">="))
    for name, value, bound, op in checks:
        met = None if value is None else (value >= bound if op == ">=" else value <= bound)
        out.append({"target": name, "value": value, "bound": bound, "met": met})
    return out


def _round(values: list[float] | None) -> list[float] | None:
    return None if values is None else [round(v, 2) for v in values]


def _fmt_bytes(b: int | None) -> str:
    return "n/a" if b is None else f"{b / 2**20:.1f} MiB"


def _fmt_ids(row: dict[str, Any]) -> str:
    if "ids_differ" not in row:
        return ""
    if row["ids_differ"] == 0:
        return "identical"
    kind = "near ties: " if row["max_rel_gap"] < NEAR_TIE_REL else ""
    return (f"{row['ids_differ']} differ ({kind}max gap {row['max_gap']:.1e}, {row['max_rel_gap']:.1e} of "
            f"||x||^2+||c||^2; closer: own {row['own_closer']}, ref {row['ref_closer']})")  # fmt: skip


def to_markdown(results: dict[str, Any], command: str) -> str:
    """The results as a markdown report (command, machine, table, targets, method notes)."""
    m = results["machine"]
    cuda = results["config"]["device"] == "cuda"
    title = "# Nearest-code search benchmark" + (" (CUDA)" if cuda else "")
    gemm_line = (
        f"GEMM rate (fp32 {results['config']['gemm_size']}^3 torch.mm, best of 3, measured before each entry): "
        f"best {results['gemm_gflops_best']:.0f} GFLOP/s. Wall time {results['wall_s']:.0f} s."
    )
    if not results.get("complete", True):
        gemm_line += f" PARTIAL: {len(results['entries'])} of {len(results['config']['grid'])} grid entries measured."
    if cuda:
        gemm_line += " On CUDA the TF32 rate is measured too; vqstudy_tf32 is divided by it."
    lines = [
        title,
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {m['cpu']}, {m['logical_cpus']} logical CPUs, torch threads {m['torch_threads']}"
        + (f", GPU {m['gpu']}" if cuda else "")
        + f", torch {m['versions']['torch']}, triton {m['versions']['triton']}, "
        f"faiss-cpu {m['versions'].get('faiss-cpu')}, "
        f"vector-quantize-pytorch {m['versions']['vector-quantize-pytorch']}, python {m['versions']['python']}. "
        f"Load average (1/5/15 min) at start {_round(m['loadavg'])}, at end {_round(m.get('loadavg_end'))} "
        "(a shared machine: other processes competed for the cores during the run).",
        "",
        gemm_line,
        "",
        "| N | K | D | method | time (median) | GFLOP/s | / GEMM | FAISS time / time | speedup vs vqp "
        "| ids vs reference | peak extra mem |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for e in results["entries"]:
        faiss_time = next((r.get("time_s") for r in e["methods"] if r["method"] == "faiss"), None)
        for row in e["methods"]:
            head = f"| {e['n']} | {e['k']} | {e['d']} | {row['method']} "
            if "skipped" in row:
                lines.append(head + f"| skipped: {row['skipped']} | | | | | | |")
                continue
            speed = f"{row['speedup_vs_vqp']:.1f}x" if "speedup_vs_vqp" in row else ""
            if "speedup_vs_vqp_paired" in row:
                q1, q3 = row["paired_quartiles"]
                speed += f"; interleaved {row['speedup_vs_vqp_paired']:.1f}x [{q1:.1f}, {q3:.1f}]"
            vs_faiss = f"{faiss_time / row['time_s']:.2f}" if faiss_time and row["method"] not in TRAIN_METHODS else ""
            if "speedup_vs_faiss_paired" in row:
                q1, q3 = row["paired_quartiles"]
                vs_faiss += (f"; interleaved {row['speedup_vs_faiss_paired']:.2f} [{q1:.2f}, {q3:.2f}], "
                             f"{row['paired_calls']} pairs")
            mem = _fmt_bytes(row.get("peak_extra_bytes")) if "peak_extra_bytes" in row else ""
            rate = e.get("gemm_tf32_gflops") if row["method"] == "vqstudy_tf32" else e["gemm_gflops"]
            share = f"{row['ratio_gemm']:.3f} (GEMM {rate:.0f})"
            if "ratio_gemm_paired" in row:
                q1, q3 = row["ratio_gemm_paired_quartiles"]
                share += f"; interleaved {row['ratio_gemm_paired']:.3f} [{q1:.3f}, {q3:.3f}]"
            lines.append(
                head + f"| {row['time_s'] * 1e3:.1f} ms | {row['gflops']:.1f} | {share} "
                f"| {vs_faiss} | {speed} | {_fmt_ids(row)} | {mem} |"
            )
    lines += ["", "Plans of the auto backend (compiled: TR x TC tile, rows per work item, codes per L2 chunk):", ""]
    for e in results["entries"]:
        shape = f"({e['n']}, {e['k']}, {e['d']})"
        if "compiled_plan" in e:
            p = e["compiled_plan"]
            lines.append(f"- {shape}: compiled, tile {p['tile'][0]} x {p['tile'][1]}, threads {p['threads']}, "
                         f"row block {p['row_block']}, codebook chunk {p['chunk_codes']} codes")  # fmt: skip
        elif "blocked_plan" in e:
            p = e["blocked_plan"]
            lines.append(f"- {shape}: blocked, block_rows {p['block_rows']}, groups {p['groups']}, "
                         f"workers {p['workers']}, scratch {_fmt_bytes(p['buffer_bytes'])}")  # fmt: skip
        else:
            lines.append(f"- {shape}: {e.get('backend', '?')}")
    lines += ["", "## Targets", ""]
    for t in results["targets"]:
        status = {True: "met", False: "NOT met", None: "not measured"}[t["met"]]
        value = "n/a" if t["value"] is None else (
            _fmt_bytes(t["value"]) if "memory" in t["target"] else f"{t['value']:.3g}")  # fmt: skip
        lines.append(f"- {t['target']}: {value} -> {status}")
    lines += [
        "",
        "## Method",
        "",
        "- GFLOP/s = 2*N*K*D / median time for every method (the flops of one distance search), so the",
        "  training rows show how far a full step is from one search. `/ GEMM` divides by the GEMM rate",
        "  measured just before that entry (same load conditions); the best GEMM of the run is above.",
        "- FAISS: `faiss.IndexFlatL2(D)` with the codebook added (not timed), `index.search(x, 1)` timed, with",
        "  `faiss.omp_set_num_threads` set to torch's thread count. `FAISS time / time` > 1 means faster than FAISS.",
        "- interleaved (vqstudy row): FAISS time / vqstudy time over call pairs run back to back in alternating",
        "  order, median [quartiles] over the pairs; both calls of a pair see the same load, so a burst from another",
        "  process does not land on one method only. The FAISS targets use it; the sequential medians stay beside it.",
        "  The same for the GEMM share where one search takes >= 10 ms (shorter ones would run on caches the GEMM",
        "  just evicted): vqstudy's search interleaved with single fp32 GEMM calls, the share taken per pair",
        "  (search GFLOP/s / GEMM GFLOP/s), median [quartiles]; the GEMM target uses it. And for the training",
        "  steps where both vqstudy's and vqp's take <= 100 ms: vqp step time / vqstudy step time over interleaved",
        "  step pairs; the training-step target uses it there.",
        "- speedup vs vqp: vqp_eval time / method time for searches, vqp_train time / method time for steps.",
        "- ids vs reference: each search's ids against the torch reference (addmm distance matrix + argmin, in",
        "  row chunks of at most 256 MiB). Where they differ, the float64 distances of both chosen codes are",
        "  compared: a gap at the level of fp32 rounding of ||x||^2 + ||c||^2 is a near tie that the two",
        "  computation orders round differently, not a wrong answer.",
        "- Timed calls: `repeats` after one warm-up call; a method whose warm-up call exceeds",
        f"  {results['config']['budget_s']:.0f} s / repeats gets fewer (at least 3).",
        "- Peak extra memory (vqstudy, faiss; addmm on CUDA; the cdist/vqp baselines hold the (N, K) matrix and",
        "  are not probed, to keep the run short). CPU: one fresh Python process per (method, entry) with glibc's mmap threshold",
        "  pinned at 64 KiB (`MALLOC_MMAP_THRESHOLD_=65536`, so every large buffer is mapped on allocation and",
        "  unmapped on free). After one warm-up call the kernel's peak-RSS mark is reset",
        "  (`echo 5 > /proc/self/clear_refs`), VmRSS is read, one search runs, and VmHWM - VmRSS is",
        "  reported: memory touched beyond the inputs and the module, outputs included. On CUDA: the peak of",
        "  torch.cuda.max_memory_allocated above the memory allocated before the call.",
        "- Training steps: vqp with kmeans_init=True, threshold_ema_dead_code=2, its k-means runs in the",
        "  warm-up step; vqstudy Quantizer with its default config, warm-up steps until its k-means init",
        "  has run. The timed steps are forward + backward (+ EMA and reset bookkeeping inside forward).",
        "- Baselines that materialize the (N, K) matrix are skipped where it exceeds max_baseline_bytes",
        f"  ({results['config']['max_baseline_bytes'] / 2**30:.1f} GiB) to keep the shared machine alive.",
    ]
    return "\n".join(lines) + "\n"


def write_results(results: dict[str, Any], out_dir: Path, command: str) -> tuple[Path, Path]:
    """Write bench_nearest.md/json (bench_nearest_cuda.md/json for a CUDA run) into out_dir."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = "bench_nearest_cuda" if results["config"]["device"] == "cuda" else "bench_nearest"
    md, js = out_dir / f"{stem}.md", out_dir / f"{stem}.json"
    md.write_text(to_markdown(results, command))
    js.write_text(json.dumps({"command": command, **results}, indent=2) + "\n")
    return md, js


README_BEGIN = "<!-- bench_nearest table: begin (written by scripts/bench_nearest.py --readme README.md) -->"
README_END = "<!-- bench_nearest table: end -->"


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def readme_table(results: dict[str, Any]) -> str:
    """The README's summary of a CPU run: per shape, vqstudy vs FAISS, the GEMM share and the training step vs vqp."""
    lines = ["| (N, K, D) | vqstudy | FAISS | FAISS time / vqstudy time | same, interleaved pairs [quartiles] | "
             "vqstudy share of same-run GEMM (interleaved pairs) | "
             "training step: vqstudy / vqp | step speedup vs vqp |",
             "|---|---|---|---|---|---|---|---|"]
    for e in results["entries"]:
        m = {row["method"]: row for row in e["methods"]}
        own, faiss = m.get("vqstudy", {}), m.get("faiss", {})
        step, ref = m.get("vqstudy_train", {}), m.get("vqp_train", {})
        if "time_s" not in own:
            continue
        peer, ratio, paired = "-", "-", "-"
        if "time_s" in faiss:
            r = faiss["time_s"] / own["time_s"]
            peer, ratio = _ms(faiss["time_s"]), (f"**{r:.2f}**" if r < 1 else f"{r:.2f}")
        if "speedup_vs_faiss_paired" in own:
            r, (q1, q3) = own["speedup_vs_faiss_paired"], own["paired_quartiles"]
            paired = (f"**{r:.2f}**" if r < 1 else f"{r:.2f}") + f" [{q1:.2f}, {q3:.2f}]"
        steps, speed = "not run (vqp needs the (N, K) matrix)", ""
        if "time_s" in step and "time_s" in ref:
            sp = ref["time_s"] / step["time_s"]
            steps, speed = f"{_ms(step['time_s'])} / {_ms(ref['time_s'])}", (f"**{sp:.1f}x**" if sp < 5 else f"{sp:.1f}x")
            if "speedup_vs_vqp_paired" in step:
                sp = step["speedup_vs_vqp_paired"]
                speed += f" ({'**' if sp < 5 else ''}{sp:.1f}x{'**' if sp < 5 else ''} interleaved)"
        share = f"{own['ratio_gemm']:.2f}"
        if "ratio_gemm_paired" in own:
            share += f" ({own['ratio_gemm_paired']:.2f})"
        lines.append(f"| {e['n']}, {e['k']}, {e['d']} | {_ms(own['time_s'])} | {peer} | {ratio} | {paired} | "
                     f"{share} | {steps} | {speed} |")
    return "\n".join(lines) + "\n"


def update_readme(readme: Path, results: dict[str, Any]) -> None:
    """Replace the table between README_BEGIN and README_END in `readme` with `readme_table(results)`."""
    text = readme.read_text()
    if README_BEGIN not in text or README_END not in text:
        raise ValueError(f"{readme} has no '{README_BEGIN}' ... '{README_END}' block to regenerate")
    head, rest = text.split(README_BEGIN, 1)
    _, tail = rest.split(README_END, 1)
    write_atomic(readme, (head + README_BEGIN + "\n\n" + readme_table(results) + "\n" + README_END + tail).encode())


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry: parse options, run the benchmark, write results/bench_nearest.{md,json}."""
    parser = argparse.ArgumentParser(prog="bench_nearest", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small grid and few repeats (smoke test)")
    parser.add_argument("--out", type=Path, default=Path("results"), help="output folder (default results/)")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls per search (default 7, quick 3)")
    parser.add_argument("--grid", nargs="+", default=None, metavar="N,K,D",
                        help="grid entries to run instead of the default grid, e.g. 65536,4096,32")  # fmt: skip
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocess probes")
    parser.add_argument("--max-baseline-gb", type=float, default=2.0,
                        help="skip cdist/vqp where the (N, K) fp32 matrix exceeds this many GiB")  # fmt: skip
    parser.add_argument("--methods", nargs="+", default=None, choices=list(ALL_METHODS),
                        help="methods to run (default: every method of the device)")  # fmt: skip
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="cpu (default) or cuda: Triton kernel vs addmm, cdist and vqp; writes bench_nearest_cuda.*")  # fmt: skip
    parser.add_argument("--readme", type=Path, default=None,
                        help="also regenerate the nearest-code table of this README from the run")
    parser.add_argument("--readme-only", action="store_true",
                        help="run nothing: regenerate --readme's table from <out>/bench_nearest.json")
    args = parser.parse_args(argv)
    if args.readme_only:
        if args.readme is None:
            parser.error("--readme-only needs --readme PATH")
        update_readme(args.readme, json.loads((args.out / "bench_nearest.json").read_text()))
        log.info("regenerated the table of %s from %s", args.readme, args.out / "bench_nearest.json")
        return 0
    default_methods = CUDA_SEARCH_METHODS if args.device == "cuda" else SEARCH_METHODS + TRAIN_METHODS
    grid = QUICK_GRID if args.quick else GRID
    if args.grid:
        try:
            grid = tuple(tuple(int(v) for v in entry.split(",")) for entry in args.grid)
        except ValueError:
            parser.error(f"--grid entries must look like N,K,D (ints), got {args.grid}")
    cfg = BenchConfig(
        grid=grid,  # type: ignore[arg-type]
        repeats=args.repeats or (3 if args.quick else 7),
        train_repeats=2 if args.quick else 3,
        train_min_seconds=0.0 if args.quick else 1.0,
        paired_min_seconds=0.2 if args.quick else 2.0,
        gemm_size=512 if args.quick else (8192 if args.device == "cuda" else 2048),
        max_baseline_bytes=int(args.max_baseline_gb * 2**30),
        memory=not args.no_memory,
        methods=tuple(args.methods or default_methods),
        device=args.device,
    )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    argv_list = sys.argv[1:] if argv is None else list(argv)
    command = shlex.join(["python", "scripts/bench_nearest.py", *argv_list])
    results = run_bench(cfg, on_entry=lambda partial: write_results(partial, args.out, command))
    md, js = write_results(results, args.out, command)
    log.info("wrote %s and %s", md, js)
    if args.readme is not None and args.device == "cpu":
        update_readme(args.readme, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
