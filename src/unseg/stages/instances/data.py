"""What an instances trainer reads: :class:`InstanceTrainingInputs` (the round's store, targets and folders), the
:class:`InstanceDataset` of (model input, targets in the model frame) per image, and :func:`step_batches`, the
items of every optimiser step.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from unseg.core.geometry import resize_and_crop
from unseg.core.io import read_image
from unseg.features.preprocess import normalize_batch
from unseg.stages.instances.model import FRAME_STRIDE, rgb_to_lab
from unseg.stages.instances.targets import copy_paste, frame_targets, hflip_sample, masks_in_frame
from unseg.training.data import StoreImages, token_tensor


class InstanceDataset(StoreImages):
    """(model input, targets) of the named images: the stored (D, h, w) token grid, or (``image_paths`` given) the
    (3, h·p, w·p) normalised image, augmented when ``augment`` is; targets in the model frame (:func:`frame_targets`,
    ``masks`` (N, 16h, 16w)).

    An item is asked for by index, or by (index, draw) where ``draw`` seeds that item's augmentation (the training
    loop passes (seed, step, position), so a resumed run draws as an uninterrupted one).

    Args:
        detections: image name → its target detections (COCO results at the original size), in item order.
        augment: ``hflip`` and ``copy_paste`` probabilities, ``copy_paste_scale``; None: the plain image.
        mean, std: the backbone's input normalisation (image path).
        reads_images: the model input is the image (default: whenever ``image_paths`` are given); False with
            ``image_paths`` reads the stored tokens and the images only for ``colours``.
        colours: the targets also carry ``colours``, the (augmented) image's (3, 16h, 16w) CIELAB in the model frame
            (:func:`frame_colours`; the pairwise term of ``mask_loss`` ``mask_pairwise``).
    """

    def __init__(self, store_path: str | Path, facet: str, detections: Mapping[str, Sequence[dict]],
                 image_paths: Mapping[str, str | Path] | None = None, augment: Mapping[str, Any] | None = None,
                 mean: Sequence[float] = (0.0, 0.0, 0.0), std: Sequence[float] = (1.0, 1.0, 1.0),
                 reads_images: bool | None = None, colours: bool = False):
        super().__init__(store_path, list(detections))
        self.facet = facet
        self.detections = {name: list(detections[name]) for name in self.names}
        self.image_paths = {name: Path(image_paths[name]) for name in self.names} if image_paths is not None else None
        self.augment, self.mean, self.std = augment, tuple(mean), tuple(std)
        self.reads_images = self.image_paths is not None if reads_images is None else reads_images
        if (self.reads_images or colours) and self.image_paths is None:
            raise ValueError("InstanceDataset: reading images or their colours needs image_paths")
        self.colours = colours

    def tokens(self, index: int) -> torch.Tensor:
        return token_tensor(self.store, self.names[index], self.facet)[0]

    def image_and_masks(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(3, h·p, w·p) uint8 image and its (N, h·p, w·p) bool masks, at the ViT's input."""
        name = self.names[index]
        geometry, patch = self.store.geometry(name), self.store.patch_size
        image = resize_and_crop(read_image(self.image_paths[name]), geometry)
        return image, masks_in_frame(self.detections[name], geometry, patch, patch)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        index, draw = key if isinstance(key, tuple) else (key, None)
        name = self.names[index]
        geometry, patch = self.store.geometry(name), self.store.patch_size
        if not self.reads_images:
            targets = frame_targets(masks_in_frame(self.detections[name], geometry, patch, FRAME_STRIDE))
            if self.colours:
                image = resize_and_crop(read_image(self.image_paths[name]), geometry)
                targets["colours"] = frame_colours(image, geometry.grid_size)
            return self.tokens(index), targets
        image, masks = self.image_and_masks(index)
        if self.augment is not None and draw is not None:
            rng = np.random.default_rng(draw)
            if rng.random() < self.augment["copy_paste"] and len(self) > 1:
                other = int(rng.integers(len(self) - 1))
                source_image, source_masks = self.image_and_masks(other + (other >= index))
                image, masks = copy_paste(image, masks, source_image, source_masks, rng,
                                          self.augment["copy_paste_scale"])
            if rng.random() < self.augment["hflip"]:
                image, masks = hflip_sample(image, masks)
        grid_h, grid_w = geometry.grid_size
        frame = F.interpolate(masks[None].float(), size=(grid_h * FRAME_STRIDE, grid_w * FRAME_STRIDE),
                              mode="nearest-exact")[0] > 0.5 if len(masks) else \
            torch.zeros((0, grid_h * FRAME_STRIDE, grid_w * FRAME_STRIDE), dtype=torch.bool)
        targets = frame_targets(frame)
        if self.colours:
            targets["colours"] = frame_colours(image, geometry.grid_size)
        return normalize_batch(image[None], self.mean, self.std)[0], targets


def frame_colours(image: torch.Tensor, grid_size: tuple[int, int]) -> torch.Tensor:
    """(3, h·p, w·p) uint8 ViT input → (3, 16h, 16w) float32 CIELAB in the model frame (bilinear)."""
    frame = F.interpolate(image[None].float(), size=(grid_size[0] * FRAME_STRIDE, grid_size[1] * FRAME_STRIDE),
                          mode="bilinear", align_corners=False)[0]
    return rgb_to_lab(frame.clamp(0, 255))


@dataclass(frozen=True)
class InstanceTrainingInputs:
    """What an instances trainer reads and where it writes.

    Attributes:
        store_path: the feature store of the variant's ``features``; ``facet`` the facet trained on.
        detections: image name → the round's target detections (COCO results at the original size); every image
            of the store that the run trains on, with an empty list for an image without targets.
        out_dir: the round's folder (``model.pt``, ``last.pt``, ``log.csv``).
        config: the variant's settings, stored in the checkpoint (with ``method``).
        image_paths: image name → image file (read by trainers that run the ViT on images).
        initial_model: a checkpoint of the same method to start from (the previous round's).
    """

    store_path: Path
    facet: str
    detections: Mapping[str, Sequence[dict]]
    out_dir: Path
    config: Mapping[str, Any]
    image_paths: Mapping[str, Path] | None = None
    initial_model: Path | None = None
    progress: bool = True



def step_batches(num_items: int, batch_size: int, steps: int, seed: int) -> list[list[int]]:
    """The item indices of every step: consecutive epochs, each a fresh permutation (seeded by ``seed``), cut into
    batches of ``batch_size`` (the last batch of an epoch may be shorter)."""
    generator = torch.Generator().manual_seed(seed)
    batches: list[list[int]] = []
    while len(batches) < steps:
        order = torch.randperm(num_items, generator=generator).tolist()
        batches += [order[start : start + batch_size] for start in range(0, num_items, batch_size)]
    return batches[:steps]

