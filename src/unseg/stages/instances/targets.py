"""What an instances round trains on: the targets of round r (:func:`merge_round_targets`: round r-1's confident
detections and the proposals they do not cover), and the targets of one image as the model sees them: RLE masks in
the model frame (:func:`masks_in_frame`), their boxes (:func:`frame_targets`), and the augmentations of the ViT's
input that move them (:func:`hflip_sample`, :func:`copy_paste`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pycocotools import mask as mask_utils

from unseg.core.geometry import ResizeGeometry, mask_in_frame
from unseg.core.io import decode_rle

# ----------------------------------------------------------------------------------------------------------------
# Targets: proposals (COCO RLE at the original resolution) as masks and boxes in a frame.


def boxes_of_masks(masks: torch.Tensor) -> torch.Tensor:
    """(N, H, W) masks → (N, 4) float32 x1, y1, x2, y2 boxes enclosing their pixels (x2, y2 one past the last
    pixel, as COCO's [x, y, w, h] gives x2 = x + w); an empty mask gives (0, 0, 0, 0)."""
    boxes = torch.zeros((len(masks), 4), dtype=torch.float32)
    for index, mask in enumerate(masks):
        rows, cols = torch.where(mask > 0)
        if len(rows):
            boxes[index] = torch.tensor([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1],
                                        dtype=torch.float32)
    return boxes


def frame_targets(masks: torch.Tensor) -> dict[str, torch.Tensor]:
    """The targets of one image from its (N, H, W) masks in the model frame: non-empty ``masks`` as uint8, their
    ``boxes`` (:func:`boxes_of_masks`) and ``labels`` (ones: one class-agnostic "object" class)."""
    masks = masks.bool()
    masks = masks[masks.flatten(1).any(1)].to(torch.uint8)
    return {"boxes": boxes_of_masks(masks), "labels": torch.ones(len(masks), dtype=torch.int64), "masks": masks}


def masks_in_frame(detections: Sequence[Mapping[str, Any]], geometry: ResizeGeometry, patch_size: int,
                   pixels_per_token: int) -> torch.Tensor:
    """The RLE masks of ``detections`` (one image's, at its original size) in a frame of ``pixels_per_token``
    pixels per token (:func:`unseg.core.geometry.mask_in_frame`): (N, h·s, w·s) bool."""
    height, width = geometry.grid_size[0] * pixels_per_token, geometry.grid_size[1] * pixels_per_token
    masks = [mask_in_frame(decode_rle(det["segmentation"]), geometry, patch_size, pixels_per_token)
             for det in detections]
    return torch.from_numpy(np.stack(masks)) if masks else torch.zeros((0, height, width), dtype=torch.bool)


# ----------------------------------------------------------------------------------------------------------------
# Augmentations on the ViT's input (image path only).


def hflip_sample(image: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mirror a (3, H, W) image and its (N, H, W) masks left to right."""
    return image.flip(-1), masks.flip(-1)


def copy_paste(image: torch.Tensor, masks: torch.Tensor, source_image: torch.Tensor, source_masks: torch.Tensor,
               rng: np.random.Generator, scale_range: Sequence[float] = (0.5, 1.0), min_visible: float = 0.3,
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Paste objects of another image onto this one (simple copy-paste, Ghiasi et al. CVPR 2021).

    A random non-empty subset of ``source_masks`` (each kept with probability 0.5) is rescaled with its image by
    s ~ U(``scale_range``) relative to this image's size (aspect ratio of the target), placed at a random offset
    inside it, and its pixels overwrite this image's. The image's own masks lose the pixels covered by the pasted
    objects; one left with less than ``min_visible`` of its area is dropped (an occluded pseudo-object is no longer
    a target).

    Args:
        image: (3, H, W) uint8; masks: (N, H, W) bool.
        source_image: (3, Hs, Ws) uint8; source_masks: (M, Hs, Ws) bool.

    Returns:
        the pasted image (3, H, W) uint8 and its masks: the surviving own masks, then the pasted ones, (N', H, W)
        bool.
    """
    if len(source_masks) == 0:
        return image, masks
    chosen = rng.random(len(source_masks)) < 0.5
    if not chosen.any():
        chosen[rng.integers(len(source_masks))] = True
    height, width = image.shape[-2:]
    scale = rng.uniform(*scale_range)
    out_h, out_w = max(1, round(height * scale)), max(1, round(width * scale))
    pasted_image = F.interpolate(source_image[None].float(), size=(out_h, out_w), mode="bilinear",
                                 align_corners=False, antialias=True)[0].round().clamp(0, 255).to(torch.uint8)
    pasted = F.interpolate(source_masks[torch.from_numpy(chosen)][None].float(), size=(out_h, out_w),
                           mode="nearest-exact")[0] > 0.5
    top, left = int(rng.integers(0, height - out_h + 1)), int(rng.integers(0, width - out_w + 1))
    placed = torch.zeros((len(pasted), height, width), dtype=torch.bool)
    placed[:, top : top + out_h, left : left + out_w] = pasted
    covered = placed.any(0)
    result = image.clone()
    window = result[:, top : top + out_h, left : left + out_w]
    window[:, covered[top : top + out_h, left : left + out_w]] = pasted_image[:, covered[top : top + out_h,
                                                                                       left : left + out_w]]
    remaining = masks & ~covered
    visible = remaining.flatten(1).sum(1).float() >= min_visible * masks.flatten(1).sum(1).clamp(min=1).float()
    placed = placed[placed.flatten(1).any(1)]
    return result, torch.cat([remaining[visible], placed])



# ----------------------------------------------------------------------------------------------------------------
# Rounds: what round r trains on.


def mask_ious(first: Sequence[dict], second: Sequence[dict]) -> np.ndarray:
    """(len(first), len(second)) mask IoU of two lists of COCO results of one image (pycocotools)."""
    if not first or not second:
        return np.zeros((len(first), len(second)))

    def rles(dets):
        return [{"size": det["segmentation"]["size"], "counts": det["segmentation"]["counts"].encode("ascii")}
                for det in dets]

    return np.asarray(mask_utils.iou(rles(first), rles(second), [0] * len(second))).reshape(len(first), len(second))


def merge_round_targets(predictions: Sequence[dict], proposals: Sequence[dict], score_threshold: float,
                        overlap_iou: float, keep_proposals: bool, min_proposal_score: float = 0.0) -> list[dict]:
    """The targets of the next self-training round, per image: the predictions scoring at least
    ``score_threshold`` (deduplicated by mask NMS at ``overlap_iou``), and each proposal whose best mask IoU with
    those is below ``overlap_iou`` (an NMS in which the model's confident detections rank first; CutLER,
    ``get_self_training_ann.py``, keeps the predictions as they are). ``keep_proposals`` False: the confident
    predictions alone. Only proposals scoring at least ``min_proposal_score`` are kept (the round's
    ``min_target_score``: its trainer drops weaker targets). Each target carries ``source`` ("prediction" or
    "proposal")."""
    from unseg.stages.proposals import mask_nms

    confident: dict[int, list[dict]] = {}
    for det in predictions:
        if det["score"] >= score_threshold:
            confident.setdefault(int(det["image_id"]), []).append({**det, "source": "prediction"})
    confident = {image_id: mask_nms(dets, overlap_iou) for image_id, dets in confident.items()}
    pseudo: dict[int, list[dict]] = {}
    for det in proposals if keep_proposals else ():
        if det["score"] >= min_proposal_score:
            pseudo.setdefault(int(det["image_id"]), []).append(det)
    merged = []
    for image_id in sorted(set(confident) | set(pseudo)):
        kept = confident.get(image_id, [])
        candidates = pseudo.get(image_id, [])
        overlap = mask_ious(candidates, kept)
        merged += kept + [{**det, "source": "proposal"} for det, row in zip(candidates, overlap)
                          if not len(row) or row.max() < overlap_iou]
    return merged


