"""Two gloo ranks on the CPU keep identical codebooks, equal to one process on the global batch; through Lightning's
DDP (which broadcasts buffers from rank 0) each rank keeps its own reset reservoir."""

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import pytorch_lightning as pl
from torch.utils.data import DataLoader, Dataset

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


# ------------------------------------------------------------------------------------------------
# Through Lightning: DistributedDataParallel broadcasts module buffers from rank 0 before every forward.
# Per-rank state (the reset reservoir) must survive that; the codebook must stay identical across ranks.
# ------------------------------------------------------------------------------------------------

RANK_OFFSET = 100.0  # rank r's data lives around r * RANK_OFFSET in every dimension, so ownership is visible


class RankData(Dataset):
    """Each rank sees its own vectors (the distributed sampler is off; the rank picks the data)."""

    def __len__(self) -> int:
        return 16

    def __getitem__(self, i: int) -> torch.Tensor:
        rank = dist.get_rank() if dist.is_initialized() else 0
        g = torch.Generator().manual_seed(1000 * rank + i)
        return rank * RANK_OFFSET + torch.randn(8, DIM, generator=g)  # (8, DIM)


class QuantizerModule(pl.LightningModule):
    def __init__(self, out_dir: str) -> None:
        super().__init__()
        self.out_dir = out_dir
        self.encoder = torch.nn.Linear(DIM, DIM)
        self.quantizer = Quantizer(dim=DIM, codebook_size=K, kmeans_samples=32, reset_every=4,
                                   dead_code_threshold=0.6, reservoir_size=64)

    def training_step(self, batch, _):
        z = batch.reshape(-1, DIM) + 0.0 * self.encoder(batch.reshape(-1, DIM))  # (B*8, DIM)
        out = self.quantizer(z)
        return out.loss + 0.0 * out.quantized.sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)

    def on_train_end(self) -> None:
        q = self.quantizer
        filled = min(q.reservoir_seen, q.reservoir_size)
        torch.save({"reservoir": q.reservoir[:filled].clone(), "codebook": q.codebook.clone()},
                   os.path.join(self.out_dir, f"lightning_rank{self.global_rank}.pt"))


@pytest.mark.slow
def test_lightning_ddp_keeps_each_ranks_reservoir_and_identical_codebooks(tmp_path):
    torch.set_num_threads(1)
    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp_spawn", max_steps=12, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         use_distributed_sampler=False)
    trainer.fit(QuantizerModule(str(tmp_path)), DataLoader(RankData(), batch_size=2))
    r0, r1 = (torch.load(tmp_path / f"lightning_rank{r}.pt") for r in range(2))
    assert len(r0["reservoir"]) > 0 and len(r1["reservoir"]) > 0
    # every vector a rank stored is its own (rank 0 near 0, rank 1 near RANK_OFFSET), not rank 0's broadcast copy
    assert (r0["reservoir"].mean(dim=1) < RANK_OFFSET / 2).all()
    assert (r1["reservoir"].mean(dim=1) > RANK_OFFSET / 2).all()
    torch.testing.assert_close(r0["codebook"], r1["codebook"], rtol=0, atol=0)
