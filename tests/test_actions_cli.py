"""`vqstudy actions train|eval|sweep` and `vqstudy export` on a tiny robomimic-layout hdf5 file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

h5py = pytest.importorskip("h5py")

from vqstudy.actions.study import SweepConfig, benefit_gone_at, compact, load_sweep_config  # noqa: E402
from vqstudy.actions.train import (  # noqa: E402
    ActionsConfig,
    ActionTrainConfig,
    ExportOptions,
    fit_tokenizer,
    load_actions_config,
    make_tokenizer,
)
from vqstudy.cli import main as vqstudy_main  # noqa: E402
from vqstudy.config import parse_overrides  # noqa: E402
from vqstudy.actions.data.trajectories import build_trajectory_datasets  # noqa: E402
from vqstudy.actions.export import ActionTokenizer  # noqa: E402

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
A = 7


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is faster and steadier


def write_demos(path: Path, lengths=(60, 48, 52), seed: int = 0) -> Path:
    """A robomimic-layout hdf5: data/demo_<i>/actions (T, 7) smooth deltas + binary gripper, obs/ee_pos."""
    rng = np.random.default_rng(seed)
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        data.attrs["env_args"] = json.dumps({"env_name": "Synthetic"})
        for i, t in enumerate(lengths):
            phase = np.linspace(0, 2 * np.pi, t)[:, None]
            pos = 0.5 * np.sin(phase + rng.uniform(0, np.pi, size=(1, 3)))  # (T, 3)
            rot = 0.1 * rng.normal(size=(t, 3))
            grip = np.where(np.arange(t) < t // 2, -1.0, 1.0)[:, None]
            g = data.create_group(f"demo_{i}")
            g["actions"] = np.concatenate([pos, rot, grip], axis=1).astype(np.float32)  # (T, 7)
            g.create_group("obs")["ee_pos"] = np.cumsum(pos, axis=0)
    return path


def overrides(h5: Path, out: Path) -> list[str]:
    return ["data.source=libero_hdf5", f"data.paths=[{h5}]", "data.val_fraction=0.34", f"out_dir={out}"]


def cli(action: str, config: Path, sets: list[str], *extra: str) -> int:
    argv = [action, "--config", str(config), *extra]
    for s in sets:
        argv += ["--set", s]
    return vqstudy_main(["actions", *argv])


# ------------------------------------------------------------------------------------------------


def test_every_actions_yaml_parses():
    files = sorted(CONFIGS.glob("actions_*.yaml"))
    assert files, f"no configs/actions_*.yaml in {CONFIGS}"
    for path in files:
        cfg = load_sweep_config(path) if path.name.startswith("actions_sweep") else load_actions_config(path)
        assert isinstance(cfg, SweepConfig if path.name.startswith("actions_sweep") else ActionsConfig), path


def test_merge_order_yaml_then_set():
    cfg = load_actions_config(CONFIGS / "actions_quick.yaml", {"train": {"steps": 3}})
    assert cfg.train.steps == 3  # --set wins over YAML
    assert cfg.train.batch_size == 32  # YAML wins over the default (256)
    assert cfg.eval.speed_quantile == 0.5  # default kept


@pytest.mark.parametrize("bad, match", [
    ({"tokenizer": "vqq"}, "tokenizer"),
    ({"tokenizer_config": {"num_tokenz": 2}}, "num_tokenz"),
    ({"tokenizer_config": {"horizon": 5}}, "horizon"),
    ({"train": {"steps": -1}}, "steps"),
    ({"export": {"id_mode": "last_n"}}, "lm_vocab_size"),
])
def test_bad_config_names_the_field(bad, match):
    with pytest.raises(ValueError, match=match):
        load_actions_config(CONFIGS / "actions_quick.yaml", bad)


def test_utilization_curve_is_logged_and_training_helps():
    g = torch.Generator().manual_seed(0)
    centres = torch.rand(4, 4, A, generator=g) * 2 - 1  # 4 planted chunk prototypes
    chunks = centres[torch.randint(4, (128,), generator=g)] + 0.01 * torch.randn(128, 4, A, generator=g)
    tok = make_tokenizer("vq", {"num_tokens": 2, "latent_dim": 8, "hidden": 32, "quantizer": {"codebook_size": 8}},
                         horizon=4, action_dim=A, seed=0)
    fit = fit_tokenizer(tok, chunks, ActionTrainConfig(steps=60, lr=3e-3, batch_size=32, log_every=20))
    assert [p.step for p in fit.curve] == [0, 20, 40, 60]
    assert fit.curve[-1].recon_mse < 0.5 * fit.curve[0].recon_mse
    assert all(0 < p.utilization <= 1 for p in fit.curve)
    assert not tok.training


def test_train_eval_reload_roundtrip(tmp_path):
    h5 = write_demos(tmp_path / "demos.hdf5")
    sets = overrides(h5, tmp_path / "runs")
    assert cli("train", CONFIGS / "actions_quick.yaml", sets) == 0
    run_dir = tmp_path / "runs" / "actions_quick"
    curve = (run_dir / "utilization.csv").read_text().splitlines()
    assert curve[0].startswith("step,") and len(curve) == 1 + 1 + 20 // 5  # header, step 0, every 5 steps

    tok = ActionTokenizer.from_pretrained(run_dir / "tokenizer")
    again = ActionTokenizer.from_pretrained(run_dir / "tokenizer")
    actions = torch.as_tensor(np.asarray(h5py.File(h5)["data/demo_0/actions"][:8])).reshape(2, 4, A)
    ids = tok.encode(actions)
    assert torch.equal(ids, again.encode(actions))
    assert torch.equal(tok.decode(ids), again.decode(ids))  # atol=0 after reload
    # the saved tokenizer is the trained one: its recon MSE on the training chunks is the curve's last value
    data = build_trajectory_datasets(load_actions_config(CONFIGS / "actions_quick.yaml", parse_overrides(sets)).data)
    chunks = data.train.all_chunks()
    recon = tok.tokenizer.decode(tok.tokenizer.encode(chunks))
    last = curve[-1].split(",")
    assert int(last[0]) == 20
    assert float(((recon - chunks) ** 2).mean()) == pytest.approx(float(last[2]), rel=1e-5)
    assert tok.order is not None  # configs/actions_quick.yaml asks for seriated ids

    assert cli("eval", CONFIGS / "actions_quick.yaml", sets) == 0
    metrics = json.loads((run_dir / "eval.json").read_text())
    assert len(metrics["mse"]) == A and metrics["bits_nominal"] == pytest.approx(2 * 4.0)
    assert 0 <= metrics["bits_effective"] <= metrics["bits_nominal"] + 1e-6
    assert metrics["val_episodes"] == 1  # episode split: round(3 x 0.34) = 1 held-out demo


def test_export_last_n_ids_in_range_and_refuses_others(tmp_path):
    h5 = write_demos(tmp_path / "demos.hdf5")
    assert cli("train", CONFIGS / "actions_quick.yaml", overrides(h5, tmp_path / "runs") + ["train.steps=5"]) == 0
    src = tmp_path / "runs" / "actions_quick" / "tokenizer"
    out = tmp_path / "exported"
    vocab = 32000
    assert vqstudy_main(["export", "--checkpoint", str(src), "--out", str(out), "--id-mode", "last_n",
                         "--lm-vocab-size", str(vocab)]) == 0
    tok, base = ActionTokenizer.from_pretrained(out), ActionTokenizer.from_pretrained(src)
    k = tok.vocab_size
    actions = torch.randn(16, 4, A).clamp(-1, 1)
    ids = tok.encode(actions)
    assert ids.min() >= vocab - k and ids.max() < vocab
    assert torch.equal(tok.decode(ids), base.decode(base.encode(actions)))  # same tokenizer, other id mapping
    assert torch.equal(tok.order, base.order)  # --order keep
    with pytest.raises(ValueError, match=r"not action tokens"):
        tok.decode(torch.full((1, tok.num_tokens), vocab - k - 1))
    with pytest.raises(ValueError, match=r"not action tokens"):
        tok.decode(torch.full((1, tok.num_tokens), vocab))


def test_cli_reports_bad_input_without_traceback(tmp_path, capsys):
    assert vqstudy_main(["actions", "train", "--config", str(CONFIGS / "actions_quick.yaml"), "--set", "tokenizer=vqq"]) == 2
    assert "vqstudy actions: error:" in capsys.readouterr().err
    assert vqstudy_main(["export", "--checkpoint", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    assert "tokenizer_config.json" in capsys.readouterr().err


def test_export_options_validate():
    with pytest.raises(ValueError, match="order"):
        ExportOptions(order="sorted")
    with pytest.raises(ValueError, match="token_offset"):
        ExportOptions(token_offset=-1)


def test_benefit_gone_at():
    ordered = {"shuffled": {"mse": [0, 1.0, 1.0, 1.0]}, "seriated_latent": {"mse": [0, 0.1, 0.5, 0.95]}}
    assert benefit_gone_at(ordered, "seriated_latent") == 3
    ordered["seriated_latent"]["mse"][3] = 0.2
    assert benefit_gone_at(ordered, "seriated_latent") is None


def test_compact_keeps_pair_distances():
    v = torch.randn(12, 40, dtype=torch.float64)
    c = compact(v)
    assert c.shape == (12, 12)
    torch.testing.assert_close(torch.cdist(c, c), torch.cdist(v, v), atol=1e-9, rtol=0)


@pytest.mark.slow
def test_tiny_sweep_writes_md_json_and_plots(tmp_path):
    h5 = write_demos(tmp_path / "demos.hdf5", lengths=(40, 36, 44))
    out = tmp_path / "sweep"
    config = tmp_path / "sweep.yaml"
    config.write_text(
        "base:\n"
        f"  data: {{source: libero_hdf5, paths: [{h5}], horizon: 4, val_fraction: 0.34}}\n"
        "  train: {steps: 4, batch_size: 16, log_every: 2}\n"
        "seeds: [0, 1]\ncodebook_sizes: [8]\nvq: {num_tokens: 2, latent_dim: 4, hidden: 16}\n"
        "hierarchical_sizes: [8]\nhvq: {coarse_tokens: 1, fine_tokens: 1, latent_dim: 4, hidden: 16}\n"
        "baselines: {bins16: {kind: bins, config: {num_bins: 16}}}\nr_max: 3\n"
    )
    assert cli("sweep", config, [f"out_dir={out}"]) == 0
    study = json.loads((out / "actions_study.json").read_text())
    md = (out / "actions_study.md").read_text()
    assert [a["run"] for a in study["aggregate"]] == ["vq_K8", "hvq_K8", "bins16"]
    assert len(study["records"]) == 3 * 2 and all(a["seeds"] == 2 for a in study["aggregate"])
    assert "Command: `vqstudy actions sweep" in md and "Machine:" in md and "| vq_K8 |" in md
    for name in ("rate_vs_error.png", "utilization_curves.png", "ordered_ids.png"):
        assert (out / name).stat().st_size > 1000
    vq = next(a for a in study["aggregate"] if a["run"] == "vq_K8")
    assert vq["bits_nominal"] == pytest.approx(2 * 3.0) and vq["bits_effective"] <= vq["bits_nominal"] + 1e-6
    bins = next(a for a in study["aggregate"] if a["run"] == "bins16")
    # uniform bins: ids ordered by construction, a random permutation is not
    assert bins["ordered"]["native"]["rank_corr"] > 0.99 > bins["ordered"]["shuffled"]["rank_corr"]
    assert bins["mse_mean_std"] == 0.0  # no training: identical over seeds
