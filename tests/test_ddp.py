"""Two gloo ranks on the CPU keep identical codebooks, equal to one process on the global batch."""

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from vqstudy import Quantizer

STEPS, N_GLOBAL, DIM, K = 30, 64, 4, 16
CONFIG = dict(
    dim=DIM,
    codebook_size=K,
    kmeans_samples=128,  # k-means after 2 steps, on data gathered from both ranks
    reset_every=5,
    dead_code_threshold=0.6,  # strict, so resets really happen in a 30-step run
    reservoir_size=4 * N_GLOBAL * STEPS,  # large enough that both ranks store every vector they see
)


def batches() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(6, DIM, generator=g) * 3
    labels = torch.randint(6, (STEPS, N_GLOBAL), generator=g)
    return centers[labels] + 0.3 * torch.randn(STEPS, N_GLOBAL, DIM, generator=g)  # (S, N, D)


def run(q: Quantizer, data: torch.Tensor) -> dict:
    q.train()
    resets = 0
    for step in range(STEPS):
        resets += int(q(data[step]).stats.resets)
    return {"codebook": q.codebook.clone(), "cluster_size": q.cluster_size.clone(), "resets": resets}


def worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        data = batches()
        per = N_GLOBAL // world
        local = data[:, rank * per : (rank + 1) * per]  # this rank's share of each global batch
        torch.save(run(Quantizer(**CONFIG), local), os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_ranks_match_each_other_and_one_process(tmp_path):
    mp.spawn(worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in range(2))
    single = run(Quantizer(**CONFIG), batches())
    assert single["resets"] > 0, "the test must exercise dead-code resets"
    assert r0["resets"] == r1["resets"] == single["resets"]
    torch.testing.assert_close(r0["codebook"], r1["codebook"], rtol=0, atol=0)
    torch.testing.assert_close(r0["cluster_size"], r1["cluster_size"], rtol=0, atol=0)
    torch.testing.assert_close(r0["codebook"], single["codebook"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(r0["cluster_size"], single["cluster_size"], rtol=1e-5, atol=1e-5)
