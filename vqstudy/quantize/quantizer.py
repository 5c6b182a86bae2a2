"""The shared vector quantizer: every model in vqstudy quantizes through `Quantizer`.

All codebook state (codes, EMA statistics, k-means buffer, reset reservoir) lives here.
Features, each switchable in `QuantizerConfig`:
- EMA codebook updates (arXiv 1711.00937, app. A) or gradient updates;
- k-means++ data init over a buffer of encoder outputs collected over the first steps;
- dead-code resets from a reservoir of recent encoder outputs, D^2-weighted (k-means++ style);
- low-dim factorized lookup and cosine lookup (ViT-VQGAN, arXiv 2110.04627);
- the rotation trick (arXiv 2410.06424): gradients pass through the rotation + rescale that maps z to q;
- SimVQ (arXiv 2411.02038): a frozen random codebook C reparameterized by a learned linear map, codes = C W;
- identical state on every rank under torch.distributed (counts and sums are all-reduced;
  k-means and resets draw from the gathered data in a canonical order with a shared seed);
- a second backend on vector-quantize-pytorch's `VectorQuantize` (`backend="vqp"`).
"""

from __future__ import annotations

import logging
import math
import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vqstudy.kernels import ema_step_compiled, nearest_code, usage_stats_compiled
from vqstudy.quantize import distributed as D
from vqstudy.quantize.config import QuantizerConfig
from vqstudy.quantize.kmeans import canonical_order, kmeans
from vqstudy.quantize.outputs import (
    QuantizeOutput,
    QuantizeStats,
    raise_if_not_finite,
    validate_indices,
    validate_input,
)
from vqstudy.quantize.usage import code_counts, perplexity_and_utilization
from vqstudy.quantize.vqp import VQPBackend

log = logging.getLogger(__name__)


