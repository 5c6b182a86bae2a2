"""Image data: embedded default, ImageFolder and parquet layouts, robustness, config, DataModule."""

import ast
import dataclasses
import inspect
import io
import logging
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vqstudy.images.data.module import ImageDataConfig, ImageDataModule, build_datasets
from vqstudy.images.data.common import BadImageError, EpochSampler
from vqstudy.images.data.embedded import (
    EMBEDDED_IMAGES,
    RandomCropDataset,
    TiledCropDataset,
    load_embedded_image,
    split_embedded,
    tile_origins,
)
from vqstudy.images.data.files import ImageFolderCrops, ParquetCrops, ParquetStream

GRAY = {"camera", "moon", "page", "coins", "text", "brick", "grass", "gravel", "clock", "cell"}


def _rand_rgb(seed: int, h: int = 40, w: int = 40) -> np.ndarray:
    """A smooth random colour image (so JPEG keeps it close), uint8 (h, w, 3)."""
    coarse = np.random.default_rng(seed).integers(0, 256, (5, 5, 3), dtype=np.uint8)
    return np.array(Image.fromarray(coarse).resize((w, h), Image.BILINEAR))


def _png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def _jpeg_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=95)
    return buf.getvalue()


def _gray_img() -> Image.Image:
    return Image.fromarray(np.random.default_rng(7).integers(0, 256, (40, 40), dtype=np.uint8), "L")


def _rgba_img() -> Image.Image:
    arr = np.zeros((40, 40, 4), np.uint8)
    arr[..., 0] = 200  # red, but fully transparent -> white
    return Image.fromarray(arr, "RGBA")


GOOD_TRAIN = {  # file name -> encoded bytes (40x40 each)
    "a/img0.JPEG": _jpeg_bytes(_rand_rgb(0)),
    "a/img1.JPEG": _jpeg_bytes(_rand_rgb(1)),
    "b/gray.png": _png_bytes(_gray_img()),
    "b/rgba.png": _png_bytes(_rgba_img()),
}
CORRUPT = b"this is not an image at all" * 10
TRUNCATED = _jpeg_bytes(_rand_rgb(3))[:300]
SMALL = _jpeg_bytes(_rand_rgb(4, 20, 24))
GOOD_VAL = {"a/v0.JPEG": _jpeg_bytes(_rand_rgb(10)), "b/v1.png": _png_bytes(Image.fromarray(_rand_rgb(11)))}


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """root/train/<class>/ with good, corrupt, truncated and small images; root/val/<class>/ all good."""
    root = tmp_path_factory.mktemp("imagefolder")
    files = {**{f"train/{k}": v for k, v in GOOD_TRAIN.items()}, **{f"val/{k}": v for k, v in GOOD_VAL.items()}}
    files |= {"train/b/corrupt.JPEG": CORRUPT, "train/b/truncated.JPEG": TRUNCATED, "train/a/small.JPEG": SMALL}
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


