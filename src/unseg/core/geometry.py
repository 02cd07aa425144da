"""Image ↔ token-grid geometry: how an image becomes the ViT's input, and how grid values map back to pixels.

An image (H0, W0) is resized to (Hs, Ws) and the ViT sees the crop ``crop_box`` of it, Hc = h * patch,
Wc = w * patch. Layout ``"resize"`` rounds both resized sides to patch multiples (no crop); layout ``"crop"`` (as
Deep Spectral Methods) keeps the exact aspect ratio and crops the bottom/right remainder below one patch.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

LAYOUTS = ("resize", "crop")


@dataclass(frozen=True)
class ResizeGeometry:
    """How an image became the ViT's input: original (H0, W0) → resized (Hs, Ws) → crop → token grid (h, w).

    ``crop_box`` is (top, left, Hc, Wc) in resized pixels; None means the whole resized image (Hc, Wc) = (Hs, Ws).
    """

    original_size: tuple[int, int]
    resized_size: tuple[int, int]
    grid_size: tuple[int, int]
    crop_box: tuple[int, int, int, int] | None = None

    @property
    def box(self) -> tuple[int, int, int, int]:
        """(top, left, Hc, Wc) of the ViT input inside the resized image."""
        return self.crop_box if self.crop_box is not None else (0, 0, *self.resized_size)

    @property
    def input_size(self) -> tuple[int, int]:
        """(Hc, Wc): the ViT input size, multiples of the patch size."""
        return self.box[2], self.box[3]


def resize_geometry(
    original_size: tuple[int, int], short_side: int, patch_size: int, layout: str = "resize"
) -> ResizeGeometry:
    """Where an image goes: scale the short side to ``short_side`` keeping the aspect ratio, then fit the patch grid.

    Args:
        original_size: (H0, W0) of the image in pixels.
        short_side: target short side in pixels.
        layout: ``"resize"`` rounds both sides to the nearest patch multiple (at least one patch; the aspect ratio
            is kept up to that rounding); ``"crop"`` resizes to the exact aspect ratio and crops the bottom and
            right remainders (below one patch), as Deep Spectral Methods does.
    """
    height, width = int(original_size[0]), int(original_size[1])
    scale = short_side / min(height, width)
    if layout == "resize":
        grid_h = max(1, round(height * scale / patch_size))
        grid_w = max(1, round(width * scale / patch_size))
        return ResizeGeometry((height, width), (grid_h * patch_size, grid_w * patch_size), (grid_h, grid_w))
    if layout == "crop":
        resized_h = max(patch_size, round(height * scale))
        resized_w = max(patch_size, round(width * scale))
        grid_h, grid_w = resized_h // patch_size, resized_w // patch_size
        return ResizeGeometry(
            (height, width), (resized_h, resized_w), (grid_h, grid_w), (0, 0, grid_h * patch_size, grid_w * patch_size)
        )
    raise ValueError(f"unknown layout {layout!r}; choose from {list(LAYOUTS)}")


def resize_and_crop(image: np.ndarray, geometry: ResizeGeometry) -> torch.Tensor:
    """(H0, W0, 3) uint8 → (3, Hc, Wc) uint8: bicubic resize to ``resized_size``, then the crop box."""
    resized = Image.fromarray(image).resize(geometry.resized_size[::-1], Image.BICUBIC)
    top, left, crop_h, crop_w = geometry.box
    pixels = np.asarray(resized)[top : top + crop_h, left : left + crop_w]
    return torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))


def labels_at_input(label_map: np.ndarray, geometry: ResizeGeometry) -> torch.Tensor:
    """An (H0, W0) integer label map as the ViT sees its image: nearest-resized to ``resized_size``, then the crop
    box; (Hc, Wc) int64."""
    labels = torch.from_numpy(label_map.astype(np.int64))[None, None].float()
    labels = F.interpolate(labels, size=tuple(geometry.resized_size), mode="nearest")
    top, left, crop_h, crop_w = geometry.box
    return labels[0, 0, top : top + crop_h, left : left + crop_w].long()


def _cell_coordinates(original: int, resized: int, offset: int, cell: int) -> np.ndarray:
    """Continuous grid coordinate of each original pixel centre along one axis (cell centres at 0, 1, ...)."""
    centres = (np.arange(original, dtype=np.float64) + 0.5) * resized / original  # resized pixels
    return (centres - offset) / cell - 0.5


@functools.lru_cache(maxsize=64)  # every mask of an image, and images of one size, share these
def _interpolation_matrix(original: int, resized: int, offset: int, crop: int, cells: int) -> np.ndarray:
    """(original, cells) read-only float32 linear-interpolation weights; coordinates outside the grid clamp to the
    edge cells."""
    coordinates = np.clip(_cell_coordinates(original, resized, offset, crop / cells), 0, cells - 1)
    lower = np.floor(coordinates).astype(int)
    upper = np.minimum(lower + 1, cells - 1)
    fraction = coordinates - lower
    weights = np.zeros((original, cells), dtype=np.float64)
    np.add.at(weights, (np.arange(original), lower), 1 - fraction)
    np.add.at(weights, (np.arange(original), upper), fraction)
    weights = weights.astype(np.float32)
    weights.setflags(write=False)
    return weights


def grid_to_image(grid_values: np.ndarray, geometry: ResizeGeometry) -> np.ndarray:
    """Upsample per-cell values to original pixels, bilinearly.

    Cell (i, j) sits at the centre of its patch in the resized image, inside the crop box; each original pixel
    centre maps into the resized image by the resize scale. Pixels beyond the outermost cell centres take the
    edge cell's value (edge replication) — this covers the bottom/right strip that the ``"crop"`` layout cut off.
    Without a crop this equals ``F.interpolate(..., mode="bilinear", align_corners=False)``.

    Args:
        grid_values: (h, w) or (C, h, w) float array on the token grid.

    Returns:
        float32 array of shape (H0, W0) or (C, H0, W0).
    """
    values = np.asarray(grid_values, dtype=np.float64)
    squeeze = values.ndim == 2
    if squeeze:
        values = values[None]
    (height, width), (resized_h, resized_w) = geometry.original_size, geometry.resized_size
    top, left, crop_h, crop_w = geometry.box
    grid_h, grid_w = geometry.grid_size
    if values.shape[-2:] != (grid_h, grid_w):
        raise ValueError(f"grid values of shape {values.shape[-2:]} do not match the grid {grid_h}x{grid_w}")
    rows = _interpolation_matrix(height, resized_h, top, crop_h, grid_h)
    columns = _interpolation_matrix(width, resized_w, left, crop_w, grid_w)
    # Separable: rows (H0, h) @ values (C, h, w) @ columns.T (w, W0) — two matrix products, float32.
    upsampled = (rows @ values.astype(np.float32)) @ columns.T
    return upsampled[0] if squeeze else upsampled


def _coverage_matrix(original: int, resized: int, offset: int, crop: int, cells: int) -> np.ndarray:
    """(cells, original) length of each original pixel inside each cell's footprint, along one axis."""
    cell = crop / cells
    starts = (offset + np.arange(cells) * cell) * original / resized
    ends = (offset + (np.arange(cells) + 1) * cell) * original / resized
    pixels = np.arange(original, dtype=np.float64)
    return np.clip(np.minimum(ends[:, None], pixels[None] + 1) - np.maximum(starts[:, None], pixels[None]), 0, None)