class Quantizer(nn.Module):
    """Vector quantizer with EMA/gradient codebook, k-means init, dead-code resets, low-dim lookup.

    `Quantizer(cfg)` or `Quantizer(dim=64, codebook_size=512, **other QuantizerConfig fields)`.
    forward(x (..., dim)) -> QuantizeOutput; decode_indices(indices (...,)) -> (..., dim).
    """

    def __init__(self, config: QuantizerConfig | None = None, **kwargs: Any) -> None:
        super().__init__()
        if config is None:
            config = QuantizerConfig(**kwargs)
        elif kwargs:
            raise TypeError(f"pass either a QuantizerConfig or keyword fields, not both (got {sorted(kwargs)})")
        self.config = cfg = config
        self.codebook_size = cfg.codebook_size
        self.dim = cfg.dim
        if cfg.backend == "vqp":
            self.vqp = VQPBackend(cfg)
            return
        self.vqp = None
        d, k = cfg.lookup_dim, cfg.codebook_size
        low_dim = d != cfg.dim
        self.project_in: nn.Module = nn.Linear(cfg.dim, d) if low_dim else nn.Identity()
        self.project_out: nn.Module = nn.Linear(d, cfg.dim) if low_dim else nn.Identity()

        g = torch.Generator().manual_seed(cfg.seed)
        codebook = torch.randn(k, d, generator=g)
        if cfg.cosine:
            codebook = F.normalize(codebook, dim=-1)
        self.codebook_transform: nn.Module | None = None
        if cfg.simvq:  # frozen C (a buffer, never written), learned W: codes = C W (arXiv 2411.02038)
            # C ~ N(0, 1/d) as in the paper: unit-norm codes near the encoder outputs; N(0, 1) codes (norm ~ sqrt(d))
            # all lie far from the data, the nearest one is the shortest, and every vector picks it (total collapse).
            self.register_buffer("codebook", codebook * d**-0.5)
            self.codebook_transform = nn.Linear(d, d, bias=False)
            with torch.no_grad():
                self.codebook_transform.weight.copy_(torch.eye(d))  # starts at codes = C, like the plain random init
        elif cfg.update == "grad":
            self.codebook = nn.Parameter(codebook)
        else:
            self.register_buffer("codebook", codebook)
            self.register_buffer("embed_sum", codebook.clone())  # EMA of per-code sums of assigned vectors
        if cfg.affine:  # running per-dim statistics of the encoder outputs z (lookup space)
            self.register_buffer("affine_mean", torch.zeros(d))
            self.register_buffer("affine_var", torch.ones(d))
            self.register_buffer("affine_seen", torch.tensor(False))
        self.register_buffer("cluster_size", torch.ones(k))  # EMA of per-code usage counts
        self.register_buffer("window_counts", torch.zeros(k))  # usage since the last dead-code check
        self.register_buffer("initialized", torch.tensor(not cfg.kmeans_init))
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self.reservoir_size = cfg.reservoir_size or 8 * k
        # Per-rank state is kept out of the module's buffers: DistributedDataParallel broadcasts every
        # buffer from rank 0 before each forward, which would overwrite each rank's reservoir with rank 0's.
        # It still travels in the state dict (get_extra_state), so checkpoints resume exactly. Allocated on first
        # use in the process that fills it: a tensor made here would be shared memory under ddp_spawn.
        self.reservoir: torch.Tensor | None = None
        self.reservoir_seen = 0
        self.kmeans_samples = cfg.kmeans_samples or 16 * k
        self._kmeans_buffer: list[torch.Tensor] = []
        self._kmeans_seen = 0  # global vectors collected so far
        self._kmeans_steps = 0

    # ------------------------------------------------------------------ lookup space
    def _to_lookup(self, z: torch.Tensor) -> torch.Tensor:
        z = self.project_in(z)
        return F.normalize(z, dim=-1) if self.config.cosine else z

    def _codes(self) -> torch.Tensor:
        """(K, d) the codes in lookup space (C W under SimVQ; differentiable unless EMA-updated)."""
        codes = self.codebook if self.codebook_transform is None else self.codebook_transform(self.codebook)
        if self.config.affine:  # whiten the codes per dim, then give them the encoder outputs' running statistics
            mean, std = codes.mean(0), codes.std(0, unbiased=False).clamp_min(1e-6)
            codes = (codes - mean) / std * self.affine_var.clamp_min(1e-12).sqrt() + self.affine_mean
        return F.normalize(codes, dim=-1) if self.config.cosine else codes

    @torch.no_grad()
    def _update_affine_stats(self, z: torch.Tensor) -> None:
        """Running mean/variance of z (N, d), all ranks' vectors pooled; the first batch sets them."""
        z = z.float()
        stats = D.all_reduce_sum(torch.cat([z.sum(0), z.square().sum(0), z.new_tensor([z.shape[0]])]))
        d = z.shape[1]
        n = stats[-1].clamp_min(1)
        mean = stats[:d] / n
        var = (stats[d:2 * d] / n - mean.square()).clamp_min(0)
        m = 1.0 if not bool(self.affine_seen) else self.config.affine_momentum
        self.affine_mean.lerp_(mean, m)
        self.affine_var.lerp_(var, m)
        self.affine_seen.fill_(True)

    def decode_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """Code ids (...,) -> vectors (..., dim) in model space."""
        if self.vqp is not None:
            return self.vqp.decode_indices(indices)
        validate_indices(indices, self.codebook_size)
        return self.project_out(self._codes()[indices])

    def codebook_vectors(self) -> torch.Tensor:
        """(K, dim) every code decoded into model space."""
        device = self.codebook.device if self.vqp is None else self.vqp.device
        return self.decode_indices(torch.arange(self.codebook_size, device=device))

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor) -> QuantizeOutput:
        """Quantize x (..., dim). In training mode also updates the codebook state."""
        if self.vqp is not None:
            validate_input(x, self.dim)
            return self.vqp(x)
        validate_input(x, self.dim, check_finite=False)  # finiteness: from the search's distances below
        cfg = self.config
        lead = x.shape[:-1]
        z = self._to_lookup(x.reshape(-1, cfg.dim))  # (N, d)
        updating = self.training
        collecting = updating and not bool(self.initialized)
        if collecting or (updating and cfg.affine):
            raise_if_not_finite(x)  # before the k-means buffer or the affine statistics take anything in
        if collecting:
            self._collect_for_kmeans(z.detach())
        if updating and cfg.affine:
            self._update_affine_stats(z.detach())

        codes = self._codes()
        idx, sqdist = nearest_code(z.detach().float(), codes.detach().float(), backend=cfg.search_backend)
        dist_sum = sqdist.sum()  # the search's exact sum of ||z - q||^2
        if not math.isfinite(dist_sum.item()):  # NaN/Inf input (raises) or merely overflowing distances (passes)
            raise_if_not_finite(x)
        # fast path (EMA codebook, plain straight-through): one autograd node for the lookup, the
        # straight-through estimator and the commitment loss (same values and gradients as the general path)
        fused = cfg.update == "ema" and not cfg.rotation_trick and not codes.requires_grad and z.requires_grad
        if fused:
            q_st, commit = _StraightThroughCommit.apply(z, codes.detach(), idx, dist_sum)
            codebook_loss = commit.detach()
        else:
            q = codes.index_select(0, idx).to(z.dtype)  # (N, d)
            commit = F.mse_loss(z, q.detach())
            codebook_loss = F.mse_loss(q, z.detach()) if cfg.update == "grad" else commit.detach()
            q_st = self._straight_through(z, q)
        loss = cfg.commitment_weight * commit
        if cfg.update == "grad":
            loss = loss + cfg.codebook_weight * codebook_loss

        counts = None  # (K,) float64 usage counts of this batch; ids come from the search
        resets = 0
        if updating and bool(self.initialized):
            step = int(self.step.add_(1))
            counts = self._update_usage_and_ema(z.detach(), idx)
            self._fill_reservoir(z.detach(), step)
            if cfg.dead_code_reset and step % cfg.reset_every == 0:
                resets = self._reset_dead_codes()
        counts = code_counts(idx, cfg.codebook_size, check=False) if counts is None else counts
        # on the CPU one C pass; the torch path (GPU, or without the kernel) gives the same values
        usage = usage_stats_compiled(counts, self.window_counts, self.cluster_size, cfg.dead_code_threshold)
        if usage is None:
            perplexity, utilization, _ = perplexity_and_utilization(counts)
            usage = (perplexity.float(), utilization.float(), self.dead_mask().sum())

        quantized = self.project_out(q_st).reshape(*lead, cfg.dim)
        stats = QuantizeStats(
            perplexity=usage[0],
            utilization=usage[1],
            commit_loss=commit.detach(),
            codebook_loss=codebook_loss.detach(),
            dead_codes=usage[2],
            resets=torch.tensor(resets),
        )
        return QuantizeOutput(quantized, idx.reshape(lead), loss, stats)

    def _straight_through(self, z: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        """The output of the general (non-fused) path: the value of q, the gradient of the chosen estimator."""
        cfg = self.config
        # straight-through estimator; z - sg(z) is exactly 0, so the value is exactly the code (decode_indices matches)
        # (without an input gradient, the output is the detached code: the model's loss never trains the codebook)
        if not z.requires_grad:
            q_st = q.detach()
        elif cfg.rotation_trick:  # value q, gradient (lambda R)^T g with R, lambda the rotation + rescale z -> q
            t = rotate_and_rescale(z, q.detach())
            q_st = q.detach() + (t - t.detach())
        else:
            q_st = q.detach() + (z - z.detach())
        if cfg.sync_nu:  # value unchanged; the codes get sync_nu x the gradient of their outputs
            q_st = q_st + cfg.sync_nu * (q - q.detach())
        return q_st

    # ------------------------------------------------------------------ codebook updates
    def dead_mask(self) -> torch.Tensor:
        """(K,) bool: codes whose usage share since the last check is below dead_code_threshold / K.

        Shares, not counts, so the test does not depend on batch size; before any usage was
        counted in the window, the EMA usage counts are used.
        """
        total = self.window_counts.sum()
        usage = self.window_counts
        if not total > 0:
            usage = self.cluster_size
            total = usage.sum()
        return usage < total.clamp_min(1e-12) * (self.config.dead_code_threshold / self.codebook_size)

    @torch.no_grad()
    def _update_usage_and_ema(self, z: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """Usage windows and EMA statistics (and, with update='ema', the codes) from this step's ids;
        returns this rank's (K,) float64 usage counts. One process on the CPU: one fused compiled pass."""
        cfg = self.config
        if cfg.update == "ema" and z.device.type == "cpu" and not D.is_distributed():
            state = (self.window_counts, self.cluster_size, self.embed_sum, self.codebook)
            counts = ema_step_compiled(z.float(), idx, *state, decay=cfg.decay, eps=cfg.eps, cosine=cfg.cosine)
            if counts is not None:
                return counts
        counts = local = code_counts(idx, cfg.codebook_size, check=False)
        counts = D.all_reduce_sum(counts.clone()) if D.is_distributed() else counts
        self.window_counts += counts
        self.cluster_size.mul_(cfg.decay).add_(counts, alpha=1 - cfg.decay)
        if cfg.update != "ema":
            return local
        sums = torch.zeros_like(self.embed_sum).index_add_(0, idx, z.float())  # (K, d), no N x K one-hot
        sums = D.all_reduce_sum(sums)
        self.embed_sum.mul_(cfg.decay).add_(sums, alpha=1 - cfg.decay)
        total = self.cluster_size.sum()
        smoothed = (self.cluster_size + cfg.eps) / (total + cfg.codebook_size * cfg.eps) * total  # Laplace
        codebook = self.embed_sum / smoothed[:, None]
        self.codebook.copy_(F.normalize(codebook, dim=-1) if cfg.cosine else codebook)
        return local

    @torch.no_grad()
    def _fill_reservoir(self, z: torch.Tensor, step: int) -> None:
        """Keep the most recent encoder outputs (an evenly strided subset of each batch) in a ring buffer."""
        n, size = z.shape[0], self.reservoir_size
        take = min(n, max(size // 4, 1))
        if take < n:  # every stride-th row from a per-step offset: spread over the batch, no permutation
            stride = n // take
            z = z[(step + D.rank()) % stride::stride][:take]
        if self.reservoir is None:
            self.reservoir = torch.zeros(size, z.shape[1], device=z.device)
        elif self.reservoir.device != z.device:
            self.reservoir = self.reservoir.to(z.device)
        start = self.reservoir_seen % size
        if start + take <= size:
            self.reservoir[start:start + take] = z
        else:
            pos = (torch.arange(take, device=z.device) + start) % size
            self.reservoir[pos] = z.float()
        self.reservoir_seen += take

    def _generator(self, salt: int = 0) -> torch.Generator:
        """A CPU generator determined by (seed, step, salt): stateless, so resumed runs match."""
        return torch.Generator().manual_seed(self.config.seed * 1_000_003 + int(self.step) * 7_919 + salt)

    @torch.no_grad()
    def _reset_dead_codes(self) -> int:
        """Re-seed dead codes from the (gathered) reservoir, D^2-weighted from the live codes."""
        dead = self.dead_mask()
        self.window_counts.zero_()
        n_dead = int(dead.sum())
        if n_dead == 0:
            return 0
        filled = min(self.reservoir_seen, self.reservoir_size)
        if self.reservoir is None:
            self.reservoir = torch.zeros(self.reservoir_size, self.config.lookup_dim, device=self.codebook.device)
        pool = canonical_order(D.all_gather_cat(self.reservoir[:filled].to(self.codebook.device)), self.config.seed)  # same on every rank
        if pool.shape[0] == 0:
            return 0
        live = self._codes()[~dead]
        if live.shape[0] > 0:
            _, weight = nearest_code(pool, live, backend=self.config.search_backend)
        else:
            weight = torch.ones(pool.shape[0], device=pool.device)
        weight = weight.double().cpu() + 1e-12
        replace = n_dead > pool.shape[0]
        choice = torch.multinomial(weight / weight.sum(), n_dead, replacement=replace, generator=self._generator())
        new = pool[choice.to(pool.device)]
        if replace:  # fewer stored vectors than dead codes: jitter the repeats apart
            new = new + 1e-3 * new.std() * torch.randn(new.shape, generator=self._generator(1)).to(new.device)
        self._set_codes(dead, new, self.cluster_size.sum() / self.codebook_size)
        log.debug("reset %d dead codes at step %d", n_dead, int(self.step))
        return n_dead

    @torch.no_grad()
    def _set_codes(self, mask: torch.Tensor, vectors: torch.Tensor, usage: torch.Tensor) -> None:
        """Write `vectors` into the codes selected by `mask`, with consistent EMA statistics.

        `usage` is the EMA usage count given to those codes: a scalar or one value per selected code.
        """
        vectors = F.normalize(vectors, dim=-1) if self.config.cosine else vectors
        self.codebook.data[mask] = vectors.to(self.codebook.dtype)
        self.cluster_size[mask] = usage.to(self.cluster_size.dtype)
        if self.config.update == "ema":
            self.embed_sum[mask] = vectors.float() * self.cluster_size[mask, None]

    # ------------------------------------------------------------------ k-means init
    @torch.no_grad()
    def _collect_for_kmeans(self, z: torch.Tensor) -> None:
        self._kmeans_buffer.append(z.float())
        n_global = D.all_reduce_sum(torch.tensor([z.shape[0]], device=z.device)).item()
        self._kmeans_seen += int(n_global)
        self._kmeans_steps += 1
        if self._kmeans_seen >= self.kmeans_samples or self._kmeans_steps >= self.config.kmeans_max_steps:
            self._init_from_buffer(batch_size=int(n_global))

    @torch.no_grad()
    def _init_from_buffer(self, batch_size: int) -> None:
        cfg = self.config
        data = canonical_order(D.all_gather_cat(torch.cat(self._kmeans_buffer)), cfg.seed)  # same on every rank
        self._kmeans_buffer.clear()
        k = cfg.codebook_size
        if data.shape[0] >= k:
            result = kmeans(data, k, iters=cfg.kmeans_iters, seed=cfg.seed, search_backend=cfg.search_backend)
            centers, counts = result.centers, result.counts
            log.info("k-means init: %d codes from %d vectors, inertia %.4g", k, data.shape[0], result.inertia)
        else:
            warnings.warn(
                f"k-means init: only {data.shape[0]} vectors were collected for codebook_size ({k}) codes; "
                f"using each vector as a code and jittered copies for the other {k - data.shape[0]} "
                "(dead-code resets re-seed them); raise kmeans_samples/kmeans_max_steps to avoid this",
                stacklevel=3,
            )
            g = torch.Generator().manual_seed(cfg.seed)
            pick = torch.cat([torch.arange(data.shape[0]), torch.randint(data.shape[0], (k - data.shape[0],), generator=g)])
            centers = data[pick.to(data.device)]
            jitter = torch.randn(centers.shape, generator=g).to(centers.device) * (1e-2 * data.std() + 1e-6)
            centers[data.shape[0] :] += jitter[data.shape[0] :]
            counts = torch.ones(k, device=data.device)
        usage = counts.float() * (batch_size / max(data.shape[0], 1))  # counts scaled to one step's batch
        self._set_codes(torch.ones(k, dtype=torch.bool, device=centers.device), centers, usage)
        self.initialized.fill_(True)

    def get_extra_state(self) -> torch.Tensor:
        """This rank's reset reservoir (not a buffer, see __init__) as one float64 tensor for the state dict:
        the flattened (reservoir_size, d) vectors followed by the count of vectors seen."""
        if self.vqp is not None:
            return torch.zeros(0, dtype=torch.float64)
        seen = torch.tensor([float(self.reservoir_seen)], dtype=torch.float64)
        if self.reservoir is None:
            return torch.cat([torch.zeros(self.reservoir_size * self.config.lookup_dim, dtype=torch.float64), seen])
        return torch.cat([self.reservoir.detach().double().cpu().reshape(-1), seen])

    def set_extra_state(self, state: torch.Tensor) -> None:
        if self.vqp is not None or state.numel() == 0:
            return
        shape = (self.reservoir_size, self.config.lookup_dim)
        if state.numel() != shape[0] * shape[1] + 1:
            raise ValueError(f"Quantizer extra state has {state.numel()} values, expected "
                             f"{shape[0] * shape[1] + 1} (reservoir_size x lookup dim + 1)")
        self.reservoir = state[:-1].reshape(shape).float().to(self.codebook.device)
        self.reservoir_seen = int(state[-1].item())

    def extra_repr(self) -> str:
        c = self.config
        return (
            f"dim={c.dim}, codebook_size={c.codebook_size}, lookup_dim={c.lookup_dim}, cosine={c.cosine}, "
            f"update={c.update}, kmeans_init={c.kmeans_init}, dead_code_reset={c.dead_code_reset}, "
            f"rotation_trick={c.rotation_trick}, simvq={c.simvq}, affine={c.affine}, sync_nu={c.sync_nu}"
        )


class _StraightThroughCommit(torch.autograd.Function):
    """(z (N, d), codes (K, d), idx (N,), sum of the searched distances) -> (codes[idx] with the
    straight-through gradient to z, mean((z - codes[idx])^2)). Backward: dz = dq + dcommit * 2 (z - q) / (N d); the codes get none
    (EMA-updated). Equals the graph `q.detach() + (z - z.detach())`, `F.mse_loss(z, q.detach())`."""

    @staticmethod
    def forward(ctx: Any, z: torch.Tensor, codes: torch.Tensor, idx: torch.Tensor,
                dist_sum: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        q = codes.index_select(0, idx).to(z.dtype)
        commit = (dist_sum / z.numel()).to(z.dtype)  # dist_sum: the search's exact sum of ||z - q||^2
        ctx.save_for_backward(z, q)
        return q, commit

    @staticmethod
    def backward(ctx: Any, grad_q: torch.Tensor | None,
                 grad_commit: torch.Tensor | None) -> tuple[Any, None, None, None]:
        z, q = ctx.saved_tensors
        if grad_commit is None:
            return grad_q, None, None, None
        scaled = (z - q) * (grad_commit * (2.0 / z.numel())).to(z.dtype)
        return (scaled if grad_q is None else grad_q + scaled), None, None, None


def rotate_and_rescale(z: torch.Tensor, q: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """lambda R z for z, q (N, d), where R rotates z/|z| onto q/|q| and lambda = |q|/|z| (arXiv 2410.06424, eq. 4).

    R and lambda are computed from detached z and q (treated as constants), so the result equals q in value
    and its gradient with respect to z is (lambda R)^T: the Householder form R = I - 2 r r^T + 2 w u^T with
    u = z/|z|, w = q/|q|, r = (u + w)/|u + w|, applied without forming the (d, d) matrix.
    """
    zd = z.detach()
    z_norm = zd.norm(dim=-1, keepdim=True).clamp_min(eps)  # (N, 1)
    q_norm = q.norm(dim=-1, keepdim=True).clamp_min(eps)  # (N, 1)
    u, w = zd / z_norm, q / q_norm  # (N, d) unit vectors
    r = F.normalize(u + w, dim=-1, eps=eps)  # (N, d); 0 when u = -w, where R = I + 2 w u^T still maps u to w
    rz = z - 2 * r * (r * z).sum(-1, keepdim=True) + 2 * w * (u * z).sum(-1, keepdim=True)  # (N, d)
    return (q_norm / z_norm) * rz

