"""A VOC-shaped copy of the first ``--images`` Weizmann horses for the workflow: ``JPEGImages/`` (symbolic links to
the photos) and ``SegmentationClass/`` (the figure/ground masks as labels 0 background, 1 horse), written under
``resources/datasets/`` (a folder the workflow owns; nothing of the shared data is copied into the project).

Usage (from the project root)::

    .venv/bin/python benchmarks/prepare_horses.py --images 96
    .venv/bin/snakemake --cores 2 --configfile benchmarks/configs/horses.yaml
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "weizmann-horse")
    parser.add_argument("--out", type=Path, default=ROOT / "resources" / "datasets" / "horses")
    args = parser.parse_args()
    (args.out / "JPEGImages").mkdir(parents=True, exist_ok=True)
    (args.out / "SegmentationClass").mkdir(exist_ok=True)
    for image in sorted((args.data / "images").glob("*.jpg"))[: args.images]:
        link = args.out / "JPEGImages" / image.name
        if not link.exists():
            link.symlink_to(image.resolve())
        mask = np.array(Image.open(args.data / "masks" / f"{image.stem}.png").convert("L")) > 127
        Image.fromarray(mask.astype(np.uint8)).save(args.out / "SegmentationClass" / f"{image.stem}.png")
    print(f"{args.out}: {args.images} horses")


if __name__ == "__main__":
    main()
