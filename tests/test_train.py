"""Lightning training: exact resume, NaN stop with the last good checkpoint kept, pair outputs, configs."""

import csv
import json
from pathlib import Path

import pytest
import torch

from vqstudy.quantize import QuantizerConfig
from vqstudy.images.data.module import ImageDataConfig, ImageDataModule
from vqstudy.images import VQVAE, VQVAEConfig
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


# ------------------------------------------------------------------------------------ issue 8 (image side)
def test_single_twin_inherits_the_bottom_quantizer_except_what_is_set():
    """Issue 8.2: with single_quantizer given, the twin used to start from QuantizerConfig defaults."""
    import dataclasses

    from vqstudy.config import parse_overrides
    from vqstudy.images.pair import load_pair_config, single_config

    cfg = load_pair_config(CONFIGS / "pair_default.yaml", parse_overrides(
        ["hierarchical.bottom.decay=0.9", "hierarchical.bottom.reset_every=7", "hierarchical.bottom.seed=5",
         "single_quantizer.codebook_dim=16"]))
    single, match = single_config(cfg)
    q, bottom = single.quantizer, cfg.hierarchical.bottom
    assert (q.decay, q.reset_every, q.seed, q.codebook_dim) == (0.9, 7, 5, 16)
    assert q == dataclasses.replace(bottom, codebook_size=match.single_config.quantizer.codebook_size, codebook_dim=16)
    plain = single_config(load_pair_config(None, {"hierarchical": {"bottom": {"decay": 0.8}}}))[0].quantizer
    assert plain.decay == 0.8  # no single_quantizer: the bottom level's settings, codebook_size matched
    with pytest.raises(ValueError, match=r"single_quantizer: unknown or matched field\(s\) \['codebook_size'\]"):
        load_pair_config(None, {"single_quantizer": {"codebook_size": 8}})
    with pytest.raises(ValueError, match=r"decay \(2.0\)"):
        load_pair_config(None, {"single_quantizer": {"decay": 2.0}})


def test_study_seed_varies_training_data_and_every_quantizer_seed():
    """Issue 8.6: a study seed used to vary train.seed only."""
    from vqstudy.images.pair import single_config
    from vqstudy.images.study import VARIANTS, study_run_config

    for variant in VARIANTS.values():
        a, b = (study_run_config(CONFIGS / "pair_study.yaml", variant, s, "v", "/tmp/unused") for s in (1, 2))
        for cfg, seed in ((a, 1), (b, 2)):
            assert cfg.train.seed == cfg.data.seed == seed
            assert cfg.hierarchical.top.seed == cfg.hierarchical.bottom.seed == seed
            assert single_config(cfg)[0].quantizer.seed == seed
        assert a.name != b.name


def _tiny_parquet(root: Path) -> Path:
    import io

    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    rng = np.random.default_rng(0)
    (root / "data").mkdir(parents=True)
    for split, n in (("train", 6), ("validation", 3)):
        rows = []
        for i in range(n):
            buf = io.BytesIO()
            Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(buf, format="PNG")
            rows.append({"bytes": buf.getvalue(), "path": f"{i}.png"})
        pq.write_table(pa.table({"image": rows, "label": list(range(n))}), root / "data" / f"{split}-00000-of-00001.parquet")
    return root


def _tiny_pair_overrides(tmp_path: Path, **data) -> dict:
    return {
        "name": "tiny", "out_dir": str(tmp_path / "out"), "ckpt_dir": str(tmp_path / "ckpt"),
        "hierarchical": {"channels": 8, "n_res_blocks": 1, "bottom_latent_dim": 8, "top_latent_dim": 8,
                         "top": {"codebook_size": 16, "kmeans_samples": 32},
                         "bottom": {"codebook_size": 16, "kmeans_samples": 32}},
        "data": {"crop_size": 32, "batch_size": 2, "samples_per_epoch": 8, **data},
        "train": {"max_steps": 3, "val_every": 5, "curve_every": 2, "lpips": False, "rfid": False,
                  "progress_bar": False, "accelerator": "cpu"},
    }


@pytest.mark.slow
def test_pair_on_streamed_parquet_with_fewer_steps_than_val_every_writes_everything(tmp_path, monkeypatch):
    """Issue 8.7: the final validation (inference mode) left `datasets`' epoch tensor an inference tensor,
    and the next pass over the stream failed in reporting, after training, writing nothing."""
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "SLEEP_TIME_ON_THREADS_SHUTDOWN", 0)
    from vqstudy.images.pair import load_pair_config, run_pair

    root = _tiny_parquet(tmp_path / "pq")
    run_pair(load_pair_config(None, _tiny_pair_overrides(tmp_path, source="parquet", root=str(root), streaming=True)))
    run = tmp_path / "out" / "tiny"
    for name in ("metrics.json", "summary.md", "curves.csv", "recon_samples.safetensors", "recon_grid.png",
                 "single/model.safetensors", "hierarchical/model.safetensors", "single/per_image.csv"):
        assert (run / name).stat().st_size > 0, name


