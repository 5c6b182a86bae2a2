"""The README's Python snippets run as written (the ones a user pastes first)."""

import re
from pathlib import Path

import pytest
import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_the_quantizer_and_vla_head_snippets():
    blocks = python_blocks()
    assert any("Quantizer(" in b for b in blocks)
    assert any("ActionTokenizer.from_pretrained" in b for b in blocks)


@pytest.mark.usefixtures("one_thread")
def test_quantizer_snippet_runs_as_written():
    (block,) = [b for b in python_blocks() if "Quantizer(" in b]
    exec(compile(block, "README.md", "exec"), {})


@pytest.mark.usefixtures("one_thread")
def test_vla_head_snippet_runs_as_written(tmp_path, monkeypatch):
    """The snippet loads what `vqstudy export ... --id-mode last_n --lm-vocab-size 32000` writes; a tokenizer
    of the same shape as configs/actions_vq.yaml (untrained) stands in for the trained one."""
    from vqstudy import ActionTokenizer
    from vqstudy.actions.registry import build_tokenizer
    from vqstudy.config import read_yaml

    cfg = read_yaml(Path(__file__).resolve().parents[1] / "configs" / "actions_vq.yaml", "ActionsConfig")
    tok = build_tokenizer("vq", {**cfg["tokenizer_config"], "horizon": cfg["data"]["horizon"], "action_dim": 7})
    monkeypatch.chdir(tmp_path)
    ActionTokenizer(tok, id_mode="last_n", lm_vocab_size=32000).save_pretrained("runs/actions/actions_vq_lm")
    (block,) = [b for b in python_blocks() if "ActionTokenizer.from_pretrained" in b]
    scope: dict = {}
    exec(compile(block, "README.md", "exec"), scope)
    assert scope["pred_actions"].shape == (2, 8, 7)
    assert torch.all(scope["target_ids"] >= 32000 - 256)
