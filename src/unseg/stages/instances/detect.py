"""A trained instances model's detections at the original resolution: :func:`detect_instances` runs the model
(on the stored tokens, or on images when its ViT was fine-tuned), pastes its masks back
(:func:`paste_detections`), rescores them by their tokens' coherence (:func:`rescore_by_coherence`) and optionally
snaps them to the image's edges with a dense CRF (:func:`refine_detections`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_utils
from tqdm.auto import tqdm

from unseg.core.checkpoints import read_model_checkpoint
from unseg.core.geometry import ResizeGeometry, boxes_to_original, image_to_grid, resize_and_crop
from unseg.core.io import decode_rle, encode_rle, read_image
from unseg.features.backbones import get_backbone_spec
from unseg.features.preprocess import normalize_batch
from unseg.features.store import FeatureStore
from unseg.ops.spectral import coverage_coherence, unit_rows
from unseg.stages.instances.model import FRAME_STRIDE
from unseg.training.data import token_tensor


def load_instance_model(model_path: str | Path, stored_tokens: bool = True) -> tuple[torch.nn.Module, dict]:
    """(model in eval mode, its config) of a checkpoint written by an instances method. With ``stored_tokens``, a
    model whose ViT stayed frozen is built without it: it reads the store's tokens, which are that ViT's output."""
    checkpoint, build_model = read_model_checkpoint(model_path, "instances")
    config = checkpoint["config"]
    without_vit = stored_tokens and not int(config.get("finetune_blocks", 0))
    model = build_model(config, images=False) if without_vit else build_model(config)
    state = checkpoint["state_dict"]
    if without_vit:  # a frozen ViT's trained state is none: only its placeholder head's buffers were saved
        state = {key: value for key, value in state.items() if not key.startswith("backbone.")}
    model.load_state_dict(state)
    return model.eval(), config


def paste_detections(boxes: torch.Tensor, scores: torch.Tensor, masks: torch.Tensor, geometry: ResizeGeometry,
                     patch_size: int, image_id: int, mask_threshold: float = 0.5, chunk: int = 16) -> list[dict]:
    """One image's detections in the model frame → COCO results at its original size.

    Args:
        boxes: (N, 4) float x1, y1, x2, y2 in model pixels; scores: (N,); masks: (N, 1, M, M) probabilities inside
            each box.

    Returns:
        per detection with a non-empty mask: image_id, category_id 1, segmentation (RLE), score, area, bbox
        ([x, y, w, h] of the mask, pycocotools' ``toBbox``), in the order given.
    """
    from torchvision.models.detection.roi_heads import paste_masks_in_image

    original = boxes_to_original(boxes.float().cpu(), geometry, patch_size, FRAME_STRIDE)
    results = []
    for start in range(0, len(original), chunk):  # (chunk, 1, H0, W0) floats at a time, not all N
        pasted = paste_masks_in_image(masks[start : start + chunk].float().cpu(), original[start : start + chunk],
                                      tuple(geometry.original_size))[:, 0] > mask_threshold
        for offset, mask in enumerate(pasted.numpy()):
            if not mask.any():
                continue
            rle = encode_rle(mask)
            compressed = {"size": rle["size"], "counts": rle["counts"].encode("ascii")}
            results.append({"image_id": int(image_id), "category_id": 1, "segmentation": rle,
                            "score": round(float(scores[start + offset]), 6), "area": int(mask.sum()),
                            "bbox": [round(float(v), 2) for v in mask_utils.toBbox(compressed)]})
    return results


RESCORE_RULES = ("coherence", "none")


def rescore_by_coherence(detections: list[dict], unit_features: np.ndarray, geometry: ResizeGeometry) -> list[dict]:
    """Each detection's score × max(0, the coherence of its mask): the mean cosine similarity of the tokens it
    covers, each token weighted by the fraction of its cell the mask covers (:func:`unseg.ops.spectral.
    coverage_coherence`), the quality the spectral masks are scored by. The model's own score is kept as
    ``detector_score``.

    A detector trained on multi-k proposals also learns their merges of touching objects, and scores them as
    confidently as single objects; their tokens are less alike (measured on the demo: AP50 72.3 → 93.0).

    Args:
        unit_features: (h·w, D) unit-norm tokens of the image.
    """
    rescored = []
    for det in detections:
        coherence = coverage_coherence(unit_features, image_to_grid(decode_rle(det["segmentation"]), geometry))
        rescored.append({**det, "detector_score": det["score"], "coherence": round(coherence, 6),
                         "score": round(det["score"] * max(coherence, 0.0), 6)})
    return rescored


def crf_window(mask: np.ndarray, margin: float = 0.25, min_margin: int = 16) -> tuple[slice, slice]:
    """The part of the image a detection's CRF looks at: its mask's bounding box grown on every side by ``margin``
    × its longer side (at least ``min_margin`` px), within the image. (H, W) bool mask → (rows, cols) slices."""
    rows, cols = np.nonzero(mask)
    top, bottom, left, right = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    grow = max(min_margin, int(round(margin * max(bottom - top, right - left))))
    return (slice(max(0, top - grow), min(mask.shape[0], bottom + grow)),
            slice(max(0, left - grow), min(mask.shape[1], right + grow)))


def refine_detections(detections: list[dict], image: np.ndarray) -> list[dict]:
    """Each detection's mask snapped to the image's edges by a dense CRF (:func:`unseg.stages.proposals.
    refine_mask_with_crf`, the proposals stage's ``crf``) inside its :func:`crf_window` (a hundred detections of a
    photo each on the whole image took ~17 s per image on this CPU), area and bbox recomputed, ``"crf": true``; a
    mask the CRF empties is dropped. Needs pydensecrf (the ``crf`` extra)."""
    from unseg.stages.proposals import refine_mask_with_crf

    refined = []
    for det in detections:
        coarse = decode_rle(det["segmentation"])
        rows, cols = crf_window(coarse)
        mask = np.zeros_like(coarse)
        mask[rows, cols] = refine_mask_with_crf(np.ascontiguousarray(image[rows, cols]), coarse[rows, cols])
        if mask.any():
            rle = encode_rle(mask)
            compressed = {"size": rle["size"], "counts": rle["counts"].encode("ascii")}
            refined.append({**det, "segmentation": rle, "area": int(mask.sum()), "crf": True,
                            "bbox": [round(float(v), 2) for v in mask_utils.toBbox(compressed)]})
    return refined


@torch.inference_mode()
def detect_instances(model: torch.nn.Module, config: Mapping[str, Any], store: FeatureStore, names: Sequence[str],
                     image_paths: Mapping[str, str | Path] | None = None, device: torch.device | None = None,
                     progress: bool = True, rescore: str = "coherence", rescore_facet: str = "keys",
                     crf: bool = False) -> list[dict]:
    """The model's detections on the named images (COCO results at each image's original size). A model that reads
    images gets the plain image in the store's geometry, else the stored tokens. ``rescore: coherence`` multiplies
    each score by the coherence of the model's mask on the ``rescore_facet`` (:func:`rescore_by_coherence`); then
    ``crf`` refines every mask with a dense CRF on the image (:func:`refine_detections`)."""
    if rescore not in RESCORE_RULES:
        raise ValueError(f"instances rescore {rescore!r}: one of {RESCORE_RULES}")
    if crf and image_paths is None:
        raise ValueError("instances crf: refining the detections reads the images; no image paths given")
    device = device or torch.device("cpu")
    model.to(device).eval()
    autocast_dtype = torch.bfloat16 if device.type == "cuda" else None
    reads = getattr(model, "reads_images", False)
    spec = get_backbone_spec(config["backbone"]) if reads else None
    results = []
    for name in tqdm(names, desc="detect instances", unit="img", disable=not progress):
        geometry = store.geometry(name)
        if reads:
            image = resize_and_crop(read_image(image_paths[name]), geometry)
            model_input = normalize_batch(image[None], spec.mean, spec.std)[0]
        else:
            model_input = token_tensor(store, name, config["facet"])[0]
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            found = model([model_input.to(device)])[0]
        pasted = paste_detections(found["boxes"], found["scores"], found["masks"], geometry, store.patch_size,
                                  store.image_id(name), config.get("mask_threshold", 0.5))
        if rescore == "coherence":  # of the model's own mask: the CRF's pixel edges are not what tokens judge
            pasted = rescore_by_coherence(pasted, unit_rows(store.facet(name, rescore_facet)), geometry)
        if crf:
            pasted = refine_detections(pasted, read_image(image_paths[name]))
        results += pasted
    return results


