"""The Meta-World tokenizer study: configs parse, phases come from the measured hand speed, the phase-split
source tokenizes only its phase, and the quick config runs the study's own code end to end."""

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

pytest.importorskip("metaworld", reason="Meta-World is the optional extra: pip install 'vqstudy[sim]'")

from vqstudy.sim.tokenizer_study import (  # noqa: E402
    REFERENCE,
    PhaseTokenizedSource,
    TokenizerStudyConfig,
    load_study_config,
    obs_hand_speed,
    paired_difference,
    run_study,
    study_jobs,
    write_report,
)

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_every_metaworld_tokenizers_yaml_parses():
    files = sorted(CONFIGS.glob("metaworld_tokenizers*.yaml"))
    assert len(files) >= 2
    for path in files:
        cfg = load_study_config(path)
        jobs = study_jobs(cfg)
        assert any(j.name == REFERENCE for j in jobs) and any(j.name != REFERENCE for j in jobs)


def test_main_config_covers_the_issue():
    cfg = load_study_config(CONFIGS / "metaworld_tokenizers.yaml")
    kinds = {s.kind for s in cfg.tokenizers.values()}
    assert kinds >= {"vq", "hvq", "bins", "fsq", "rvq", "fast"}
    ks = sorted(s.fields["quantizer"]["codebook_size"] for s in cfg.tokenizers.values()
                if s.kind == "vq" and s.horizon == 8)
    assert ks[0] == 16 and ks[-1] == 4096
    assert {s.horizon for s in cfg.tokenizers.values()} >= {8, 16} and len(cfg.seeds) == 3
    assert any(s.phase_split for s in cfg.tokenizers.values())


@pytest.mark.parametrize("override, match", [
    ({"n": 0}, r"n \(0\)"),
    ({"seeds": []}, "seeds"),
    ({"tokenizers": {"x": {"family": "x", "kind": "nope"}}}, r"kind \('nope'\)"),
    ({"tokenizers": {"x": {"family": "vq", "kind": "vq", "fields": {"num_tokens": 0}}}}, r"num_tokens \(0\)"),
])
def test_bad_study_configs_name_field_and_value(override, match):
    base = {"tokenizers": {"bins": {"family": "bins", "kind": "bins"}}}
    with pytest.raises(ValueError, match=match):
        TokenizerStudyConfig(**{**base, **override})


def test_hand_speed_from_the_observation_uses_current_and_previous_hand_position():
    obs = np.zeros((2, 39))
    obs[0, 0:3] = [0.3, 0.4, 0.0]  # moved 0.5 since the previous step
    obs[1, 0:3] = obs[1, 18:21] = [1.0, 2.0, 3.0]  # still
    np.testing.assert_allclose(obs_hand_speed(obs, dt=0.5), [1.0, 0.0])


class _Inner:
    horizon, name = 2, "inner"

    def __call__(self, batch):
        return np.ones((len(batch.obs), 2, 4), dtype=np.float32)


class _Zeroing:
    """A 'tokenizer' that decodes everything to zeros."""

    horizon, action_dim = 2, 4

    def encode(self, x):
        return torch.zeros(len(x), 1, dtype=torch.int64)

    def decode(self, ids):
        return torch.zeros(len(ids), 2, 4)


@pytest.mark.parametrize("phase, tokenized_rows", [("coarse", [0]), ("fine", [1, 2])])
def test_phase_source_tokenizes_only_its_phase(phase, tokenized_rows):
    obs = np.zeros((3, 39))
    obs[0, 0] = 1.0  # fast (speed 1 / 0.1 = 10 m/s), rows 1, 2 still
    batch = SimpleNamespace(obs=obs, envs=[SimpleNamespace(dt=0.1)] * 3)
    source = PhaseTokenizedSource(_Inner(), _Zeroing(), threshold=1.0, tokenize=phase)
    out = source(batch)
    zeroed = [b for b in range(3) if (out[b] == 0).all()]
    assert zeroed == tokenized_rows
    assert source.stats()["tokenized_fraction"] == pytest.approx(len(tokenized_rows) / 3)
    assert source.stats()["chunk_mse"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="tokenize"):
        PhaseTokenizedSource(_Inner(), _Zeroing(), threshold=1.0, tokenize="both")


def test_paired_difference_and_its_interval():
    mean, low, high = paired_difference([1, 1, 1, 1], [1, 0, 1, 0])
    assert mean == pytest.approx(0.5) and 0.0 <= low <= mean <= high <= 1.0
    assert paired_difference([1, 0], [1, 0]) == (0.0, 0.0, 0.0)


def test_quick_config_runs_the_study_end_to_end(tmp_path):
    from vqstudy.sim.demos import make_demonstrations

    demos = tmp_path / "demos"
    make_demonstrations(demos, ["reach-v3"], episodes=4, seed=0, max_steps=100)
    cfg = load_study_config(CONFIGS / "metaworld_tokenizers_quick.yaml", {
        "data": str(demos), "tasks": ["reach-v3"], "work_dir": str(tmp_path / "work"), "val_fraction": 0.25})
    results = run_study(cfg)
    keys = {r["key"] for r in results}
    assert keys == {"expert_chunks_h8_s0", "vq_k16_s0", "bins256_s0", "fast_s0"}
    by_key = {r["key"]: r for r in results}
    assert set(by_key["vq_k16_s0"]["phase_only"]) == {"coarse", "fine"}
    assert by_key["fast_s0"]["held_out"]["tokens_per_chunk"] < 32
    assert by_key["bins256_s0"]["held_out"]["mse"] < by_key["vq_k16_s0"]["held_out"]["mse"]  # 256 bits vs 8
    assert 0.5 < by_key["vq_k16_s0"]["phase_agreement"] <= 1.0
    paths = write_report(cfg, results, tmp_path / "report", header="# quick")
    assert all(p.exists() for p in paths)
    report = json.loads((tmp_path / "report" / "study.json").read_text())
    assert {s["name"] for s in report["summary"]} == {"expert_chunks", "vq_k16", "bins256", "fast"}
    assert "Coarse / fine" in (tmp_path / "report" / "study.md").read_text()
    # a rerun finds every job done and only reads them back
    assert run_study(cfg) == results
