"""Properties of the shared Quantizer (tiny tensors)."""

import math

import pytest
import torch

from vqstudy import Quantizer, QuantizerConfig
from vqstudy.quantize.usage import CodebookUsage


def planted(k: int = 8, dim: int = 8, n: int = 512, spread: float = 0.05, seed: int = 0):
    """n points around k well-separated centers; returns (points (n, dim), centers (k, dim))."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(k, dim, generator=g) * 4
    labels = torch.arange(n) % k
    return centers[labels] + spread * torch.randn(n, dim, generator=g), centers


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"codebook_dim": 3},
        {"codebook_dim": 4, "cosine": True},
        {"update": "grad"},
        {"backend": "vqp"},
    ],
)
def test_decode_indices_equals_quantized_in_eval(kwargs):
    q = Quantizer(dim=8, codebook_size=16, kmeans_samples=64, **kwargs)
    x = torch.randn(2, 5, 8)
    q.train()
    for _ in range(3):
        q(torch.randn(4, 16, 8))
    q.eval()
    out = q(x)
    assert out.indices.shape == (2, 5) and out.indices.dtype == torch.int64
    if kwargs.get("backend") == "vqp":
        torch.testing.assert_close(q.decode_indices(out.indices), out.quantized)
    else:  # exact, even with gradients enabled (the straight-through term adds an exact zero)
        assert torch.equal(q.decode_indices(out.indices), out.quantized)
    # the chosen code is the nearest one in the lookup space
    codes = q.codebook_vectors()
    if not kwargs:
        dist = torch.cdist(x.reshape(-1, 8), codes)
        assert torch.allclose(dist.gather(1, out.indices.reshape(-1, 1)).squeeze(1), dist.min(1).values)


def test_kmeans_init_recovers_planted_clusters():
    x, centers = planted(k=8, n=1024)
    q = Quantizer(dim=8, codebook_size=8, kmeans_samples=600, dead_code_reset=False, kmeans_iters=20)
    q.train()
    q(x[:256])
    assert not bool(q.initialized), "k-means must wait for kmeans_samples vectors, not use the first batch"
    q(x[256:512])
    q(x[512:768])
    assert bool(q.initialized)
    codes = q.codebook_vectors().detach()
    # every planted center has a code within the cluster spread, and each code serves one center
    dist = torch.cdist(centers, codes)
    assert dist.min(dim=1).values.max() < 0.1
    assert len(set(dist.argmin(dim=1).tolist())) == 8


def test_kmeans_with_fewer_samples_than_codes_warns_and_spreads_codes():
    q = Quantizer(dim=4, codebook_size=32, kmeans_samples=1000, kmeans_max_steps=1, dead_code_reset=False)
    x = torch.randn(10, 4)
    with pytest.warns(UserWarning, match="only 10 vectors"):
        q(x)
    codes = q.codebook_vectors().detach()
    assert torch.cdist(codes, codes).add(torch.eye(32)).min() > 0  # no two codes identical


def collapsed_run(reset: bool, steps: int = 160, k: int = 16):
    torch.manual_seed(0)
    x_all, _ = planted(k=k, dim=8, n=4096, spread=0.1)
    q = Quantizer(dim=8, codebook_size=k, kmeans_init=False, dead_code_reset=reset, reset_every=10)
    with torch.no_grad():
        q.codebook.copy_(torch.zeros(k, 8) + x_all.mean(0))  # all codes equal: fully collapsed
        q.embed_sum.copy_(q.codebook * q.cluster_size[:, None])
    usage = CodebookUsage(k)
    q.train()
    for step in range(steps):
        batch = x_all[torch.randint(len(x_all), (256,))]
        out = q(batch)
        if step >= steps - 20:
            usage.update(out.indices)
    return usage.compute()["utilization"].item()


def test_dead_code_resets_revive_a_collapsed_codebook():
    assert collapsed_run(reset=True) > 0.9
    assert collapsed_run(reset=False) < 0.5  # the control: without resets most codes stay dead


def test_straight_through_gradient_reaches_the_encoder():
    for kwargs in ({}, {"codebook_dim": 3}):
        q = Quantizer(dim=8, codebook_size=16, kmeans_samples=32, **kwargs)
        x = torch.randn(64, 8, requires_grad=True)
        out = q(x)
        (out.quantized.pow(2).sum() + out.loss).backward()
        assert x.grad is not None and x.grad.abs().sum() > 0
        if not kwargs:  # identity projections: d quantized / d x = I
            x2 = x.detach().clone().requires_grad_(True)
            q.eval()
            q(x2).quantized.sum().backward()
            torch.testing.assert_close(x2.grad, torch.ones_like(x2))


def test_grad_update_trains_the_codebook_and_projections():
    q = Quantizer(dim=8, codebook_size=16, codebook_dim=4, update="grad", kmeans_samples=32)
    out = q(torch.randn(64, 8))
    (out.quantized.sum() + out.loss).backward()
    for name, p in q.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_ema_update_matches_hand_computation():
    decay, eps = 0.9, 1e-5
    q = Quantizer(dim=2, codebook_size=3, kmeans_init=False, dead_code_reset=False, decay=decay, eps=eps)
    codebook = torch.tensor([[0.0, 0.0], [1.0, 1.0], [5.0, 5.0]])
    with torch.no_grad():
        q.codebook.copy_(codebook)
        q.embed_sum.copy_(codebook)  # cluster_size starts at ones
    x = torch.tensor([[0.1, 0.0], [0.9, 1.2], [1.1, 0.8], [0.0, -0.1]])
    out = q(x)
    assert out.indices.tolist() == [0, 1, 1, 0]
    counts = torch.tensor([2.0, 2.0, 0.0])
    sums = torch.tensor([[0.1, -0.1], [2.0, 2.0], [0.0, 0.0]])
    cluster = decay * torch.ones(3) + (1 - decay) * counts
    embed_sum = decay * codebook + (1 - decay) * sums
    total = cluster.sum()
    smoothed = (cluster + eps) / (total + 3 * eps) * total
    torch.testing.assert_close(q.cluster_size, cluster)
    torch.testing.assert_close(q.codebook, embed_sum / smoothed[:, None])


@pytest.mark.parametrize("kwargs", [{}, {"cosine": True, "codebook_dim": 4}])
def test_compiled_ema_step_matches_the_torch_path(monkeypatch, kwargs):
    """The fused C++ EMA step and per-step statistics (one process, CPU) give the same state and statistics as the
    torch ops they replace."""
    import vqstudy.quantize.quantizer as quantizer_module
    from vqstudy.kernels.compiled import compiled_available

    if not compiled_available():
        pytest.skip("the compiled EMA step needs a C++ compiler")
    x, _ = planted(k=6, dim=8, n=96)
    x = x[::2]  # a strided batch
    runs = {}
    for name in ("compiled", "torch"):
        if name == "torch":
            monkeypatch.setattr(quantizer_module, "ema_step_compiled", lambda *a, **k: None)
            monkeypatch.setattr(quantizer_module, "usage_stats_compiled", lambda *a, **k: None)
        torch.manual_seed(0)  # the low-dim projections' init
        q = Quantizer(dim=8, codebook_size=10, kmeans_samples=48, reset_every=2, seed=3, **kwargs)
        stats = [q(x + 0.01 * i).stats for i in range(6)]
        runs[name] = (q.state_dict(), stats)
    (state_c, stats_c), (state_t, stats_t) = runs["compiled"], runs["torch"]
    assert int(state_c["step"]) == 6  # k-means init in the first step, EMA in every step
    for key in ("codebook", "embed_sum", "cluster_size", "window_counts"):
        torch.testing.assert_close(state_c[key], state_t[key], rtol=1e-5, atol=1e-6, msg=key)
    for a, b in zip(stats_c, stats_t):
        torch.testing.assert_close(a.perplexity, b.perplexity)
        torch.testing.assert_close(a.utilization, b.utilization)
        assert int(a.resets) == int(b.resets) and int(a.dead_codes) == int(b.dead_codes)
    assert any(int(s.resets) for s in stats_c) and any(int(s.dead_codes) for s in stats_c)  # both were exercised


def test_ema_step_bumps_the_codebook_version_for_autograd():
    """The EMA step writes the codebook outside torch; a graph that saved the old codebook must still refuse it."""
    q = Quantizer(dim=4, codebook_size=8, kmeans_init=False, dead_code_reset=False)
    z = torch.randn(5, 4, requires_grad=True)
    saved = (z @ q.codebook.T).square().sum()  # saves the codebook for z's gradient
    q(torch.randn(16, 4))
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        saved.backward()


def test_perplexity_of_uniform_use_is_k():
    k = 16
    metric = CodebookUsage(k)
    metric.update(torch.arange(k).repeat(5))
    res = metric.compute()
    assert res["perplexity"].item() == pytest.approx(k)
    assert res["effective_bits"].item() == pytest.approx(math.log2(k))
    assert res["utilization"].item() == 1.0 and res["dead_fraction"].item() == 0.0
    metric.update(torch.zeros(16 * 5, dtype=torch.long))  # half the mass on code 0
    res = metric.compute()
    assert res["perplexity"].item() < k
    assert res["histogram"][0].item() == 5 + 80


def test_step_stats_perplexity_uses_the_batch():
    q = Quantizer(dim=2, codebook_size=4, kmeans_init=False, dead_code_reset=False)
    with torch.no_grad():
        q.codebook.copy_(torch.tensor([[0.0, 0], [10, 0], [0, 10], [10, 10]]))
    q.eval()
    out = q(q.codebook.clone().repeat(3, 1))
    assert out.stats.perplexity.item() == pytest.approx(4.0)
    assert out.stats.utilization.item() == 1.0


@pytest.mark.parametrize(
    "x, err, match",
    [
        (torch.tensor([[float("nan")] * 8]), ValueError, "NaN/Inf"),
        (torch.tensor([[float("inf")] * 8]), ValueError, "NaN/Inf"),
        (torch.randn(4, 7), ValueError, r"last dimension dim \(8\)"),
        (torch.ones(4, 8, dtype=torch.long), TypeError, "floating"),
        (torch.randn(0, 8), ValueError, "empty batch"),
        ([[0.0] * 8], TypeError, "torch.Tensor"),
    ],
)
def test_bad_input_is_refused_and_codebook_untouched(x, err, match):
    q = Quantizer(dim=8, codebook_size=16, kmeans_samples=16)
    q(torch.randn(32, 8))  # initialise
    before = {k: v.clone() for k, v in q.state_dict().items()}
    with pytest.raises(err, match=match):
        q(x)
    after = q.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_bad_indices_and_config_are_refused():
    q = Quantizer(dim=8, codebook_size=16)
    with pytest.raises(ValueError, match=r"\[0, 16\).*\[16\]"):
        q.decode_indices(torch.tensor([3, 16]))
    with pytest.raises(TypeError, match="integer"):
        q.decode_indices(torch.tensor([1.0]))
    with pytest.raises(ValueError, match=r"codebook_dim \(9\)"):
        QuantizerConfig(dim=8, codebook_dim=9)
    with pytest.raises(ValueError, match="update .*'adam'"):
        QuantizerConfig(update="adam")


def test_vqp_backend_agrees_with_vqstudy_on_the_same_codebook_and_partition():
    """Same codebook in both backends -> same ids and outputs; after training each picks its nearest codes."""
    ours = Quantizer(dim=8, codebook_size=8, kmeans_init=False, dead_code_reset=False).eval()
    theirs = Quantizer(dim=8, codebook_size=8, backend="vqp", kmeans_init=False, dead_code_reset=False).eval()
    with torch.no_grad():
        theirs.vqp.vq._codebook.embed.copy_(ours.codebook[None])  # vqp keeps (heads, K, D)
    x = 2 * torch.randn(256, 8)
    with torch.no_grad():
        a, b = ours(x), theirs(x)
    assert torch.equal(a.indices, b.indices)
    torch.testing.assert_close(a.quantized, b.quantized)

    x, _ = planted(k=8, n=512)
    trained = []
    for backend in ("vqstudy", "vqp"):
        q = Quantizer(dim=8, codebook_size=8, kmeans_samples=512, dead_code_reset=False, backend=backend)
        q.train()
        q(x)
        trained.append(q.eval())
    x_test = x[:64] + 0.01 * torch.randn(64, 8)
    with torch.no_grad():
        for q in trained:  # each backend picks the nearest of its own trained codes
            d = torch.cdist(x_test, q.codebook_vectors())
            assert torch.equal(q(x_test).indices, d.argmin(dim=1))
        assert len(set(trained[0](x_test).indices.tolist())) == 8  # ours recovers the 8 planted clusters


def test_no_n_by_k_tensor_in_the_training_step(monkeypatch):
    """Search, EMA sums (index_add, no one-hot) and resets: no op produces a tensor of N x K elements."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves

    from vqstudy.kernels import blocked

    class LargestOutput(TorchDispatchMode):
        largest = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            sizes = [t.numel() for t in tree_leaves(out) if isinstance(t, torch.Tensor)]
            self.largest = max([self.largest, *sizes])
            return out

    monkeypatch.setattr(blocked, "TARGET_BUFFER_BYTES", 64 * 1024)
    n, k = 512, 256
    q = Quantizer(dim=8, codebook_size=k, kmeans_samples=n, reset_every=1, dead_code_threshold=0.9,
                  search_backend="blocked")
    x = torch.randn(n, 8, requires_grad=True)
    q(x)  # k-means init
    assert bool(q.initialized)
    with LargestOutput() as spy:
        resets = 0
        for _ in range(2):
            out = q(x)
            (out.loss + out.quantized.sum()).backward()
            resets += int(out.stats.resets)
    assert resets > 0, "the spied steps must include a dead-code reset"
    assert 0 < spy.largest < n * k // 4