@pytest.mark.slow
def test_a_failure_in_reporting_keeps_weights_metrics_and_summary(tmp_path, monkeypatch, caplog):
    import vqstudy.images.plots as plots
    from vqstudy.images.pair import load_pair_config, run_pair

    def broken(*args, **kwargs):
        raise RuntimeError("plotting broke")

    monkeypatch.setattr(plots, "plot_run", broken)
    overrides = _tiny_pair_overrides(tmp_path)
    overrides["models"] = ["single"]
    with pytest.raises(RuntimeError, match="plotting broke"):
        run_pair(load_pair_config(None, overrides))
    run = tmp_path / "out" / "tiny"
    saved = json.loads((run / "metrics.json").read_text())
    assert saved["models"]["single"]["val"]["val/psnr"] > 0
    assert (run / "summary.md").read_text().startswith("# Pair run")
    assert (run / "single" / "model.safetensors").is_file()
    assert "reporting failed" in caplog.text


def test_default_pair_writes_under_runs_and_the_reference_script_under_results():
    """Issue 8.8: `vqstudy pair --config configs/pair_default.yaml` writes runs/default_pair/, never results/."""
    from vqstudy.cli import build_parser
    from vqstudy.config import parse_overrides
    from vqstudy.images.pair import load_pair_config

    args = build_parser().parse_args(["pair", "--config", str(CONFIGS / "pair_default.yaml")])
    assert args.out is None
    cfg = load_pair_config(args.config, parse_overrides(args.set))
    assert Path(cfg.out_dir) / cfg.name == Path("runs") / "default_pair"
    assert Path(cfg.ckpt_dir).parts[0] == "runs"
    script = (CONFIGS.parent / "scripts" / "regenerate_default_pair.py").read_text()
    assert "--out" in script and '"results"' in script and "configs/pair_default.yaml" in script


def test_progress_bar_counts_steps_not_negative_epochs():
    from vqstudy.images.train import step_description, step_progress_bar

    text = step_description(7, 1200, 2000)
    assert text == "Epoch 7 (step 1200 of 2000)" and "/-" not in text
    bar = step_progress_bar()

    class FakeTrainer:
        global_step, max_steps, max_epochs = 40, 100, -1

    bar._trainer = FakeTrainer()
    assert bar._get_train_description(3) == "Epoch 3 (step 40 of 100)"


def test_training_usage_metrics_use_the_quantizers_dead_code_threshold():
    from vqstudy.images.train import VQLitModule

    q = QuantizerConfig(codebook_size=16, codebook_dim=4, dead_code_threshold=0.5)
    model = VQVAE(VQVAEConfig(channels=8, n_res_blocks=1, downsample=4, latent_dim=8, quantizer=q))
    module = VQLitModule(model, tiny_train())
    assert module.train_usage["code"].dead_threshold == module.val_usage["code"].dead_threshold == 0.5
    module.val_usage["code"].update(torch.tensor([0] * 9 + [1]))  # code 1: share 0.1 < 0.5 / 16? no: 0.1 > 0.031
    stats = module.val_usage["code"].compute()
    assert float(stats["dead_fraction"]) == pytest.approx(14 / 16)  # 14 unused codes; both used ones are alive
    module.val_usage["code"].reset()
    module.val_usage["code"].update(torch.tensor([0] * 99 + [1]))  # code 1: share 0.01 < 0.5 / 16 = 0.031 -> dead
    assert float(module.val_usage["code"].compute()["dead_fraction"]) == pytest.approx(15 / 16)


def test_study_figures_without_data_have_no_legend_warning(tmp_path):
    import warnings

    from vqstudy.images.plots import plot_learning_curves

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plot_learning_curves([], tmp_path / "empty.png")
    assert (tmp_path / "empty.png").stat().st_size > 0