def image_to_grid(mask: np.ndarray, grid: tuple[int, int] | ResizeGeometry) -> np.ndarray:
    """Fraction of each token cell covered by an original-resolution mask.

    Args:
        mask: (H0, W0) bool or float in [0, 1].
        grid: the image's :class:`ResizeGeometry` (exact cell footprints in original pixels, honouring a crop), or
            just (h, w) for the resize layout (adaptive average pooling over the whole image).

    Returns:
        (h, w) float32 average of the mask over each cell's footprint.
    """
    if isinstance(grid, ResizeGeometry):
        values = np.asarray(mask, dtype=np.float64)
        if values.shape != tuple(grid.original_size):
            raise ValueError(f"mask of shape {values.shape} does not match the image size {grid.original_size}")
        top, left, crop_h, crop_w = grid.box
        rows = _coverage_matrix(grid.original_size[0], grid.resized_size[0], top, crop_h, grid.grid_size[0])
        columns = _coverage_matrix(grid.original_size[1], grid.resized_size[1], left, crop_w, grid.grid_size[1])
        covered = rows @ values @ columns.T
        return (covered / np.outer(rows.sum(1), columns.sum(1))).astype(np.float32)
    values = torch.as_tensor(np.asarray(mask, dtype=np.float32))[None, None]
    return F.adaptive_avg_pool2d(values, tuple(grid))[0, 0].numpy()


