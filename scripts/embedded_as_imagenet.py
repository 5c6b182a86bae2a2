"""Write the embedded photos in both ImageNet layouts, to run the image study's ImageNet code path offline.

python scripts/embedded_as_imagenet.py --out runs/embedded_imagenet
  -> runs/embedded_imagenet/imagefolder/{train,val}/<name>/<name>.JPEG   (torchvision ImageFolder layout)
  -> runs/embedded_imagenet/parquet/data/{train,validation}-00000-of-00001.parquet  (HF imagenet-1k layout)
The held-out photos (ImageDataConfig.val_images) go to val/validation only, as in the embedded split.
"""

import argparse
import io
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from vqstudy.images.data.module import ImageDataConfig
from vqstudy.images.data.embedded import EMBEDDED_IMAGES, load_embedded_image


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/embedded_imagenet")
    args = p.parse_args(argv)
    out = Path(args.out)
    val_names = set(ImageDataConfig().val_images)
    rows: dict[str, list[dict]] = {"train": [], "validation": []}
    for label, name in enumerate(EMBEDDED_IMAGES):
        split = "val" if name in val_names else "train"
        image = Image.fromarray(load_embedded_image(name).permute(1, 2, 0).numpy())  # (H, W, 3) uint8
        buf = io.BytesIO()
        image.save(buf, format="JPEG", quality=95)
        folder = out / "imagefolder" / split / name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{name}.JPEG").write_bytes(buf.getvalue())
        rows["validation" if split == "val" else "train"].append(
            {"image": {"bytes": buf.getvalue(), "path": f"{name}.JPEG"}, "label": label})
    (out / "parquet" / "data").mkdir(parents=True, exist_ok=True)
    for split, items in rows.items():
        pq.write_table(pa.Table.from_pylist(items), out / "parquet" / "data" / f"{split}-00000-of-00001.parquet")
    print(f"wrote {out}/imagefolder and {out}/parquet ({len(rows['train'])} train, {len(rows['validation'])} val images)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
