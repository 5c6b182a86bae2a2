"""A/B two git revisions of the compiled CPU kernel in one process, over interleaved call pairs.

    python scripts/ab_kernel.py 0cafb8d 590fc13 --grid 65536,4096,8 65536,4096,4

Builds `vqstudy/kernels/compiled.py`'s SOURCE at each revision (g++, the package's flags) into a temporary folder,
loads both, and times them alternately on the same inputs (each pair in alternating order), so a load burst on a
shared machine slows both alike. Prints each revision's median time, the median and quartiles of the per-pair ratio
A time / B time (> 1: B is faster), and how many ids differ from the torch reference. Development tool: it writes
nothing (the benchmark of record is scripts/bench_nearest.py).
"""

from __future__ import annotations

import argparse
import ctypes
import statistics
import subprocess
import tempfile
import time
import types
from collections.abc import Callable
from pathlib import Path

import torch

from vqstudy.bench import _inputs, reference_ids

ROOT = Path(__file__).resolve().parents[1]
FLAGS = ["-O3", "-std=c++17", "-ffp-contract=fast", "-fno-math-errno", "-fPIC", "-shared", "-pthread",
         "-march=native", "-fopenmp"]


def load(rev: str, tmp: Path) -> tuple[ctypes.CDLL, types.ModuleType]:
    """The kernel module's namespace (SOURCE, constants, lanes_width) and its built library at `rev`."""
    text = subprocess.run(["git", "show", f"{rev}:vqstudy/kernels/compiled.py"], cwd=ROOT, capture_output=True,
                          text=True, check=True).stdout  # fmt: skip
    module = types.ModuleType(f"compiled_{rev}")
    exec(compile(text, f"{rev}:compiled.py", "exec"), module.__dict__)
    src, lib = tmp / f"{rev}.cpp", tmp / f"{rev}.so"
    src.write_text(module.SOURCE)
    subprocess.run(["g++", *FLAGS, str(src), "-o", str(lib)], check=True)
    dll = ctypes.CDLL(str(lib))
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    dll.vq_nearest.argtypes = [ptr, i64, i64, i64, ptr, i64, i64, ptr, ptr, ctypes.c_int, i64, i64, i64]
    return dll, module


def searcher(dll: ctypes.CDLL, m: types.ModuleType, x: torch.Tensor, c: torch.Tensor) -> Callable[[], torch.Tensor]:
    """One search with that revision's plan (its compiled_plan arithmetic, inlined so old revisions work too)."""
    (n, d), k = x.shape, c.shape[0]
    idx, dist = torch.empty(n, dtype=torch.long), torch.empty(n)
    threads = torch.get_num_threads() if n * k * d >= m.MIN_WORK_FOR_THREADS else 1
    tr, tc = dll.vq_tile_rows(), dll.vq_tile_codes()
    row_block = min(m.ROW_BLOCK, max(tr, -(-n // (4 * threads))))
    row_block = -(-row_block // tr) * tr
    dp = m.lanes_width(d)
    chunk = max(1, (m.L1_BYTES if dp else m.L2_BYTES) // (4 * (dp or d) * tc))

    def call() -> torch.Tensor:
        rc = dll.vq_nearest(x.data_ptr(), n, d, x.stride(0), c.data_ptr(), k, c.stride(0), idx.data_ptr(),
                            dist.data_ptr(), threads, row_block, chunk, dp)  # fmt: skip
        if rc != 0:
            raise RuntimeError(f"kernel returned {rc}")
        return idx

    return call


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("rev_a")
    parser.add_argument("rev_b")
    parser.add_argument("--grid", nargs="+", default=["65536,4096,8"], help="N,K,D entries")
    parser.add_argument("--pairs", type=int, default=0, help="call pairs per entry (default: by size)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        a, b = load(args.rev_a, Path(tmp)), load(args.rev_b, Path(tmp))
        for entry in args.grid:
            n, k, d = (int(v) for v in entry.split(","))
            x, c = _inputs(n, k, d, 0)
            ref = reference_ids(x, c)
            fa, fb = searcher(*a, x, c), searcher(*b, x, c)
            differ = [int((f() != ref).sum()) for f in (fa, fb)]
            pairs = args.pairs or (40 if n * k * d > 1e8 else 200)
            ta: list[float] = []
            tb: list[float] = []
            for i in range(pairs):
                for f, out in ((fa, ta), (fb, tb)) if i % 2 == 0 else ((fb, tb), (fa, ta)):
                    start = time.perf_counter()
                    f()
                    out.append(time.perf_counter() - start)
            ratios = [p / q for p, q in zip(ta, tb)]
            q1, _, q3 = statistics.quantiles(ratios, n=4)
            print(f"{n},{k},{d}: {args.rev_a} {statistics.median(ta) * 1e3:.2f} ms, {args.rev_b} "
                  f"{statistics.median(tb) * 1e3:.2f} ms, A/B {statistics.median(ratios):.3f} [{q1:.3f}, {q3:.3f}] "
                  f"over {pairs} pairs; ids differing from the reference: {differ[0]}, {differ[1]}", flush=True)


if __name__ == "__main__":
    main()
