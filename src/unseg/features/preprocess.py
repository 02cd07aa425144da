"""A ViT's input from an image: resized, cropped and normalised (:func:`preprocess_image`), or a batch of uint8 images
normalised on its device (:func:`normalize_batch`)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from unseg.core.geometry import ResizeGeometry, resize_and_crop


def normalize_batch(
    batch: torch.Tensor, mean: Sequence[float] | torch.Tensor, std: Sequence[float] | torch.Tensor
) -> torch.Tensor:
    """(B, 3, H, W) uint8 → float32 on the same device, scaled to [0, 1] and normalised per channel.

    ``mean``/``std`` may be float32 tensors already on the batch's device (no host → device copy per batch).
    """
    mean_t = torch.as_tensor(mean, dtype=torch.float32, device=batch.device).view(1, 3, 1, 1)
    std_t = torch.as_tensor(std, dtype=torch.float32, device=batch.device).view(1, 3, 1, 1)
    return (batch.float() / 255.0 - mean_t) / std_t


def preprocess_image(
    image: np.ndarray, geometry: ResizeGeometry, mean: Sequence[float], std: Sequence[float]
) -> torch.Tensor:
    """(H0, W0, 3) uint8 → (3, Hc, Wc) float32, resized bicubically, cropped and normalised."""
    return normalize_batch(resize_and_crop(image, geometry)[None], mean, std)[0]