# ---------------------------------------------------------------------- collapse fixes: rotation trick, SimVQ
def test_rotation_trick_gradient_is_the_hand_computed_rotation_and_rescale():
    """z = (1, 0) is quantized to q = (0, 2): R is the +90 degree rotation, lambda = 2, so dL/dz = (lambda R)^T dL/dq."""
    q = Quantizer(dim=2, codebook_size=2, kmeans_init=False, dead_code_reset=False, rotation_trick=True).eval()
    q.codebook.copy_(torch.tensor([[0.0, 2.0], [5.0, 5.0]]))
    lam_r = torch.tensor([[0.0, -2.0], [2.0, 0.0]])  # lambda R, worked by hand from I - 2 r r^T + 2 w u^T
    for g in (torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]), torch.tensor([0.3, -0.7])):
        z = torch.tensor([[1.0, 0.0]], requires_grad=True)
        out = q(z)
        assert torch.equal(out.quantized.detach(), torch.tensor([[0.0, 2.0]]))  # the value is exactly the code
        out.quantized.backward(g[None])
        torch.testing.assert_close(z.grad[0], lam_r.T @ g)
    z = torch.tensor([[1.0, 0.0]], requires_grad=True)
    Quantizer(dim=2, codebook_size=2, kmeans_init=False, dead_code_reset=False).eval()(z).quantized.sum().backward()
    assert torch.equal(z.grad, torch.ones(1, 2))  # the straight-through default passes g unchanged