def frame_transform(geometry: ResizeGeometry, patch_size: int, pixels_per_token: int) -> tuple[float, float, float,
                                                                                                float]:
    """The affine map from original pixel coordinates to a frame in which every token is ``pixels_per_token``
    pixels wide (``patch_size``: the ViT's input; 16: the instance model's frame, :mod:`unseg.stages.instances.model`).

    Returns:
        (scale_y, offset_y, scale_x, offset_x): frame = original · scale + offset, for pixel edges and centres alike
        (the resize maps pixel centres (y + 0.5) · Hs / H0, as :func:`grid_to_image` does).
    """
    top, left, _, _ = geometry.box
    zoom = pixels_per_token / patch_size
    scale_y = geometry.resized_size[0] / geometry.original_size[0] * zoom
    scale_x = geometry.resized_size[1] / geometry.original_size[1] * zoom
    return scale_y, -top * zoom, scale_x, -left * zoom


def _box_affine(boxes: np.ndarray | torch.Tensor, geometry: ResizeGeometry, patch_size: int, pixels_per_token: int):
    """(scale, offset) of x1, y1, x2, y2 under :func:`frame_transform`, as arrays of ``boxes``' kind."""
    scale_y, offset_y, scale_x, offset_x = frame_transform(geometry, patch_size, pixels_per_token)
    make = boxes.new_tensor if isinstance(boxes, torch.Tensor) else np.array
    return make([scale_x, scale_y, scale_x, scale_y]), make([offset_x, offset_y, offset_x, offset_y])


def boxes_to_frame(boxes: np.ndarray | torch.Tensor, geometry: ResizeGeometry, patch_size: int,
                   pixels_per_token: int) -> np.ndarray | torch.Tensor:
    """(N, 4) x1, y1, x2, y2 boxes in original pixels → the same in the frame of :func:`frame_transform`."""
    scale, offset = _box_affine(boxes, geometry, patch_size, pixels_per_token)
    return boxes * scale + offset


def boxes_to_original(boxes: np.ndarray | torch.Tensor, geometry: ResizeGeometry, patch_size: int,
                      pixels_per_token: int) -> np.ndarray | torch.Tensor:
    """Inverse of :func:`boxes_to_frame`."""
    scale, offset = _box_affine(boxes, geometry, patch_size, pixels_per_token)
    return (boxes - offset) / scale


def mask_in_frame(mask: np.ndarray, geometry: ResizeGeometry, patch_size: int, pixels_per_token: int) -> np.ndarray:
    """An (H0, W0) mask seen in the frame of :func:`frame_transform`: (h·s, w·s) with s = ``pixels_per_token``,
    each frame pixel taking the original pixel under its centre (nearest)."""
    scale_y, offset_y, scale_x, offset_x = frame_transform(geometry, patch_size, pixels_per_token)
    grid_h, grid_w = geometry.grid_size
    rows = np.floor((np.arange(grid_h * pixels_per_token) + 0.5 - offset_y) / scale_y).astype(np.int64)
    cols = np.floor((np.arange(grid_w * pixels_per_token) + 0.5 - offset_x) / scale_x).astype(np.int64)
    rows = np.clip(rows, 0, geometry.original_size[0] - 1)
    cols = np.clip(cols, 0, geometry.original_size[1] - 1)
    return np.asarray(mask)[rows[:, None], cols[None, :]]
