"""Every YAML in configs/ is parsed by the loader of its command, so a config that drifts from the code fails.

A new YAML needs an entry in LOADERS (by file-name prefix, longest first): an unknown prefix fails too."""

from pathlib import Path

import pytest

from vqstudy.actions.study import load_sweep_config
from vqstudy.actions.train import load_actions_config
from vqstudy.images.pair import load_pair_config
from vqstudy.policy.config import load_bottleneck_config
from vqstudy.policy.grid import load_grid_config
from vqstudy.policy.learn import load_policy_config
from vqstudy.policy.specvla import load_specvla_config
from vqstudy.sim.tokenizer_study import load_study_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
LOADERS = {
    "actions_sweep": load_sweep_config,
    "actions_": load_actions_config,
    "bottleneck_": load_bottleneck_config,
    "metaworld_tokenizers": load_study_config,
    "pair_": load_pair_config,
    "policy_grid": load_grid_config,
    "policy_train": load_policy_config,
    "specvla": load_specvla_config,
}


def loader_for(path: Path):
    for prefix in sorted(LOADERS, key=len, reverse=True):
        if path.name.startswith(prefix):
            return LOADERS[prefix]
    raise AssertionError(f"{path.name}: no loader registered in tests/test_configs.py LOADERS")


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_config_parses_with_its_loader(path):
    cfg = loader_for(path)(path)
    assert cfg is not None


def test_a_drifted_field_fails(tmp_path):
    bad = tmp_path / "pair_bad.yaml"
    bad.write_text("train: {max_stepz: 3}\n")
    with pytest.raises(ValueError, match="max_stepz"):
        loader_for(bad)(bad)