def test_rotation_trick_gradient_preserves_norm_ratio_and_angle_in_higher_dims():
    from vqstudy.quantize.quantizer import rotate_and_rescale

    g = torch.Generator().manual_seed(0)
    z, qv, grad = (torch.randn(5, 8, generator=g) for _ in range(3))
    z.requires_grad_(True)
    t = rotate_and_rescale(z, qv)
    torch.testing.assert_close(t, qv, rtol=1e-5, atol=1e-5)  # lambda R z = q
    t.backward(grad)
    lam = qv.norm(dim=1) / z.detach().norm(dim=1)
    torch.testing.assert_close(z.grad.norm(dim=1), lam * grad.norm(dim=1), rtol=1e-5, atol=1e-5)  # R is orthogonal
    # R^T maps q/|q| back to z/|z|, so the gradient's component along z equals g's component along q, rescaled
    along_z = (z.grad * z.detach()).sum(1) / z.detach().norm(dim=1)
    along_q = (grad * qv).sum(1) / qv.norm(dim=1)
    torch.testing.assert_close(along_z, lam * along_q, rtol=1e-4, atol=1e-4)


def test_simvq_trains_the_linear_map_not_the_frozen_codebook_and_moves_every_code():
    torch.manual_seed(0)
    q = Quantizer(dim=4, codebook_size=8, simvq=True, update="grad", kmeans_init=False, dead_code_reset=False)
    frozen = q.codebook.clone()
    assert "codebook" not in dict(q.named_parameters()) and "codebook_transform.weight" in dict(q.named_parameters())
    before = q.codebook_vectors().detach().clone()
    opt = torch.optim.SGD(q.parameters(), lr=0.1)
    x = torch.randn(64, 4) * 0.1 + 3.0  # far from the codes: only one or two codes are ever chosen
    used = set()
    for _ in range(5):
        out = q(x)
        used |= set(out.indices.unique().tolist())
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    assert torch.equal(q.codebook, frozen)  # C never changes
    w = q.codebook_transform.weight.detach()
    assert not torch.equal(w, torch.eye(4))  # W does
    after = q.codebook_vectors().detach()
    assert len(used) < 8
    moved = (after - before).norm(dim=1)
    assert (moved > 1e-4).all()  # every code moved, used or not: they move together through W
    torch.testing.assert_close(after, frozen @ w.T)  # codes = C W


