"""Pictures of masks over images: label maps, mask sets and soft maps blended onto the photo (uint8 RGB arrays)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from unseg.core.io import IGNORE_LABEL, voc_palette


def distinct_colors(count: int) -> np.ndarray:
    """(count, 3) uint8 well-separated colours (golden-ratio hues)."""
    import colorsys

    hues = (np.arange(count) * 0.618033988749895) % 1.0
    return np.array(
        [[int(255 * c) for c in colorsys.hsv_to_rgb(h, 0.85, 0.95)] for h in hues], dtype=np.uint8
    ).reshape(-1, 3)


def overlay_labels(image: np.ndarray, label_map: np.ndarray, alpha: float = 0.55) -> np.ndarray:
    """Blend a label map's VOC colours over an (H, W, 3) uint8 image; label 0 left clear, 255 drawn white."""
    colors = voc_palette()[label_map].astype(np.float32)
    colors[label_map == IGNORE_LABEL] = 255
    blended = image.astype(np.float32)
    painted = label_map > 0
    blended[painted] = (1 - alpha) * blended[painted] + alpha * colors[painted]
    return blended.clip(0, 255).astype(np.uint8)


def overlay_masks(image: np.ndarray, masks: Sequence[np.ndarray], alpha: float = 0.55) -> np.ndarray:
    """Blend each (H, W) bool mask in its own colour over an image, later masks on top, with white outlines."""
    from scipy import ndimage

    blended = image.astype(np.float32)
    for mask, color in zip(masks, distinct_colors(len(masks))):
        blended[mask] = (1 - alpha) * blended[mask] + alpha * color
        outline = mask & ~ndimage.binary_erosion(mask)
        blended[outline] = 255
    return blended.clip(0, 255).astype(np.uint8)


def overlay_heatmap(image: np.ndarray, soft: np.ndarray, alpha: float = 0.6) -> np.ndarray:
    """Blend an (H, W) map in [0, 1] as a red-to-yellow heat map over an image."""
    heat = np.stack([np.ones_like(soft), soft, np.zeros_like(soft)], axis=-1) * 255 * soft[..., None]
    blended = (1 - alpha * soft[..., None]) * image.astype(np.float32) + alpha * heat
    return blended.clip(0, 255).astype(np.uint8)
