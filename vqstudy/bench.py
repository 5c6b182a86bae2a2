"""Benchmark: nearest-code search and quantizer training step vs the machine's GEMM rate, torch.cdist
and vector-quantize-pytorch (vqp). `python scripts/bench_nearest.py [--quick] [--out results/]`.

Per grid entry (N, K, D), measured in one process, one after the other:
- gemm:          fp32 torch.mm of two (S, S) matrices just before the entry (best of a few) = the limit;
- vqstudy:       `nearest_code(x, codebook)` with the auto backend;
- cdist:         `torch.cdist(x, codebook).argmin(1)`;
- vqp_eval:      `VectorQuantize(dim=D, codebook_size=K)` eval forward under no_grad;
- vqp_train:     vqp forward + backward, kmeans_init=True, threshold_ema_dead_code=2, after a warm-up step;
- vqstudy_train: `Quantizer(dim=D, codebook_size=K)` forward + backward of loss + quantized.sum(),
                 after warm-up steps until its k-means init has run.
Times are medians of `repeats` calls; GFLOP/s counts 2*N*K*D flops (one search) for every method.
Peak extra memory of the searches is measured in a fresh subprocess per (method, entry); see
`memory_probe`.
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

from vqstudy.machine import loadavg, machine_info

log = logging.getLogger(__name__)

GRID = ((4096, 512, 32), (65536, 4096, 32), (32768, 1024, 64), (65536, 16384, 32))
QUICK_GRID = ((1024, 128, 16), (2048, 512, 32))
SEARCH_METHODS = ("vqstudy", "cdist", "vqp_eval")
TRAIN_METHODS = ("vqp_train", "vqstudy_train")


@dataclass
class BenchConfig:
    """What `run_bench` measures."""

    grid: tuple[tuple[int, int, int], ...] = GRID
    """(N, K, D) entries: N vectors of width D searched among K codes."""
    repeats: int = 7
    """Timed calls per search method and entry (median reported)."""
    train_repeats: int = 3
    """Timed training steps per training method and entry (after warm-up)."""
    gemm_size: int = 2048
    """S of the (S, S) @ (S, S) fp32 GEMM that defines the machine's rate."""
    max_baseline_bytes: int = 2**31
    """Skip cdist/vqp at entries whose (N, K) fp32 matrix is larger than this (they materialize it, several
    times for vqp); vqstudy always runs."""
    memory: bool = True
    """Measure peak extra memory of the searches (one subprocess per method and entry)."""
    seed: int = 0
    """Seed of the random inputs."""
    methods: tuple[str, ...] = SEARCH_METHODS + TRAIN_METHODS
    """Methods to run (subset of SEARCH_METHODS + TRAIN_METHODS)."""

    def __post_init__(self) -> None:
        if not self.grid:
            raise ValueError("BenchConfig.grid must hold at least one (N, K, D) entry, got ()")
        for entry in self.grid:
            if len(entry) != 3 or min(entry) < 1:
                raise ValueError(f"BenchConfig.grid entries must be (N, K, D) of positive ints, got {entry!r}")
        for name in ("repeats", "train_repeats", "gemm_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"BenchConfig.{name} ({getattr(self, name)}) must be >= 1")
        unknown = set(self.methods) - set(SEARCH_METHODS + TRAIN_METHODS)
        if unknown:
            raise ValueError(f"BenchConfig.methods has unknown {sorted(unknown)}; expected a subset of "
                             f"{list(SEARCH_METHODS + TRAIN_METHODS)}")  # fmt: skip


def _times(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def gemm_gflops(size: int = 2048, repeats: int = 3) -> float:
    """Best fp32 GFLOP/s of (size, size) @ (size, size) over `repeats` calls."""
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(size, size, generator=g), torch.randn(size, size, generator=g)
    c = torch.empty(size, size)
    return 2 * size**3 / min(_times(lambda: torch.mm(a, b, out=c), repeats)) / 1e9


def _inputs(n: int, k: int, d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g), torch.randn(k, d, generator=g)


def _search_fn(method: str, x: torch.Tensor, codebook: torch.Tensor) -> Callable[[], Any]:
    """A zero-argument callable doing one search with `method` (module construction excluded)."""
    if method == "vqstudy":
        from vqstudy.kernels import nearest_code

        return lambda: nearest_code(x, codebook)
    if method == "cdist":
        return lambda: torch.cdist(x, codebook).argmin(dim=1)
    if method == "vqp_eval":
        from vector_quantize_pytorch import VectorQuantize

        vq = VectorQuantize(dim=x.shape[1], codebook_size=codebook.shape[0]).eval()
        batch = x[None]  # (1, N, D)

        def run() -> Any:
            with torch.no_grad():
                return vq(batch)

        return run
    raise ValueError(f"unknown search method {method!r}; expected one of {SEARCH_METHODS}")


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


def _entry(cfg: BenchConfig, n: int, k: int, d: int) -> dict[str, Any]:
    flops = 2 * n * k * d
    gemm = gemm_gflops(cfg.gemm_size)
    x, codebook = _inputs(n, k, d, cfg.seed)
    too_big = n * k * 4 > cfg.max_baseline_bytes
    rows: dict[str, dict[str, Any]] = {}
    for method in cfg.methods:
        row: dict[str, Any] = {"method": method}
        rows[method] = row
        if method != "vqstudy" and too_big:
            row["skipped"] = f"(N, K) fp32 matrix {n * k * 4 / 2**30:.1f} GiB > max_baseline_bytes"
            if method == "vqstudy_train":
                row["skipped"] = "no vqp baseline at this size (its k-means warm-up alone takes minutes)"
            continue
        log.info("bench %s at N=%d K=%d D=%d", method, n, k, d)
        if method in SEARCH_METHODS:
            times = _times(_search_fn(method, x, codebook), cfg.repeats)
        else:
            step, row["warmup_s"] = _train_step_fn(method, x, k)
            times = _times(step, cfg.train_repeats, warmup=0)
        row["time_s"] = statistics.median(times)
        row["time_min_s"] = min(times)
        row["gflops"] = flops / row["time_s"] / 1e9
        row["ratio_gemm"] = row["gflops"] / gemm
        if cfg.memory and method in SEARCH_METHODS:
            row["peak_extra_bytes"] = measure_memory(method, n, k, d, cfg.seed)
        gc.collect()
    for method, base in (("vqstudy", "vqp_eval"), ("cdist", "vqp_eval"), ("vqp_eval", "vqp_eval"),
                         ("vqstudy_train", "vqp_train"), ("vqp_train", "vqp_train")):  # fmt: skip
        if "time_s" in rows.get(method, {}) and "time_s" in rows.get(base, {}):
            rows[method]["speedup_vs_vqp"] = rows[base]["time_s"] / rows[method]["time_s"]
    entry: dict[str, Any] = {"n": n, "k": k, "d": d, "flops": flops, "gemm_gflops": gemm, "methods": list(rows.values())}
    if x.device.type == "cpu":
        from vqstudy.kernels import blocked_plan, resolve_backend

        if resolve_backend("auto", x, codebook) == "blocked":
            entry["blocked_plan"] = blocked_plan(n, k, d, 4, torch.get_num_threads())._asdict()
    return entry


def run_bench(cfg: BenchConfig | None = None) -> dict[str, Any]:
    """Run every grid entry; returns a JSON-ready dict (machine, config, per-entry rows)."""
    cfg = cfg or BenchConfig()
    machine = machine_info()
    started = time.time()
    entries = [_entry(cfg, n, k, d) for n, k, d in cfg.grid]
    machine["loadavg_end"] = loadavg()
    return {
        "machine": machine,
        "config": asdict(cfg),
        "gemm_gflops_best": max(e["gemm_gflops"] for e in entries),
        "wall_s": time.time() - started,
        "entries": entries,
        "targets": check_targets(entries),
    }


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
        ("search >= 0.5 of GEMM at (65536, 4096, 32)", get(65536, 4096, 32, "vqstudy", "ratio_gemm"), 0.5, ">="),
        ("search >= 10x vqp eval at (65536, 4096, 32)", get(65536, 4096, 32, "vqstudy", "speedup_vs_vqp"), 10, ">="),
        ("search extra memory <= 256 MiB at (65536, 16384, 32)",
         get(65536, 16384, 32, "vqstudy", "peak_extra_bytes"), 256 * 2**20, "<="),
    ]  # fmt: skip
    for e in entries:
        value = get(e["n"], e["k"], e["d"], "vqstudy_train", "speedup_vs_vqp")
        if value is not None:
            checks.append((f"training step >= 5x vqp at ({e['n']}, {e['k']}, {e['d']})", value, 5, ">="))
    for name, value, bound, op in checks:
        met = None if value is None else (value >= bound if op == ">=" else value <= bound)
        out.append({"target": name, "value": value, "bound": bound, "met": met})
    return out


def _round(values: list[float] | None) -> list[float] | None:
    return None if values is None else [round(v, 2) for v in values]


def _fmt_bytes(b: int | None) -> str:
    return "n/a" if b is None else f"{b / 2**20:.1f} MiB"


def to_markdown(results: dict[str, Any], command: str) -> str:
    """The results as a markdown report (command, machine, table, targets, method notes)."""
    m = results["machine"]
    lines = [
        "# Nearest-code search benchmark",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {m['cpu']}, {m['logical_cpus']} logical CPUs, torch threads {m['torch_threads']}, "
        f"torch {m['versions']['torch']}, triton {m['versions']['triton']}, "
        f"vector-quantize-pytorch {m['versions']['vector-quantize-pytorch']}, python {m['versions']['python']}. "
        f"Load average (1/5/15 min) at start {_round(m['loadavg'])}, at end {_round(m.get('loadavg_end'))} "
        "(a shared machine: other "
        "processes competed for the cores during the run).",
        "",
        f"GEMM rate (fp32 {results['config']['gemm_size']}^3 torch.mm, best of 3, measured before each entry): "
        f"best {results['gemm_gflops_best']:.0f} GFLOP/s. Wall time {results['wall_s']:.0f} s.",
        "",
        "| N | K | D | method | time (median) | GFLOP/s | / GEMM | speedup vs vqp | peak extra mem |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for e in results["entries"]:
        for row in e["methods"]:
            head = f"| {e['n']} | {e['k']} | {e['d']} | {row['method']} "
            if "skipped" in row:
                lines.append(head + f"| skipped: {row['skipped']} | | | | |")
                continue
            speed = f"{row['speedup_vs_vqp']:.1f}x" if "speedup_vs_vqp" in row else ""
            mem = _fmt_bytes(row.get("peak_extra_bytes")) if row["method"] in SEARCH_METHODS else ""
            lines.append(
                head + f"| {row['time_s'] * 1e3:.1f} ms | {row['gflops']:.1f} | {row['ratio_gemm']:.3f} "
                f"(GEMM {e['gemm_gflops']:.0f}) | {speed} | {mem} |"
            )
    lines += ["", "Blocked-search plans (auto backend on CPU; buffer = analytic scratch of one call):", ""]
    for e in results["entries"]:
        if "blocked_plan" in e:
            p = e["blocked_plan"]
            lines.append(f"- ({e['n']}, {e['k']}, {e['d']}): block_rows {p['block_rows']}, groups {p['groups']}, "
                         f"workers {p['workers']}, scratch {_fmt_bytes(p['buffer_bytes'])}")  # fmt: skip
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
        "- speedup vs vqp: vqp_eval time / method time for searches, vqp_train time / method time for steps.",
        "- Peak extra memory: one fresh Python process per (method, entry) with glibc's mmap threshold pinned",
        "  at 64 KiB (`MALLOC_MMAP_THRESHOLD_=65536`, so every large buffer is mapped on allocation and",
        "  unmapped on free). After one warm-up call the kernel's peak-RSS mark is reset",
        "  (`echo 5 > /proc/self/clear_refs`), VmRSS is read, one search runs, and VmHWM - VmRSS is",
        "  reported: memory touched beyond the inputs and the module, outputs included. tracemalloc and",
        "  torch.cuda statistics cannot see torch's CPU allocations.",
        "- Training steps: vqp with kmeans_init=True, threshold_ema_dead_code=2, its k-means runs in the",
        "  warm-up step; vqstudy Quantizer with its default config, warm-up steps until its k-means init",
        "  has run. The timed steps are forward + backward (+ EMA and reset bookkeeping inside forward).",
        "- Baselines that materialize the (N, K) matrix are skipped where it exceeds max_baseline_bytes",
        f"  ({results['config']['max_baseline_bytes'] / 2**30:.1f} GiB) to keep the shared machine alive.",
    ]
    return "\n".join(lines) + "\n"


def write_results(results: dict[str, Any], out_dir: Path, command: str) -> tuple[Path, Path]:
    """Write bench_nearest.md and bench_nearest.json into out_dir."""
    out_dir.mkdir(parents=True, exist_ok=True)
    md, js = out_dir / "bench_nearest.md", out_dir / "bench_nearest.json"
    md.write_text(to_markdown(results, command))
    js.write_text(json.dumps({"command": command, **results}, indent=2) + "\n")
    return md, js


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
    parser.add_argument("--methods", nargs="+", default=list(SEARCH_METHODS + TRAIN_METHODS),
                        choices=list(SEARCH_METHODS + TRAIN_METHODS), help="methods to run")  # fmt: skip
    args = parser.parse_args(argv)
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
        gemm_size=512 if args.quick else 2048,
        max_baseline_bytes=int(args.max_baseline_gb * 2**30),
        memory=not args.no_memory,
        methods=tuple(args.methods),
    )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    results = run_bench(cfg)
    argv_list = sys.argv[1:] if argv is None else list(argv)
    command = shlex.join(["python", "scripts/bench_nearest.py", *argv_list])
    md, js = write_results(results, args.out, command)
    log.info("wrote %s and %s", md, js)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
