"""Sliding-window crops of every image and the backbone's CLS token of each crop, as a feature store.

TransFGU (Yin et al., ECCV 2022, sections 3.2 and 4.2) finds its semantic concepts by k-means over the CLS tokens of
square crops: for every scale β (0.5, 0.4, 0.3, 0.2) a window of side β × the image's short side slides over the
image with a step of β/2 × the short side, and each crop is resized to half the short side before the ViT sees it.
Here a features variant with ``crops:`` settings stores, per image,

* ``crop_cls``  (n, D) float16: the last block's CLS token (after the final norm, as the ``cls`` facet) of each crop;
* ``crop_boxes`` (n, 4) float16: each crop's box (x0, y0, x1, y1) as fractions of the original image's width and
  height (so they are independent of any resize; float16 keeps them within 1/2048 of the image side).

Each image's group carries the same geometry attributes as the variant's full-image store would, so every
:class:`~unseg.features.store.FeatureStore` method that reads geometry works on it. The crops are the cached, reusable
artifact the ``transfgu`` pseudo-label method clusters.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import zarr
from tqdm.auto import tqdm

from unseg import __version__
from unseg.core.devices import resolve_device
from unseg.core.geometry import resize_geometry
from unseg.core.io import atomic_output, image_size, read_image
from unseg.features.backbones import create_backbone, weights_digest
from unseg.features.facets import forward_facets
from unseg.features.store import ImageItem, write_image

CROP_FACETS = ("crop_cls", "crop_boxes")


def window_starts(length: int, side: int, step: int) -> list[int]:
    """Start offsets of windows of ``side`` pixels sliding by ``step`` over ``length`` pixels; a last window flush
    with the far edge is added when the steps do not land on it, so every pixel is covered."""
    if side >= length:
        return [0]
    starts = list(range(0, length - side + 1, max(1, step)))
    if starts[-1] != length - side:
        starts.append(length - side)
    return starts


def sliding_window_boxes(height: int, width: int, scales: Sequence[float] = (0.5, 0.4, 0.3, 0.2),
                         step: float = 0.5) -> np.ndarray:
    """Every square window of TransFGU's sliding-window cropping (section 4.2) of an (H, W) image.

    Args:
        scales: β values: the window side is round(β × min(H, W)) pixels.
        step: the stride as a fraction of the window side (the paper's β/2 × min(H, W) is ``step=0.5``).

    Returns:
        (n, 4) int64 boxes (x0, y0, x1, y1), x1/y1 exclusive, scale by scale, rows then columns.
    """
    short = min(int(height), int(width))
    boxes = []
    for scale in scales:
        side = max(1, int(round(float(scale) * short)))
        stride = max(1, int(round(float(step) * side)))
        for top in window_starts(int(height), side, stride):
            for left in window_starts(int(width), side, stride):
                boxes.append((left, top, left + side, top + side))
    return np.asarray(boxes, dtype=np.int64).reshape(-1, 4)


def crop_batch(image: np.ndarray, boxes: np.ndarray, resolution: int, mean: Sequence[float], std: Sequence[float],
               ) -> torch.Tensor:
    """The crops of one image, each resized (bilinear, antialiased) to ``resolution`` × ``resolution`` and
    normalised: (n, 3, resolution, resolution) float32 from an (H, W, 3) uint8 image and (n, 4) pixel boxes."""
    pixels = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float() / 255.0
    crops = [F.interpolate(pixels[None, :, y0:y1, x0:x1], size=(resolution, resolution), mode="bilinear",
                           align_corners=False, antialias=True)[0] for x0, y0, x1, y1 in boxes.tolist()]
    stacked = torch.stack(crops)
    mean_t = torch.as_tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    std_t = torch.as_tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return (stacked - mean_t) / std_t


def crop_resolution(settings: Mapping[str, Any], resolution: int, patch_size: int) -> int:
    """The crops' side at the backbone's input: ``settings["resolution"]``, or by default half the variant's
    resolution (TransFGU resizes each crop to half the short side), rounded to a multiple of the patch size."""
    side = settings.get("resolution") or resolution / 2
    return max(patch_size, int(round(side / patch_size)) * patch_size)


def extract_crop_features(
    image_paths: Sequence[str | Path],
    image_names: Sequence[str],
    image_ids: Sequence[int],
    store_path: str | Path,
    *,
    backbone: str,
    weights: str,
    resolution: int,
    layout: str,
    crops: Mapping[str, Any],
    batch_size: int = 32,
    device: str | None = None,
    image_sizes: Sequence[tuple[int, int]] | None = None,
    progress: bool = True,
) -> Path:
    """The CLS token of every sliding-window crop of every image (module docstring) into a new store, atomically.

    Args:
        resolution, layout: the variant's: they fix each image's geometry attributes (as its full-image store).
        crops: ``scales``, ``step`` and optionally ``resolution`` (the crop side at the backbone's input).
        batch_size: crops per forward pass.
    """
    device_ = resolve_device(device)
    model, spec = create_backbone(backbone, weights)
    model = model.to(device_).eval()
    side = crop_resolution(crops, resolution, spec.patch_size)
    grid = (side // spec.patch_size, side // spec.patch_size)
    scales, step = [float(scale) for scale in crops["scales"]], float(crops["step"])
    if image_sizes is None:
        image_sizes = [image_size(path) for path in image_paths]
    attributes = dict(
        backbone=backbone, timm_name=spec.timm_name, weights=str(weights), weights_digest=weights_digest(weights),
        resolution=resolution, layout=layout, patch_size=spec.patch_size, embed_dim=spec.embed_dim,
        num_heads=spec.num_heads, num_blocks=len(model.blocks), facets=list(CROP_FACETS),
        crops={"scales": scales, "step": step, "resolution": side}, num_images=len(image_paths), complete=False,
        unseg_version=__version__,
    )
    on_cuda = device_.type == "cuda"
    with atomic_output(store_path) as tmp:
        root = zarr.open_group(str(tmp), mode="w")
        root.attrs.update(attributes)
        for path, name, image_id, size in tqdm(list(zip(image_paths, image_names, image_ids, image_sizes)),
                                               desc=f"crop features {backbone}", unit="img", disable=not progress):
            image = read_image(path)
            height, width = image.shape[:2]
            boxes = sliding_window_boxes(height, width, scales, step)
            tokens = []
            for start in range(0, len(boxes), batch_size):
                batch = crop_batch(image, boxes[start : start + batch_size], side, spec.mean, spec.std)
                with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=on_cuda):
                    tokens.append(forward_facets(model, batch.to(device_), grid, ["cls"])["cls"].float().cpu())
            fractions = boxes.astype(np.float32) / np.array([width, height, width, height], dtype=np.float32)
            item = ImageItem(str(path), str(name), int(image_id),
                              resize_geometry(tuple(size), resolution, spec.patch_size, layout))
            write_image(Path(tmp), item, {"crop_cls": torch.cat(tokens).numpy(), "crop_boxes": fractions})
        root.attrs["complete"] = True
    return Path(store_path)
