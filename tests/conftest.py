import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def one_thread():
    """Run a test with one torch thread (tiny models are faster and steadier that way on a busy CPU)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def quick_demos(tmp_path_factory):
    """A tiny Meta-World demonstration set (2 tasks x 4 expert episodes, <= 120 steps) for closed-loop tests."""
    pytest.importorskip("metaworld", reason="Meta-World (pip install 'vqstudy[sim]') runs the closed-loop tests")
    from vqstudy.sim.demos import make_demonstrations

    out = tmp_path_factory.mktemp("demos") / "metaworld_quick"
    make_demonstrations(out, ["reach-v3", "drawer-close-v3"], episodes=4, seed=0, max_steps=120)
    return out
