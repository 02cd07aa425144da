"""How much of a single-object dataset's AR@100 a mask's resolution allows: the ground truth seen through a grid.

For one object per image (the Weizmann horses), COCO's AR@100 of a detector whose best mask is M is the mean over
images and over IoU thresholds 0.50:0.05:0.95 of [IoU(M, object) >= t]. This script replaces M by the *ground truth
itself* as a model of a given resolution could at best paint it, and prints that ceiling:

- ``token grid P px``: the object's coverage of each cell of a P-px patch grid at ``--resolution`` (the geometry
  the features are extracted at), upsampled bilinearly back to the photo as the masks stage does
  (``grid_to_image``), > 0.5 (a mask read off the ViT's token grid);
- ``mask head S``: the object's box, cropped and averaged to S x S cells, pasted back bilinearly inside the box,
  > 0.5 (Mask R-CNN's S x S mask given the perfect box; torchvision pastes 28 x 28);
- each again after ``refine_mask_with_crf`` (the instances stage's ``crf: true``, on the whole photo).

Usage (from the project root)::

    .venv/bin/python benchmarks/instance_resolution_bound.py --root ../shared/data/weizmann-horse --images 328
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from unseg.core.geometry import grid_to_image, image_to_grid, resize_geometry  # noqa: E402

THRESHOLDS = np.linspace(0.5, 0.95, 10)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


def through_token_grid(mask: np.ndarray, resolution: int, patch: int, layout: str) -> np.ndarray:
    """(H0, W0) bool: the mask a P-px token grid at ``resolution`` can paint at best."""
    geometry = resize_geometry(mask.shape, resolution, patch, layout)
    return grid_to_image(image_to_grid(mask, geometry), geometry) > 0.5


def through_mask_head(mask: np.ndarray, size: int) -> np.ndarray:
    """(H0, W0) bool: the mask an S x S head pasted into the object's own box can paint at best."""
    rows, cols = np.nonzero(mask)
    top, bottom, left, right = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    crop = torch.from_numpy(mask[top:bottom, left:right].astype(np.float32))[None, None]
    cells = F.adaptive_avg_pool2d(crop, (size, size))
    pasted = F.interpolate(cells, size=(bottom - top, right - left), mode="bilinear", align_corners=False)[0, 0]
    out = np.zeros_like(mask)
    out[top:bottom, left:right] = pasted.numpy() > 0.5
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=ROOT.parent / "shared" / "data" / "weizmann-horse")
    parser.add_argument("--images", type=int, default=328)
    parser.add_argument("--resolution", type=int, default=448)
    parser.add_argument("--layout", default="resize")
    parser.add_argument("--patches", type=int, nargs="+", default=[14, 7])
    parser.add_argument("--head-sizes", type=int, nargs="+", default=[28, 56])
    parser.add_argument("--crf", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args()
    if args.crf:
        from unseg.stages.proposals import refine_mask_with_crf

    names = sorted(path.stem for path in (args.root / "masks").glob("*.png"))[: args.images]
    ious: dict[str, list[float]] = {}
    for name in tqdm(names, desc="horses"):
        object_mask = np.asarray(Image.open(args.root / "masks" / f"{name}.png").convert("L")) > 127
        image = np.array(Image.open(args.root / "images" / f"{name}.jpg").convert("RGB"))
        if image.shape[:2] != object_mask.shape:
            raise ValueError(f"{name}: image {image.shape[:2]} and mask {object_mask.shape} differ")
        painted = {f"token grid {patch} px": through_token_grid(object_mask, args.resolution, patch, args.layout)
                   for patch in args.patches}
        painted.update({f"mask head {size}": through_mask_head(object_mask, size) for size in args.head_sizes})
        for label, mask in painted.items():
            ious.setdefault(label, []).append(iou(mask, object_mask))
            if args.crf:
                refined = refine_mask_with_crf(image, mask)
                ious.setdefault(label + " + CRF", []).append(iou(refined, object_mask))
    print(f"{len(names)} images of {args.root}, resolution {args.resolution} ({args.layout})")
    print("| ground truth through | mean IoU | AR@100 ceiling | recall@0.75 | recall@0.9 |")
    print("|---|---|---|---|---|")
    for label, values in ious.items():
        values = np.asarray(values)
        recall = (values[:, None] >= THRESHOLDS[None]).mean(0)
        print(f"| {label} | {100 * values.mean():.1f} | {100 * recall.mean():.1f} | {100 * recall[5]:.1f} "
              f"| {100 * recall[8]:.1f} |")


if __name__ == "__main__":
    main()