@pytest.fixture(scope="module")
def parquet_root(tmp_path_factory) -> Path:
    """HF imagenet-1k layout: root/data/{train,validation}-00000-of-00001.parquet."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = tmp_path_factory.mktemp("parquet")
    (root / "data").mkdir()
    train = {**GOOD_TRAIN, "b/corrupt.JPEG": CORRUPT, "b/truncated.JPEG": TRUNCATED}
    for split, files in (("train", train), ("validation", GOOD_VAL)):
        rows = [{"bytes": data, "path": name} for name, data in files.items()]
        table = pa.table({"image": rows, "label": list(range(len(rows)))})
        pq.write_table(table, root / "data" / f"{split}-00000-of-00001.parquet")
    return root


@pytest.fixture
def no_stream_sleep(monkeypatch):
    """datasets 5.x sleeps 5 s after each shuffled streaming pass (an Arrow workaround); not in tests."""
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "SLEEP_TIME_ON_THREADS_SHUTDOWN", 0)


def _file_cfg(**kw) -> dict:
    return dict(crop_size=32, batch_size=2, seed=0) | kw


# ----------------------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    "kw, field, value",
    [
        (dict(source="lmdb"), "source", "lmdb"),
        (dict(source="imagefolder"), "root", "None"),
        (dict(crop_size=0), "crop_size", "(0)"),
        (dict(samples_per_epoch=-5), "samples_per_epoch", "-5"),
        (dict(batch_size=0), "batch_size", "(0)"),
        (dict(num_workers=-1), "num_workers", "-1"),
        (dict(seed=-1), "seed", "-1"),
        (dict(crop_size=64, resize_short_side=32), "resize_short_side", "32"),
        (dict(streaming=True), "streaming", "True"),
        (dict(val_images=("nope",)), "val_images", "nope"),
        (dict(val_images="camera"), "val_images", "camera"),
        (dict(val_images=tuple(EMBEDDED_IMAGES)), "val_images", "flower"),
        (dict(max_val_images=0), "max_val_images", "(0)"),
    ],
)
def test_config_rejects_bad_values_naming_field_and_value(kw, field, value):
    with pytest.raises(ValueError) as err:
        ImageDataConfig(**kw)
    msg = str(err.value)
    assert field in msg
    assert value in msg


def test_config_fields_each_have_a_docstring():
    tree = ast.parse(inspect.getsource(ImageDataConfig))
    body = tree.body[0].body
    documented = {
        stmt.target.id
        for stmt, nxt in zip(body, body[1:])
        if isinstance(stmt, ast.AnnAssign) and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)
    }
    assert documented == {f.name for f in dataclasses.fields(ImageDataConfig)}


def test_config_accepts_yaml_lists_and_resolves_val_split():
    cfg = ImageDataConfig(val_images=["coffee", "astronaut"])
    assert cfg.val_images == ("coffee", "astronaut")
    assert ImageDataConfig(source="parquet", root="/x").resolved_val_split == "validation"
    assert ImageDataConfig(source="imagefolder", root="/x").resolved_val_split == "val"
    assert ImageDataConfig(source="imagefolder", root="/x", val_split="dev").resolved_val_split == "dev"


# --------------------------------------------------------------------------------------- embedded


@pytest.mark.slow  # decodes all 20 photographs (~3 s)
def test_every_embedded_image_loads_offline_as_rgb(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("embedded images must not touch the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    load_embedded_image.cache_clear()
    for name in EMBEDDED_IMAGES:
        img = load_embedded_image(name)
        assert img.dtype == torch.uint8 and img.ndim == 3 and img.shape[0] == 3, name
        assert min(img.shape[1:]) >= 128, name
        gray = bool((img[0] == img[1]).all() and (img[1] == img[2]).all())
        assert gray == (name in GRAY), name
        assert img.float().std() > 10, f"{name} looks blank"


def test_embedded_train_crops_are_real_regions_of_training_images_only():
    cfg = ImageDataConfig(crop_size=48, samples_per_epoch=64, val_images=("coffee", "camera", "china"))
    train_ds, val_ds = build_datasets(cfg)
    assert not set(train_ds.names) & set(cfg.val_images)
    assert {name for name, _, _ in val_ds.tiles} == set(cfg.val_images)
    seen = set()
    for k in range(300):  # spans several epochs of draw indices
        name, top, left, flipped = train_ds.draw(k)
        assert name not in cfg.val_images
        seen.add(name)
        crop = train_ds[k]
        region = load_embedded_image(name)[:, top : top + 48, left : left + 48].float() / 255
        assert torch.equal(crop, region.flip(-1) if flipped else region)
    assert len(seen) > len(train_ds.names) // 2  # draws spread over the images


def test_embedded_crops_are_seeded_and_change_between_epochs():
    cfg = ImageDataConfig(crop_size=32, samples_per_epoch=16)
    a, _ = build_datasets(cfg)
    b, _ = build_datasets(cfg)
    c, _ = build_datasets(dataclasses.replace(cfg, seed=1))
    batch = lambda ds, ks: torch.stack([ds[k] for k in ks])  # noqa: E731
    ks = list(EpochSampler(16, shuffle=False, seed=0))
    assert torch.equal(batch(a, ks), batch(b, ks))
    assert not torch.equal(batch(a, ks), batch(c, ks))
    sampler = EpochSampler(16, shuffle=False, seed=0)
    sampler.set_epoch(1)
    assert not torch.equal(batch(a, ks), batch(a, list(sampler)))
    assert all(0.0 <= x.min() and x.max() <= 1.0 for x in (a[0], a[1]))


def test_flip_policy():
    images = {"x": torch.arange(3 * 40 * 40).reshape(3, 40, 40).to(torch.uint8)}
    flips = [RandomCropDataset(images, 16, 100, seed=0, flip=True).draw(k)[3] for k in range(100)]
    assert 20 < sum(flips) < 80
    assert not any(RandomCropDataset(images, 16, 100, seed=0, flip=False).draw(k)[3] for k in range(100))


def test_validation_tiles_are_fixed_non_overlapping_and_cover_the_centre():
    cfg = ImageDataConfig(crop_size=64)
    _, val1 = build_datasets(cfg)
    _, val2 = build_datasets(cfg)
    assert len(val1) >= 50
    expected = sum((load_embedded_image(n).shape[1] // 64) * (load_embedded_image(n).shape[2] // 64) for n in cfg.val_images)
    assert len(val1) == expected
    assert torch.equal(torch.stack([val1[i] for i in range(len(val1))]), torch.stack([val2[i] for i in range(len(val2))]))
    # reassembling one image's tiles gives back exactly its centred grid region
    img = load_embedded_image("coffee")  # (3, 400, 600): 6 x 9 tiles
    idx = [i for i, (name, _, _) in enumerate(val1.tiles) if name == "coffee"]
    grid = torch.stack([val1[i] for i in idx]).reshape(6, 9, 3, 64, 64)
    canvas = grid.permute(2, 0, 3, 1, 4).reshape(3, 6 * 64, 9 * 64)
    assert torch.equal(canvas, img[:, 8 : 8 + 384, 12 : 12 + 576].float() / 255)


def test_tile_origins_do_not_overlap():
    origins = tile_origins(100, 130, 32)
    assert len(origins) == 3 * 4
    cover = torch.zeros(100, 130)
    for top, left in origins:
        cover[top : top + 32, left : left + 32] += 1
    assert cover.max() == 1 and cover.sum() == 12 * 32 * 32


def test_embedded_small_images_are_skipped_or_raise_when_strict(caplog):
    with caplog.at_level(logging.WARNING):
        train_ds, _ = build_datasets(ImageDataConfig(crop_size=256))
    assert train_ds.num_skipped == 2 and "page" not in train_ds.names and "text" not in train_ds.names
    assert "page" in caplog.text and "191x384" in caplog.text
    with pytest.raises(BadImageError, match=r"'page'.*191x384.*256"):
        build_datasets(ImageDataConfig(crop_size=256, strict=True))


def test_split_embedded_is_deterministic_and_disjoint():
    train, val = split_embedded(("rocket", "moon"))
    assert val == ["rocket", "moon"] and not set(train) & set(val)
    assert sorted(train + val) == sorted(EMBEDDED_IMAGES)
    assert split_embedded(("rocket", "moon")) == (train, val)


def test_tiled_dataset_with_no_usable_image_names_them():
    with pytest.raises(ValueError, match="crop_size"):
        TiledCropDataset({"tiny": torch.zeros(3, 8, 8, dtype=torch.uint8)}, 16)


# ------------------------------------------------------------------------------------ imagefolder


def _all(ds) -> list[torch.Tensor]:
    return [ds[i] for i in range(len(ds))]


def test_imagefolder_converts_modes_and_skips_bad_files(folder, caplog):
    ds = ImageFolderCrops(folder, "train", crop_size=32, train=False)
    assert len(ds) == 7
    with caplog.at_level(logging.WARNING):
        items = _all(ds)  # never raises on the corrupt/truncated/small files
    assert all(x.shape == (3, 32, 32) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1 for x in items)
    assert ds.num_skipped == 3
    assert sorted(Path(f).name for f in ds.skipped_files) == ["corrupt.JPEG", "small.JPEG", "truncated.JPEG"]
    assert "corrupt.JPEG" in caplog.text and "3 skipped so far" in caplog.text
    by_name = {Path(f).name: i for i, f in enumerate(ds.files)}
    gray, rgba = items[by_name["gray.png"]], items[by_name["rgba.png"]]
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2]) and gray.std() > 0.1
    assert torch.equal(rgba, torch.ones_like(rgba))  # transparent -> white
    centre = torch.from_numpy(_rand_rgb(0)[4:36, 4:36]).permute(2, 0, 1).float() / 255
    assert (items[by_name["img0.JPEG"]] - centre).abs().mean() < 0.05  # JPEG loss only


@pytest.mark.parametrize("bad, pattern", [("corrupt.JPEG", "cannot decode"), ("truncated.JPEG", "cannot decode"), ("small.JPEG", r"20x24.*32")])
def test_imagefolder_strict_raises_naming_the_file(folder, bad, pattern):
    ds = ImageFolderCrops(folder, "train", crop_size=32, train=False, strict=True)
    i = [Path(f).name for f in ds.files].index(bad)
    with pytest.raises(BadImageError, match=rf"{bad}.*{pattern}"):
        ds[i]


def test_imagefolder_resize_short_side_upscales_small_images(folder):
    ds = ImageFolderCrops(folder, "train", crop_size=32, train=True, resize_short_side=32, strict=False)
    i = [Path(f).name for f in ds.files].index("small.JPEG")
    assert ds[i].shape == (3, 32, 32) and ds.num_skipped == 0


def test_imagefolder_train_crops_are_seeded_and_epochs_differ(folder):
    a = ImageFolderCrops(folder, "train", crop_size=24, train=True, seed=3)
    b = ImageFolderCrops(folder, "train", crop_size=24, train=True, seed=3)
    sampler = EpochSampler(len(a), shuffle=True, seed=3)
    epoch0 = list(sampler)
    sampler.set_epoch(1)
    epoch1 = list(sampler)
    assert sorted(k % len(a) for k in epoch1) == list(range(len(a)))  # each file once per epoch
    assert epoch0 != epoch1 and torch.equal(a[epoch0[0]], b[epoch0[0]])
    good = [j for j, f in enumerate(a.files) if Path(f).name in {"img0.JPEG", "img1.JPEG", "gray.png"}]
    assert sum(not torch.equal(a[j], a[j + len(a)]) for j in good) >= 2  # same file, next epoch: new crop


def test_imagefolder_errors_name_folder_and_split(folder, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"split 'validation'.*found: \['train', 'val'\]"):
        ImageFolderCrops(folder, "validation", crop_size=32, train=False)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ImageFolderCrops(tmp_path / "nowhere", "train", crop_size=32, train=False)
    (tmp_path / "train" / "cls").mkdir(parents=True)
    (tmp_path / "train" / "cls" / "notes.txt").write_text("no images here")
    with pytest.raises(FileNotFoundError, match=rf"{tmp_path / 'train'}.*no images"):
        ImageFolderCrops(tmp_path, "train", crop_size=32, train=False)
    (tmp_path / "val").mkdir()
    with pytest.raises(FileNotFoundError, match=rf"{tmp_path / 'val'}.*no class sub-folders"):
        ImageFolderCrops(tmp_path, "val", crop_size=32, train=False)


def test_build_datasets_imagefolder_val_is_centre_crop(folder):
    cfg = ImageDataConfig(source="imagefolder", root=str(folder), **_file_cfg(max_val_images=1))
    train_ds, val_ds = build_datasets(cfg)
    assert len(train_ds) == 7 and len(val_ds) == 1
    centre = torch.from_numpy(_rand_rgb(10)[4:36, 4:36]).permute(2, 0, 1).float() / 255
    assert (val_ds[0] - centre).abs().mean() < 0.05


# ---------------------------------------------------------------------------------------- parquet


def test_parquet_map_style_matches_files_and_skips_bad_rows(parquet_root, tmp_path, caplog):
    ds = ParquetCrops(parquet_root, "train", crop_size=32, train=False, cache_dir=str(tmp_path))
    assert len(ds) == 6
    with caplog.at_level(logging.WARNING):
        items = _all(ds)
    assert ds.num_skipped == 2 and sorted(ds.skipped_files) == ["b/corrupt.JPEG", "b/truncated.JPEG"]
    assert "b/truncated.JPEG" in caplog.text
    from vqstudy.images.data.common import center_crop_pil, decode_image

    for i, name in enumerate(GOOD_TRAIN):
        assert torch.equal(items[i], center_crop_pil(decode_image(GOOD_TRAIN[name]), 32)), name
    strict = ParquetCrops(parquet_root, "train", crop_size=32, train=False, strict=True, cache_dir=str(tmp_path))
    with pytest.raises(BadImageError, match="b/corrupt.JPEG"):
        _all(strict)


def test_parquet_streaming_yields_same_val_crops_and_reshuffles_train(parquet_root, tmp_path, no_stream_sleep):
    cfg = ImageDataConfig(source="parquet", root=str(parquet_root), cache_dir=str(tmp_path), **_file_cfg())
    _, val_map = build_datasets(cfg)
    train_s, val_s = build_datasets(dataclasses.replace(cfg, streaming=True))
    assert isinstance(train_s, torch.utils.data.IterableDataset) and train_s.num_rows == 6
    val_stream = list(val_s)
    assert torch.equal(torch.stack(val_stream), torch.stack(_all(val_map)))
    assert torch.equal(torch.stack(list(val_s)), torch.stack(val_stream))  # deterministic across passes
    epoch0, epoch1 = torch.stack(list(train_s)), torch.stack(list(train_s))  # iter() advances the epoch
    assert len(epoch0) == 4 and train_s.num_skipped == 2  # 2 bad rows, counted once
    assert not torch.equal(epoch0, epoch1)
    train_s.set_epoch(0)
    assert torch.equal(torch.stack(list(train_s)), epoch0)


def test_parquet_streaming_strict_and_max_val_images(parquet_root, no_stream_sleep):
    strict = ParquetStream(parquet_root, "train", crop_size=32, train=True, strict=True)
    with pytest.raises(BadImageError, match=r"b/(corrupt|truncated)\.JPEG"):
        list(strict)
    assert len(list(ParquetStream(parquet_root, "validation", crop_size=32, train=False, max_images=1))) == 1


def test_parquet_missing_split_lists_found_splits(parquet_root, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"split 'val'.*splits found: \['train', 'validation'\]"):
        ParquetStream(parquet_root, "val", crop_size=32, train=False)
    with pytest.raises(FileNotFoundError, match=rf"no \.parquet files in '{tmp_path}'"):
        ParquetStream(tmp_path, "train", crop_size=32, train=False)


# ------------------------------------------------------------------------------------- datamodule


def test_datamodule_batches_and_epoch_sampler(folder):
    dm = ImageDataModule(ImageDataConfig(crop_size=32, samples_per_epoch=8, batch_size=4))
    train = dm.train_dataloader()
    batches = list(train)
    assert len(batches) == 2 and batches[0].shape == (4, 3, 32, 32)
    train.sampler.set_epoch(1)  # what Lightning calls before each epoch
    assert not torch.equal(torch.cat(batches), torch.cat(list(train)))
    val = dm.val_dataloader()
    assert torch.equal(torch.cat(list(val)), torch.cat(list(dm.val_dataloader())))
    assert dm.cfg.num_workers == 0 and train.num_workers == 0

    fdm = ImageDataModule(ImageDataConfig(source="imagefolder", root=str(folder), **_file_cfg()))
    assert sum(len(b) for b in fdm.train_dataloader()) == 7  # bad files replaced, epoch still full
    assert sum(len(b) for b in fdm.val_dataloader()) == 2


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:You passed in a `val_dataloader`")
def test_lightning_fit_sees_fresh_crops_each_epoch():
    pl = pytest.importorskip("pytorch_lightning")

    class Recorder(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(()))
            self.seen: list[torch.Tensor] = []

        def training_step(self, batch, _):
            self.seen.append(batch.clone())
            return (self.w - batch.mean()) ** 2

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    dm = ImageDataModule(ImageDataConfig(crop_size=16, samples_per_epoch=4, batch_size=4))
    model = Recorder()
    trainer = pl.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(model, datamodule=dm)
    assert len(model.seen) == 2 and not torch.equal(model.seen[0], model.seen[1])
    train_ds = dm.train_ds
    assert torch.equal(model.seen[1], torch.stack([train_ds[k] for k in range(4, 8)]))  # epoch 1 = draws 4..7
