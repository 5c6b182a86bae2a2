"""nearest_code: every backend against a float64 brute-force oracle, dispatch, validation, memory bound."""

from __future__ import annotations

import importlib.util
import json
import os
import time

import pytest
import torch

import vqstudy.kernels
import vqstudy.kernels.blocked as blocked
import vqstudy.kernels.compiled as compiled
from vqstudy.kernels import (
    ENV_VAR,
    NearestCode,
    available_backends,
    blocked_plan,
    nearest_code,
    resolve_backend,
)
from vqstudy.kernels.triton_kernel import nearest_code_triton

HAS_TRITON = importlib.util.find_spec("triton") is not None
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
needs_triton = pytest.mark.skipif(
    not (HAS_TRITON and (INTERPRET or torch.cuda.is_available())),
    reason="triton backend needs `triton` and CUDA or TRITON_INTERPRET=1 (set before python starts)",
)

needs_compiler = pytest.mark.skipif(
    not compiled.compiled_available(), reason="backend='compiled' needs a C++ compiler (g++/clang++, or set CXX)"
)

ODD_SIZES = [(37, 19, 5), (1, 1, 3), (1, 7, 3), (20, 1, 4), (33, 17, 16), (18, 21, 33)]


def oracle(x: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """(N, K) float64 squared distances by brute force."""
    return ((x.double()[:, None, :] - codebook.double()[None, :, :]) ** 2).sum(-1)


def assert_nearest(x: torch.Tensor, codebook: torch.Tensor, out: NearestCode, rtol: float = 1e-5) -> None:
    """The chosen code is a nearest one (ties may differ) and sqdist is its true distance."""
    dist = oracle(x, codebook)
    assert out.indices.dtype == torch.int64 and out.sqdist.dtype == torch.float32
    assert out.indices.shape == out.sqdist.shape == (x.shape[0],)
    assert int(out.indices.min()) >= 0 and int(out.indices.max()) < codebook.shape[0]
    best = dist.min(dim=1).values
    chosen = dist.gather(1, out.indices[:, None]).squeeze(1)
    torch.testing.assert_close(chosen, best, rtol=rtol, atol=1e-5)
    torch.testing.assert_close(out.sqdist.double(), chosen, rtol=1e-5, atol=1e-5)
    assert bool((out.sqdist >= 0).all())


def data(n: int, k: int, d: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g), torch.randn(k, d, generator=g)


@pytest.mark.parametrize("backend", ["torch", "blocked", "auto", pytest.param("compiled", marks=needs_compiler)])
@pytest.mark.parametrize("n,k,d", ODD_SIZES + [(300, 600, 8)])
def test_cpu_backends_find_nearest(backend: str, n: int, k: int, d: int) -> None:
    x, codebook = data(n, k, d)
    out = nearest_code(x, codebook, backend=backend)
    assert_nearest(x, codebook, out)
    assert torch.equal(out.indices, nearest_code(x, codebook, backend="torch").indices)


@needs_compiler
def test_compiled_threads_chunks_strides(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two threads pulling 6-row blocks, one codebook chunk per tile, strided x and codebook: reference ids."""
    monkeypatch.setattr(compiled, "MIN_WORK_FOR_THREADS", 0)
    monkeypatch.setattr(compiled, "ROW_BLOCK", 6)
    monkeypatch.setattr(compiled, "L2_BYTES", 1)
    threads, _, chunk_tiles = compiled.compiled_plan(101, 70, 9, 2)
    assert threads == 2 and chunk_tiles == 1
    g = torch.Generator().manual_seed(7)
    x = torch.randn(9, 101, generator=g).T  # (101, 9), strides (1, 101): copied to contiguous
    codebook = torch.randn(70, 20, generator=g)[:, :9]  # (70, 9), row stride 20
    indices, sqdist = compiled.nearest_code_compiled(x, codebook, threads=2)
    assert_nearest(x, codebook, NearestCode(indices, sqdist))
    assert torch.equal(indices, nearest_code(x, codebook, backend="torch").indices)
    x_rows = torch.randn(40, 9, generator=g)[::2]  # (20, 9), row stride 18
    indices, _ = compiled.nearest_code_compiled(x_rows, codebook, threads=2)
    assert torch.equal(indices, nearest_code(x_rows, codebook, backend="torch").indices)


@needs_compiler
@pytest.mark.parametrize("d", [1, 3, 5, 8])
def test_compiled_lanes_kernel_takes_the_lowest_index_on_exact_ties(monkeypatch: pytest.MonkeyPatch, d: int) -> None:
    """D <= 8 (the lanes kernel): small-integer data, so distances tie exactly and often, codes repeated across lanes,
    groups and L1 chunks, an odd number of code tiles, two threads: the reference's lowest-index ids, and the same
    ids and distances as the tile kernel."""
    monkeypatch.setattr(compiled, "MIN_WORK_FOR_THREADS", 0)
    monkeypatch.setattr(compiled, "ROW_BLOCK", 6)
    monkeypatch.setattr(compiled, "L1_BYTES", 1)  # one group (two tiles) per chunk
    assert compiled.lanes_width(d) in (4, 8)
    g = torch.Generator().manual_seed(d)
    base = torch.randint(-2, 3, (23, d), generator=g).float()
    codebook = torch.cat([base, base.flip(0), base])  # 69 codes: every code has exact duplicates further on
    x = torch.randint(-3, 4, (157, d), generator=g).float()
    indices, sqdist = compiled.nearest_code_compiled(x, codebook, threads=2)
    assert_nearest(x, codebook, NearestCode(indices, sqdist))
    assert torch.equal(indices, nearest_code(x, codebook, backend="torch").indices)
    assert int(indices.max()) < 23  # the first copy wins every tie
    monkeypatch.setattr(compiled, "LANES_MAX_D", 0)  # the tile kernel
    tile_indices, tile_sqdist = compiled.nearest_code_compiled(x, codebook, threads=2)
    assert torch.equal(indices, tile_indices) and torch.equal(sqdist, tile_sqdist)


@needs_compiler
def test_compiled_usage_stats_match_the_torch_definitions() -> None:
    """Perplexity, utilization and the dead-code count in C equal `perplexity_and_utilization` and the dead-mask rule
    (usage share below threshold / K; EMA counts while the usage window is empty), and bad inputs get None."""
    from vqstudy.quantize.usage import perplexity_and_utilization

    g = torch.Generator().manual_seed(0)
    k, threshold = 37, 0.5
    cluster = torch.rand(k, generator=g) * torch.randint(0, 2, (k,), generator=g)
    cases = [
        (torch.randint(0, 4, (k,), generator=g).double(), torch.randint(0, 9, (k,), generator=g).float()),
        (torch.zeros(k, dtype=torch.float64), torch.zeros(k)),  # nothing counted, empty window
        (torch.eye(k, dtype=torch.float64)[3] * 5, torch.eye(k)[3] * 5),  # one code used
    ]
    for counts, window in cases:
        perplexity, utilization, dead = compiled.usage_stats_compiled(counts, window, cluster, threshold)
        ref_p, ref_u, _ = perplexity_and_utilization(counts)
        usage = window if window.sum() > 0 else cluster
        ref_dead = int((usage < usage.sum().clamp_min(1e-12) * (threshold / k)).sum())
        torch.testing.assert_close(perplexity, ref_p.float())
        torch.testing.assert_close(utilization, ref_u.float())
        assert int(dead) == ref_dead
    assert float(compiled.usage_stats_compiled(*cases[0], cluster, threshold)[0]) > 1.0
    assert compiled.usage_stats_compiled(cases[0][0].float(), cases[0][1], cluster, threshold) is None
    assert compiled.usage_stats_compiled(cases[0][0], cases[0][1][:-1], cluster, threshold) is None


@needs_compiler
def test_compiled_ema_step_refuses_bad_ids_and_shapes_and_leaves_the_state() -> None:
    state = [torch.zeros(5), torch.ones(5), torch.randn(5, 3), torch.randn(5, 3)]
    before = [t.clone() for t in state]
    x = torch.randn(4, 3)
    with pytest.raises(ValueError, match=r"ids must be in \[0, 5\), got min 0 max 5"):
        compiled.ema_step_compiled(x, torch.tensor([0, 1, 5, 2]), *state, decay=0.9, eps=1e-5, cosine=False)
    with pytest.raises(ValueError, match=r"state shapes .* must be \[\(5,\), \(5,\), \(5, 2\), \(5, 2\)\]"):
        compiled.ema_step_compiled(x[:, :2], torch.tensor([0, 1, 2, 3]), *state, decay=0.9, eps=1e-5, cosine=False)
    assert all(torch.equal(a, b) for a, b in zip(state, before))
    counts = compiled.ema_step_compiled(x, torch.tensor([0, 1, 1, 4]), *state, decay=0.9, eps=1e-5, cosine=False)
    assert counts.tolist() == [1.0, 2.0, 0.0, 0.0, 1.0] and torch.equal(state[0], counts.float())


def test_without_a_compiler_auto_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.setattr(vqstudy.kernels, "compiled_available", lambda: False)
    monkeypatch.setattr(compiled, "_library", lambda: None)
    x, codebook = data(1000, 300, 4)
    assert resolve_backend("auto", x, codebook) == "blocked"
    assert resolve_backend("auto", x[:10], codebook) == "torch"
    with pytest.raises(RuntimeError, match="C\\+\\+ compiler"):
        nearest_code(x, codebook, backend="compiled")


@pytest.mark.slow
@needs_compiler
def test_compiled_build_is_cached(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv(compiled.CACHE_ENV, str(tmp_path))
    lib = compiled._build()
    assert lib.parent == tmp_path and lib.exists()
    mtime = lib.stat().st_mtime_ns
    assert compiled._build() == lib and lib.stat().st_mtime_ns == mtime  # the second call reuses the file


@needs_triton
@pytest.mark.parametrize("n,k,d", ODD_SIZES)
def test_triton_finds_nearest(n: int, k: int, d: int) -> None:
    x, codebook = data(n, k, d, seed=1)
    assert_nearest(x, codebook, nearest_code(x, codebook, backend="triton"))


@needs_triton
def test_triton_wide_d_chunks_strides_and_tf32() -> None:
    """D > 128 takes the chunked-D path; a transposed (non-contiguous) x is read through its strides."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(150, 9, generator=g).T  # (9, 150), strides (1, 9)
    codebook = torch.randn(18, 150, generator=g)
    assert_nearest(x, codebook, nearest_code(x, codebook, backend="triton"))
    x, codebook = data(20, 24, 6, seed=2)
    assert_nearest(x, codebook, nearest_code(x, codebook, backend="triton", allow_tf32=True), rtol=1e-2)


def test_triton_on_cpu_without_interpreter_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    x, codebook = data(4, 3, 2)
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        nearest_code_triton(x, codebook)


def test_planted_codes_are_recovered_and_unpacking() -> None:
    """Noisy copies of codes map back to their code; NearestCode unpacks as (indices, sqdist)."""
    g = torch.Generator().manual_seed(3)
    codebook = torch.randn(300, 6, generator=g) * 10
    truth = torch.randint(300, (1000,), generator=g)
    x = codebook[truth] + 0.01 * torch.randn(1000, 6, generator=g)
    for backend in ("torch", "blocked"):
        indices, sqdist = nearest_code(x, codebook, backend=backend)
        assert torch.equal(indices, truth)
        assert float(sqdist.max()) < 0.01


def test_blocked_small_buffer_groups_padding_and_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    """A tiny block budget forces many blocks; K not a multiple of G pads; two worker threads share work."""
    monkeypatch.setattr(blocked, "TARGET_BUFFER_BYTES", 4 * 1024)
    monkeypatch.setattr(blocked, "MIN_CODES_FOR_GROUPS", 8)
    n, k, d = 203, 37, 7  # Kp = 48 with G = 16
    plan = blocked_plan(n, k, d, 4, workers=2)
    assert plan.groups == 16 and plan.padded_codes == 48 and plan.workers == 2
    assert plan.block_rows * plan.padded_codes * 4 <= 4 * 1024
    assert plan.buffer_bytes < n * k * 4  # scratch is smaller than the full matrix
    x, codebook = data(n, k, d, seed=4)
    indices, sqdist = blocked.nearest_code_blocked(x, codebook, plan=plan)
    assert_nearest(x, codebook, NearestCode(indices, sqdist))


def test_blocked_scratch_is_independent_of_n() -> None:
    """The analytic scratch of the blocked path stays bounded as N grows (the full matrix would not)."""
    small = blocked_plan(10_000, 16384, 32, 4, workers=2)
    large = blocked_plan(10_000_000, 16384, 32, 4, workers=2)
    assert large.buffer_bytes == small.buffer_bytes
    assert large.buffer_bytes < 64 * 2**20 < 10_000_000 * 16384 * 4


def test_blocked_never_allocates_the_full_matrix(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every tensor any aten op produces during the blocked search is far smaller than N x K."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves

    class LargestOutput(TorchDispatchMode):
        largest = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
            out = func(*args, **(kwargs or {}))
            sizes = [t.numel() for t in tree_leaves(out) if isinstance(t, torch.Tensor)]
            self.largest = max([self.largest, *sizes])
            return out

    monkeypatch.setattr(blocked, "TARGET_BUFFER_BYTES", 256 * 1024)
    x, codebook = data(2000, 512, 4, seed=5)
    plan = blocked_plan(2000, 512, 4, 4, workers=1)  # dispatch modes are per thread: one worker
    with LargestOutput() as spy:
        out = blocked.nearest_code_blocked(x, codebook, plan=plan)
    assert plan.block_rows * plan.padded_codes <= spy.largest < 2000 * 512 // 8
    assert_nearest(x, codebook, NearestCode(*out))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_match_the_float32_search(dtype: torch.dtype) -> None:
    """fp16/bf16 in, fp32 accumulation: the ids of the fp32 search on the upcast values, ties included."""
    x, codebook = data(70, 40, 6, seed=6)
    codebook[20:] = codebook[:20].clone()  # every code twice: the lower index must win
    x_h, c_h = x.to(dtype), codebook.to(dtype)
    expected = nearest_code(x_h.float(), c_h.float(), backend="torch").indices
    assert bool((expected < 20).all())
    for backend in available_backends():
        out = nearest_code(x_h, c_h, backend=backend)
        assert torch.equal(out.indices, expected), backend
        assert out.sqdist.dtype == torch.float32
        assert_nearest(x_h.float(), c_h.float(), out)


def test_duplicate_codes_and_float64() -> None:
    x, codebook = data(50, 40, 5, seed=6)
    codebook[20:] = codebook[:20].clone()  # every code twice: the lower index wins
    for backend in available_backends():
        out = nearest_code(x, codebook, backend=backend)
        assert_nearest(x, codebook, out)
        assert bool((out.indices < 20).all())
        out64 = nearest_code(x.double(), codebook.double(), backend=backend)
        assert out64.sqdist.dtype == torch.float32
        assert_nearest(x, codebook, out64)


def tied_codebook() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """64 codes of width 5 with exact duplicates straddling boundaries, and 240 rows near the duplicated codes.

    With 16 groups of Kp/G = 4 codes (code = g * 4 + j) and 16-code tiles: (3, 4) and (15, 16) straddle group
    boundaries (and 15/16 a tile boundary), (7, 40) and (1, 33, 62) put the lower code in a later column j,
    (31, 32) straddles the middle. Returns x (240, 5), codebook (64, 5), first (240,) = the lowest index of the
    code every row is nearest to.
    """
    g = torch.Generator().manual_seed(11)
    codebook = torch.randn(64, 5, generator=g)
    copies = [(3, 4), (15, 16), (7, 40), (31, 32), (1, 33, 62), (8, 9)]
    for first, *dups in copies:
        codebook[dups] = codebook[first].clone()
    firsts = torch.tensor([c[0] for c in copies])
    first = firsts.repeat(40)  # (240,)
    x = codebook[first] + 0.01 * torch.randn(240, 5, generator=g)  # rows land in many blocks
    return x, codebook, first


def test_ties_go_to_the_lowest_index_on_every_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    """Duplicate codes on both sides of block/group/tile boundaries: every backend returns the reference's ids."""
    monkeypatch.setattr(blocked, "TARGET_BUFFER_BYTES", 4 * 1024)  # several row blocks
    monkeypatch.setattr(blocked, "MIN_CODES_FOR_GROUPS", 8)  # two-level argmin with G = 16 at K = 64
    monkeypatch.setattr(compiled, "MIN_WORK_FOR_THREADS", 0)  # compiled: two threads, 6-row blocks
    monkeypatch.setattr(compiled, "ROW_BLOCK", 6)
    monkeypatch.setattr(compiled, "L2_BYTES", 1)  # and one codebook chunk per code tile
    x, codebook, first = tied_codebook()
    reference = nearest_code(x, codebook, backend="torch").indices
    assert torch.equal(reference, first)
    plan = blocked_plan(*x.shape[:1], *codebook.shape, 4, workers=2)
    assert plan.groups == 16 and plan.block_rows < x.shape[0]
    assert torch.equal(blocked.nearest_code_blocked(x, codebook, plan=plan)[0], first)
    for backend in available_backends():
        out = nearest_code(x, codebook, backend=backend)
        assert torch.equal(out.indices, first), backend
        assert_nearest(x, codebook, out)


def test_no_grad_and_empty_input() -> None:
    x, codebook = data(8, 4, 3)
    x.requires_grad_(True)
    out = nearest_code(x, codebook)
    assert not out.sqdist.requires_grad
    empty = nearest_code(torch.empty(0, 3), codebook, backend="blocked")
    assert empty.indices.shape == (0,) and empty.indices.dtype == torch.int64


def test_auto_dispatch_and_env_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_VAR, raising=False)
    small = torch.empty(100, 8, device="meta"), torch.empty(16, 8, device="meta")
    large = torch.empty(100_000, 8, device="meta"), torch.empty(4096, 8, device="meta")
    assert resolve_backend("auto", *small) == "torch"  # meta tensors: neither CUDA nor CPU
    assert resolve_backend("auto", *large) == "blocked"
    cpu = torch.zeros(4, 3), torch.zeros(5, 3)
    assert resolve_backend("auto", *cpu) == ("compiled" if compiled.compiled_available() else "torch")
    assert resolve_backend("auto", cpu[0].double(), cpu[1]) == "torch"  # float64 stays on the torch paths
    monkeypatch.setenv(ENV_VAR, "blocked")
    assert resolve_backend("auto", *small) == "blocked"
    assert resolve_backend("torch", *large) == "torch"  # an explicit argument wins over the env var
    x, codebook = data(30, 10, 3)
    assert_nearest(x, codebook, nearest_code(x, codebook))
    monkeypatch.setenv(ENV_VAR, "cuda-magic")
    with pytest.raises(ValueError, match=f"{ENV_VAR}.*'blocked'.*cuda-magic"):
        nearest_code(x, codebook)


def test_available_backends() -> None:
    names = available_backends()
    assert names[:2] == ["torch", "blocked"]
    assert ("compiled" in names) == compiled.compiled_available()
    assert ("triton" in names) == (HAS_TRITON and (INTERPRET or torch.cuda.is_available()))


@pytest.mark.parametrize(
    "x,codebook,backend,err,match",
    [
        (torch.zeros(4, 3), torch.zeros(5, 3), "fast", ValueError, "'auto', 'torch', 'compiled', 'blocked', 'triton'.*'fast'"),
        (torch.zeros(4), torch.zeros(5, 3), "auto", ValueError, r"x must be 2-D \(N, D\)"),
        (torch.zeros(4, 3), torch.zeros(5, 3, 1), "auto", ValueError, r"codebook must be 2-D \(K, D\)"),
        (torch.zeros(4, 3), torch.zeros(5, 2), "auto", ValueError, "same D"),
        (torch.zeros(4, 3, dtype=torch.long), torch.zeros(5, 3), "auto", TypeError, "x must be a floating"),
        (torch.zeros(4, 3), torch.zeros(0, 3), "auto", ValueError, "K >= 1"),
        (torch.zeros(4, 3), torch.zeros(5, 3, device="meta"), "auto", ValueError, "same device"),
        ([[0.0, 1.0]], torch.zeros(5, 2), "auto", TypeError, "torch.Tensor"),
    ],
)
def test_bad_input_errors(x: object, codebook: object, backend: str, err: type, match: str) -> None:
    with pytest.raises(err, match=match):
        nearest_code(x, codebook, backend=backend)  # type: ignore[arg-type]


@pytest.mark.slow
def test_bench_smoke(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """The benchmark runs on a tiny grid and writes a table that agrees with its JSON."""
    import vqstudy.bench as bench
    from vqstudy.bench import BenchConfig, run_bench, write_results

    monkeypatch.setattr(bench, "PAIRED_GEMM_MIN_S", 0.0)  # a tiny search still gets the interleaved GEMM share
    cfg = BenchConfig(grid=((256, 300, 8),), repeats=2, train_repeats=1, gemm_size=128, memory=False,
                      methods=("vqstudy", "cdist"), paired_min_seconds=0.05)  # fmt: skip
    results = run_bench(cfg)
    md, js = write_results(results, tmp_path, "pytest")
    loaded = json.loads(js.read_text())
    rows = {r["method"]: r for r in loaded["entries"][0]["methods"]}
    assert set(rows) == {"vqstudy", "cdist"} and all(r["time_s"] > 0 for r in rows.values())
    assert rows["vqstudy"]["gflops"] == pytest.approx(2 * 256 * 300 * 8 / rows["vqstudy"]["time_s"] / 1e9)
    assert "| 256 | 300 | 8 | vqstudy |" in md.read_text()
    assert rows["vqstudy"]["ids_differ"] == 0 and rows["cdist"]["ids_differ"] == 0
    q1, q3 = rows["vqstudy"]["ratio_gemm_paired_quartiles"]
    assert 0 < q1 <= rows["vqstudy"]["ratio_gemm_paired"] <= q3  # the interleaved GEMM share, median in its quartiles
    with pytest.raises(ValueError, match="methods"):
        BenchConfig(methods=("nope",))


@pytest.mark.slow
def test_bench_interleaves_short_training_steps() -> None:
    """Both training steps short: they are also timed in interleaved pairs, and the target uses that ratio."""
    pytest.importorskip("vector_quantize_pytorch")
    from vqstudy.bench import BenchConfig, run_bench

    cfg = BenchConfig(grid=((256, 32, 8),), train_repeats=2, train_min_seconds=0.0, gemm_size=64, memory=False,
                      methods=("vqstudy_train", "vqp_train"), paired_min_seconds=0.05)  # fmt: skip
    results = run_bench(cfg)
    row = next(r for r in results["entries"][0]["methods"] if r["method"] == "vqstudy_train")
    q1, q3 = row["paired_quartiles"]
    assert row["paired_calls"] >= 2 and 0 < q1 <= row["speedup_vs_vqp_paired"] <= q3
    check = next(t for t in results["targets"] if t["target"].startswith("training step"))
    assert check["target"].endswith("(interleaved pairs)") and check["value"] == row["speedup_vs_vqp_paired"]


def test_bench_skips_with_reasons(monkeypatch: pytest.MonkeyPatch) -> None:
    """Baselines over the (N, K) budget, a missing faiss and the other device's methods are skipped with reasons."""
    import vqstudy.bench as bench

    cfg = bench.BenchConfig(grid=((8, 8, 2),), max_baseline_bytes=1024)
    assert bench._skip_reason(cfg, "vqstudy", 10**6, 10**4) is None
    assert "max_baseline_bytes" in str(bench._skip_reason(cfg, "cdist", 1000, 1000))
    assert "no vqp baseline" in str(bench._skip_reason(cfg, "vqstudy_train", 1000, 1000))
    assert "CUDA-only" in str(bench._skip_reason(cfg, "addmm", 8, 8))

    def no_faiss() -> int:
        raise ImportError("the faiss baseline needs faiss-cpu")

    monkeypatch.setattr(bench, "faiss_threads", no_faiss)
    assert "faiss-cpu" in str(bench._skip_reason(cfg, "faiss", 8, 8))
    ids = torch.tensor([0, 1, 2])
    x, codebook = torch.tensor([[0.0], [1.0], [2.0]]), torch.tensor([[0.0], [1.0], [2.0]])
    assert bench.compare_ids(x, codebook, ids, ids) == {"ids_differ": 0}
    wrong = bench.compare_ids(x, codebook, torch.tensor([0, 1, 0]), ids)
    assert wrong["ids_differ"] == 1 and wrong["ref_closer"] == 1 and wrong["max_gap"] == 4.0


def test_paired_ratio_interleaves_and_takes_the_median_ratio() -> None:
    """Calls alternate in order pair by pair; the ratio is peer time / own time of each pair's two calls."""
    from vqstudy.bench import paired_ratio

    calls: list[str] = []

    def own() -> None:
        calls.append("own")
        time.sleep(0.002)

    def peer() -> None:
        calls.append("peer")
        time.sleep(0.006)

    ratio, ratios = paired_ratio(own, peer, pairs=4)
    assert calls[2:] == ["own", "peer", "peer", "own", "own", "peer", "peer", "own"]  # after one warm-up call each
    assert len(ratios) == 4 and 1.5 < ratio < 4.5 and all(r > 1 for r in ratios)


def test_readme_table_is_regenerated_between_its_markers(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from vqstudy.bench import README_BEGIN, README_END, update_readme

    results = {"entries": [
        {"n": 64, "k": 8, "d": 4, "methods": [
            {"method": "vqstudy", "time_s": 0.002, "ratio_gemm": 0.5, "speedup_vs_faiss_paired": 0.75,
             "paired_quartiles": [0.7, 0.8], "ratio_gemm_paired": 0.55}, {"method": "faiss", "time_s": 0.001},
            {"method": "vqstudy_train", "time_s": 0.004, "speedup_vs_vqp_paired": 3.0},
            {"method": "vqp_train", "time_s": 0.010}]},
        {"n": 128, "k": 8, "d": 4, "methods": [
            {"method": "vqstudy", "time_s": 0.001, "ratio_gemm": 0.6}, {"method": "faiss", "time_s": 0.003},
            {"method": "vqp_train", "skipped": "too big"}]}]}
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{README_BEGIN}\nold table\n{README_END}\noutro\n")
    update_readme(readme, results)
    text = readme.read_text()
    assert "old table" not in text and text.startswith("intro\n") and text.endswith("outro\n")
    # shortfalls in bold
    assert ("| 64, 8, 4 | 2.0 ms | 1.0 ms | **0.50** | **0.75** [0.70, 0.80] | 0.50 (0.55) | 4.0 ms / 10.0 ms "
            "| **2.5x** (**3.0x** interleaved) |") in text
    assert "| 128, 8, 4 | 1.0 ms | 3.0 ms | 3.00 | - | 0.60 | not run" in text
    readme.write_text("no markers\n")
    with pytest.raises(ValueError, match="no .* block"):
        update_readme(readme, results)