def test_simvq_and_rotation_trick_configs_are_validated():
    with pytest.raises(ValueError, match=r"simvq \(True\) .* update='grad' \(got 'ema'\)"):
        QuantizerConfig(simvq=True)
    QuantizerConfig(simvq=True, update="grad", kmeans_init=False, dead_code_reset=False)
    with pytest.raises(ValueError, match="backend='vqstudy'"):
        QuantizerConfig(rotation_trick=True, backend="vqp")


def test_simvq_codes_start_near_unit_norm_so_they_are_not_all_far_from_the_data():
    q = Quantizer(dim=64, codebook_size=256, simvq=True, update="grad", kmeans_init=False, dead_code_reset=False).eval()
    norms = q.codebook_vectors().detach().norm(dim=1)
    assert 0.7 < float(norms.mean()) < 1.3  # C ~ N(0, 1/d), W = I: |c| ~ 1, not sqrt(64) = 8
    with torch.no_grad():
        used = q(0.5 * torch.randn(4096, 64)).indices.unique().numel()
    assert used > 64  # inputs of norm ~4 spread over many codes at initialisation (not one code for all)


def test_fused_straight_through_matches_the_autograd_graph():
    """The EMA fast path's one autograd node gives the values and gradients of q.detach() + (z - z.detach())
    and mse(z, q.detach()), with the commitment loss taken from the search's distances."""
    from vqstudy.kernels import nearest_code
    from vqstudy.quantize.quantizer import _StraightThroughCommit

    g = torch.Generator().manual_seed(0)
    z = torch.randn(300, 8, generator=g, requires_grad=True)
    codes = torch.randn(40, 8, generator=g)
    idx, sqdist = nearest_code(z.detach(), codes)
    w, beta = torch.randn(300, 8, generator=g), 0.37
    q, commit = _StraightThroughCommit.apply(z, codes, idx, sqdist.sum())
    ((q * w).sum() + beta * commit).backward()
    fused = z.grad.clone()
    z.grad = None
    ref_q = codes[idx]
    ref_st, ref_commit = ref_q + (z - z.detach()), torch.nn.functional.mse_loss(z, ref_q)
    ((ref_st * w).sum() + beta * ref_commit).backward()
    assert torch.equal(q, ref_q)
    assert torch.allclose(commit, ref_commit, rtol=1e-5)
    assert torch.allclose(fused, z.grad, rtol=1e-5, atol=1e-7)
    assert not torch.equal(fused, w)  # the commitment term contributes