@pytest.mark.slow
def test_eval_reloads_a_pair_and_evaluates_it_on_an_image_folder(tmp_path, monkeypatch):
    import numpy as np
    from PIL import Image

    from vqstudy.cli import main
    from vqstudy.images.evaluate import read_per_image
    from vqstudy.images.pair import eval_output_dir, load_eval_config, load_pair_config, run_pair

    trained = run_pair(load_pair_config(None, _tiny_pair_overrides(tmp_path)))
    run = tmp_path / "out" / "tiny"
    rng = np.random.default_rng(1)
    for split, n in (("train", 2), ("val", 3)):
        folder = tmp_path / "folder" / split / "c"
        folder.mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    args = ["eval", str(run), "--set", "data.source=imagefolder", "--set", f"data.root={tmp_path / 'folder'}",
            "--out", str(tmp_path / "evals")]
    assert main(args) == 0
    out = tmp_path / "evals" / "tiny_on_imagefolder_folder"
    saved = json.loads((out / "metrics.json").read_text())
    for which in ("hierarchical", "single"):
        rows = read_per_image(out / which / "per_image.csv")
        assert len(rows) == 3 and all(r["psnr"] > 0 for r in rows)
        assert saved["models"][which]["val"]["val/num_images"] == 3
        assert saved["models"][which]["bits_per_image"] == trained["models"][which]["bits_per_image"]
    assert "val/top/psnr_drop_if_mean" in saved["models"]["hierarchical"]["val"]
    for name in ("summary.md", "recon_grid.png", "usage_hist.png"):
        assert (out / name).stat().st_size > 0
    # the evaluation of the training data reproduces the numbers the pair run recorded, from the reloaded weights
    again = main(["eval", str(run), "--out", str(tmp_path / "evals2")])
    assert again == 0
    same = json.loads((tmp_path / "evals2" / "tiny_on_embedded" / "metrics.json").read_text())
    for which in ("hierarchical", "single"):
        assert same["models"][which]["val"]["val/psnr"] == pytest.approx(trained["models"][which]["eval"]["val/psnr"], abs=1e-6)
    committed = tmp_path / "results" / "x"
    committed.mkdir(parents=True)
    with pytest.raises(ValueError, match="must not be inside the committed run"):
        eval_output_dir(committed, committed, load_eval_config(run))


def test_photo_folds_validate_every_photo_exactly_once():
    from vqstudy.images.data.embedded import EMBEDDED_IMAGES
    from vqstudy.images.study import StudyPlan, photo_folds

    folds = photo_folds(5)
    assert sorted(n for f in folds for n in f) == sorted(EMBEDDED_IMAGES) and all(len(f) == 4 for f in folds)
    plan = StudyPlan(base_config=str(CONFIGS / "pair_study.yaml"), variants=("full", "single_f2"))
    runs = plan.runs()
    assert len(runs) == 10
    for name, seed, cfg in runs:
        assert cfg.data.val_images == folds[seed] and cfg.train.seed == seed == cfg.data.seed
    with pytest.raises(ValueError, match="unknown"):
        StudyPlan(variants=("nope",))


@pytest.mark.slow
def test_quick_study_writes_tables_comparisons_and_figures(tmp_path):
    """The image study end to end on configs/pair_study_quick.yaml (one seed, one variant, both models)."""
    from vqstudy.images.study import StudyPlan, run_study

    plan = StudyPlan(base_config=str(CONFIGS / "pair_study_quick.yaml"), out_dir=str(tmp_path / "out"),
                     runs_dir=str(tmp_path / "runs"), seeds=(0,), variants=("full",))
    study = run_study(plan, command="test")
    out = tmp_path / "out"
    for name in ("study.md", "study.json", "per_image.csv", "comparisons.csv", "runs.csv", "learning_curves.png",
                 "recon_grid.png", "runs/full_s0/metrics.json", "classical_per_image.csv"):
        assert (out / name).stat().st_size > 0, name
    table = {(r["variant"], r["model"]): r for r in study["table"]}
    assert set(table) == {("full", "hierarchical"), ("full", "single"), ("jpeg", "jpeg"), ("webp", "webp")}
    assert table[("full", "hierarchical")]["bits_per_image"] == 1280 == study["budget_bits"]
    assert 0 <= table[("full", "hierarchical")]["top_unused_share"] <= 1
    assert table[("jpeg", "jpeg")]["fits_share"] > 0.5
    comps = {(c["A"], c["B"]): c for c in study["comparisons"]}
    c = comps[("full/single", "full/hierarchical")]
    assert c["psnr_low"] <= c["psnr_diff"] <= c["psnr_high"] and c["photos"] == 4
    assert (tmp_path / "runs" / "full_s0" / "single" / "model.safetensors").is_file()
    assert not (out / "runs" / "full_s0" / "single" / "model.safetensors").exists()  # weights stay out of results
