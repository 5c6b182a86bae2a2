"""Lightning training: exact resume, NaN stop with the last good checkpoint kept, pair outputs, configs."""

import csv
import json
from pathlib import Path

import pytest
import torch

from vqstudy.quantize import QuantizerConfig
from vqstudy.images.data.module import ImageDataConfig, ImageDataModule
from vqstudy.images.models import VQVAE, VQVAEConfig
from vqstudy.images.train import NonFiniteLossError, TrainConfig, fit_model

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def tiny_model() -> VQVAE:
    torch.manual_seed(0)
    q = QuantizerConfig(codebook_size=16, codebook_dim=4, kmeans_samples=32, reset_every=2)
    return VQVAE(VQVAEConfig(channels=8, n_res_blocks=1, downsample=4, latent_dim=8, quantizer=q))


def tiny_data() -> ImageDataModule:
    # 3 steps per epoch: checkpoints at step 3 fall on an epoch boundary
    return ImageDataModule(ImageDataConfig(crop_size=16, batch_size=4, samples_per_epoch=12, max_val_images=None))


def tiny_train(**kwargs) -> TrainConfig:
    base = dict(max_steps=6, checkpoint_every=3, val_every=3, curve_every=2, lpips=False, rfid=False,
                progress_bar=False, accelerator="cpu", lr=1e-3)
    base.update(kwargs)
    return TrainConfig(**base)


def losses(log_dir: Path) -> dict[int, float]:
    with open(log_dir / "metrics.csv") as f:
        return {int(r["step"]): float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")}


@pytest.mark.slow
def test_resume_after_interruption_gives_the_same_losses(tmp_path):
    full = fit_model(tiny_model(), tiny_data(), tiny_train(), tmp_path / "a", "m")
    fit_model(tiny_model(), tiny_data(), tiny_train(max_steps=3), tmp_path / "b", "m")
    ckpt = tmp_path / "b" / "m" / "checkpoints" / "last.ckpt"
    assert ckpt.exists()
    resumed = fit_model(tiny_model(), tiny_data(), tiny_train(), tmp_path / "b", "m", resume_from=ckpt)
    a, b = losses(full.log_dir), losses(resumed.log_dir)
    later = [s for s in a if s >= 3]
    assert later and all(s in b for s in later)
    for step in later:
        assert a[step] == pytest.approx(b[step], rel=1e-6, abs=1e-7), step
    state_a = full.module.model.state_dict()
    state_b = resumed.module.model.state_dict()
    for key in state_a:
        torch.testing.assert_close(state_a[key], state_b[key], rtol=1e-6, atol=1e-7, msg=key)


@pytest.mark.slow
def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    model = tiny_model()
    forward = model.forward
    calls = {"n": 0}

    def poisoned(images):
        calls["n"] += 1
        out = forward(images)
        if calls["n"] == 5:  # the 5th training batch (step index 4)
            return out._replace(recon=out.recon * float("nan"))
        return out

    model.forward = poisoned
    with pytest.raises(NonFiniteLossError, match="at step 4"):
        fit_model(model, tiny_data(), tiny_train(val_every=100), tmp_path, "m")
    ckpt = torch.load(tmp_path / "m" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 3
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())


def test_train_config_errors_name_the_field():
    with pytest.raises(ValueError, match=r"TrainConfig.max_steps \(0\)"):
        TrainConfig(max_steps=0)
    with pytest.raises(ValueError, match=r"rfid_min_images \(1\)"):
        TrainConfig(rfid_min_images=1)


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("pair_*.yaml")), ids=lambda p: p.name)
def test_every_pair_config_parses(path):
    from vqstudy.images.pair import load_pair_config, single_config

    cfg = load_pair_config(path)
    single, match = single_config(cfg)
    assert abs(match.relative_gap) <= 0.005
    assert single.quantizer.codebook_size == match.single_config.quantizer.codebook_size


def test_pair_config_errors_name_field_and_value(tmp_path):
    from vqstudy.images.pair import load_pair_config

    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {max_steps: 10, learning_rate: 0.1}\n")
    with pytest.raises(ValueError, match="learning_rate"):
        load_pair_config(bad)
    with pytest.raises(ValueError, match=r"codebook_size \(1\)"):
        load_pair_config(None, {"hierarchical": {"top": {"codebook_size": 1}}})


@pytest.mark.slow
def test_pair_run_writes_matched_results(tmp_path):
    from vqstudy.images.pair import load_pair_config, run_pair
    from vqstudy.images.plots import plot_run

    overrides = {
        "name": "tiny",
        "out_dir": str(tmp_path),
        "ckpt_dir": str(tmp_path / "ckpt"),
        "hierarchical": {"channels": 8, "n_res_blocks": 1, "bottom_latent_dim": 8, "top_latent_dim": 8,
                         "top": {"codebook_size": 16, "kmeans_samples": 32},
                         "bottom": {"codebook_size": 16, "kmeans_samples": 32}},
        "data": {"crop_size": 32, "batch_size": 4, "samples_per_epoch": 16},
        "train": {"max_steps": 4, "val_every": 4, "curve_every": 2, "lpips": False, "rfid": False,
                  "progress_bar": False, "accelerator": "cpu"},
    }
    results = run_pair(load_pair_config(None, overrides))
    run = tmp_path / "tiny"
    saved = json.loads((run / "metrics.json").read_text())
    assert saved["capacity"]["hier_bits"] == 4 * 4 * 4 + 8 * 8 * 4  # 32 px: 4x4 top, 8x8 bottom, K=16
    assert saved["capacity"]["single_codebook_size"] == 32  # 8x8 grid x 5 bits
    assert abs(saved["capacity"]["single_bits"] - saved["capacity"]["hier_bits"]) <= 0.005 * saved["capacity"]["hier_bits"]
    for which, levels in (("hierarchical", {"top", "bottom"}), ("single", {"code"})):
        val = results["models"][which]["val"]
        assert set(results["models"][which]["levels"]) == levels
        for level in levels:
            assert 0 < val[f"val/{level}/utilization"] <= 1
        assert val["val/psnr"] > 5  # a real reconstruction of [0, 1] images, not noise
    with open(run / "curves.csv") as f:
        keys = {(r["model"], r["key"]) for r in csv.DictReader(f)}
    assert ("hierarchical", "train/top/utilization") in keys and ("single", "train/code/utilization") in keys
    for name in ("utilization.png", "usage_hist.png", "recon_grid.png", "summary.md"):
        assert (run / name).stat().st_size > 0
    assert (tmp_path / "ckpt" / "tiny" / "single").is_dir() and not (run / "single" / "checkpoints").exists()
    (run / "utilization.png").unlink()
    assert run / "utilization.png" in plot_run(run)