def test_affine_codes_follow_the_encoder_statistics_and_leave_the_codebook_alone():
    from vqstudy.quantize import Quantizer

    g = torch.Generator().manual_seed(0)
    q = Quantizer(dim=6, codebook_size=32, update="grad", affine=True, kmeans_init=False, dead_code_reset=False).train()
    raw = q.codebook.detach().clone()
    mean, std = torch.tensor([3.0, -1.0, 0.0, 5.0, 2.0, -4.0]), torch.tensor([2.0, 0.5, 1.0, 3.0, 0.1, 1.5])
    x = torch.randn(4096, 6, generator=g) * std + mean
    q(x)
    codes = q.codebook_vectors()
    assert torch.allclose(codes.mean(0), x.mean(0), atol=1e-4)
    assert torch.allclose(codes.std(0, unbiased=False), x.std(0, unbiased=False), rtol=1e-3)
    assert torch.equal(q.codebook.detach(), raw)  # the parameters move only by the optimizer
    before = q.affine_mean.clone()
    q(x + 10.0)  # later batches move the running statistics by the momentum only
    assert torch.allclose(q.affine_mean, before + 0.1 * 10.0, atol=1e-3)
    q.eval()
    q(x + 100.0)  # evaluation never updates them
    assert torch.allclose(q.affine_mean, before + 0.1 * 10.0, atol=1e-3)


def test_sync_update_gives_the_codes_nu_times_the_output_gradient():
    from vqstudy.quantize import Quantizer

    g = torch.Generator().manual_seed(1)
    x, w = torch.randn(200, 4, generator=g), torch.randn(200, 4, generator=g)
    grads = {}
    for nu in (0.0, 0.5):
        q = Quantizer(dim=4, codebook_size=8, update="grad", sync_nu=nu, kmeans_init=False, dead_code_reset=False,
                      commitment_weight=0.0, codebook_weight=0.0).train()
        out = q(x.clone().requires_grad_(True))
        (out.quantized * w).sum().backward()
        grads[nu] = q.codebook.grad
        idx = out.indices
    assert grads[0.0] is None or torch.count_nonzero(grads[0.0]) == 0
    expected = 0.5 * torch.zeros(8, 4).index_add_(0, idx, w)
    assert torch.allclose(grads[0.5], expected, atol=1e-6)


def test_affine_and_sync_need_gradient_updates():
    from vqstudy.quantize import QuantizerConfig

    with pytest.raises(ValueError, match="update='grad'"):
        QuantizerConfig(dim=4, affine=True)
    with pytest.raises(ValueError, match="update='grad'"):
        QuantizerConfig(dim=4, sync_nu=0.2)
    with pytest.raises(ValueError, match="sync_nu"):
        QuantizerConfig(dim=4, update="grad", sync_nu=-1.0)
