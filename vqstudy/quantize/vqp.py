"""`Quantizer(backend="vqp")`: vector-quantize-pytorch's VectorQuantize behind vqstudy's interface.

Used to compare against the reference implementation and to cross-check behaviour in tests.
Mapping of options: update='ema' -> EMA codebook (vqp default), 'grad' -> learnable_codebook;
dead_code_threshold (a share of the uniform usage) -> vqp's absolute `threshold_ema_dead_code`,
recomputed from each batch size; k-means init on the first batch (vqp's own behaviour).
"""

from __future__ import annotations

import torch
from torch import nn

from vqstudy.quantize.config import QuantizerConfig
from vqstudy.quantize.outputs import QuantizeOutput, QuantizeStats, validate_indices
from vqstudy.quantize.usage import usage_of


class VQPBackend(nn.Module):
    """Adapter: forward(x (..., dim)) -> vqstudy.quantize.outputs.QuantizeOutput."""

    def __init__(self, cfg: QuantizerConfig) -> None:
        super().__init__()
        from vector_quantize_pytorch import VectorQuantize

        self.config = cfg
        grad = cfg.update == "grad"
        self.vq = VectorQuantize(
            dim=cfg.dim,
            codebook_size=cfg.codebook_size,
            codebook_dim=cfg.codebook_dim,
            decay=cfg.decay,
            eps=cfg.eps,
            kmeans_init=cfg.kmeans_init,
            kmeans_iters=cfg.kmeans_iters,
            use_cosine_sim=cfg.cosine,
            threshold_ema_dead_code=0,
            commitment_weight=cfg.commitment_weight,
            rotation_trick=False,
            learnable_codebook=grad,
            ema_update=not grad,
        )

    @property
    def device(self) -> torch.device:
        return self.vq._codebook.embed.device

    def _cluster_size(self) -> torch.Tensor:
        return self.vq._codebook.cluster_size.reshape(-1)  # (K,)

    def forward(self, x: torch.Tensor):
        cfg = self.config
        lead = x.shape[:-1]
        flat = x.reshape(1, -1, cfg.dim)  # (1, N, dim): one sequence for vqp
        if cfg.dead_code_reset and self.training:
            self.vq._codebook.threshold_ema_dead_code = cfg.dead_code_threshold * flat.shape[1] / cfg.codebook_size
        quantized, indices, loss = self.vq(flat)
        indices = indices.reshape(lead).long()
        usage = usage_of(indices, cfg.codebook_size)
        perplexity, utilization = usage.perplexity.float(), usage.utilization.float()
        commit = torch.mean((x.detach() - quantized.detach().reshape(x.shape)) ** 2)
        share = self._cluster_size() / self._cluster_size().sum().clamp_min(1e-12)
        dead = (share < cfg.dead_code_threshold / cfg.codebook_size).sum()
        stats = QuantizeStats(perplexity, utilization, commit, commit, dead, torch.tensor(0))
        return QuantizeOutput(quantized.reshape(x.shape), indices, loss.reshape(()), stats)

    def decode_indices(self, indices: torch.Tensor) -> torch.Tensor:
        validate_indices(indices, self.config.codebook_size)
        return self.vq.get_output_from_indices(indices)
