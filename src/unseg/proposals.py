"""Stage runners for spectral masks, saliency maps and filtered proposals (paths in, artifacts out).

Artifacts:
- masks: a COCO results list (``masks.json``): image_id, segmentation (RLE at original resolution), score,
  and the ``k``, ``cluster`` and ``component`` that made each mask. The mask score is its coherence, the mean
  cosine affinity between its tokens.
- saliency: one PNG per image (``{name}.png``, uint8 = round(255 × soft foreground), original resolution);
  foreground is ``value > 127``.
- proposals: a COCO results list like masks, after the saliency filter and NMS, each with
  ``salient_fraction``; score = salient_fraction × coherence, so masks that are salient and coherent rank first.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils
from tqdm.auto import tqdm

from .features import FeatureStore, grid_to_image
from .io import atomic_output, decode_rle, encode_rle, read_json, write_json
from .spectral import bipartition_saliency, multik_masks


def grid_mask_to_image(grid_mask: np.ndarray, store: FeatureStore, name: str) -> np.ndarray:
    """(h, w) bool token mask → (H0, W0) bool, bilinear on the 0/1 values then threshold at 0.5."""
    return grid_to_image(grid_mask.astype(np.float32), store.geometry(name)) > 0.5


def run_masks(
    store_path: str | Path,
    out_json: str | Path,
    ks: Sequence[int] = (2, 3, 4, 5),
    facet: str = "keys",
    split_components: bool = True,
    min_area_fraction: float = 0.015,
    seed: int = 0,
    progress: bool = True,
) -> int:
    """Multi-k spectral masks for every image in a feature store → COCO results JSON. Returns the mask count.

    Args:
        min_area_fraction: masks (after the component split) covering fewer than this fraction of the token grid
            are dropped; at least one cell.
    """
    store = FeatureStore(store_path)
    results = []
    for name in tqdm(store.names, desc="spectral masks", unit="img", disable=not progress):
        image_id = store.image_id(name)
        features = store.facet(name, facet)
        min_area_cells = max(1, math.ceil(min_area_fraction * features.shape[0] * features.shape[1]))
        for grid_mask in multik_masks(features, tuple(ks), split_components, min_area_cells, seed):
            pixels = grid_mask_to_image(grid_mask.mask, store, name)
            if not pixels.any():
                continue
            results.append(
                {
                    "image_id": image_id,
                    "category_id": 1,
                    "segmentation": encode_rle(pixels),
                    "score": round(grid_mask.coherence, 6),
                    "area": int(pixels.sum()),
                    "k": grid_mask.k,
                    "cluster": grid_mask.cluster,
                    "component": grid_mask.component,
                }
            )
    write_json(out_json, results, indent=None)
    return len(results)


def run_saliency(
    store_path: str | Path, out_dir: str | Path, facet: str = "keys", progress: bool = True
) -> list[str]:
    """Bipartition saliency for every image → ``out_dir/{name}.png`` soft maps (written as one atomic folder)."""
    store = FeatureStore(store_path)
    with atomic_output(out_dir) as tmp:
        tmp.mkdir(parents=True)
        for name in tqdm(store.names, desc="saliency", unit="img", disable=not progress):
            _, soft = bipartition_saliency(store.facet(name, facet))
            soft_pixels = np.clip(grid_to_image(soft, store.geometry(name)), 0.0, 1.0)
            Image.fromarray(np.round(soft_pixels * 255).astype(np.uint8), mode="L").save(tmp / f"{name}.png")
    return store.names


def read_saliency(saliency_dir: str | Path, name: str) -> np.ndarray:
    """(H0, W0) float32 soft foreground in [0, 1] written by :func:`run_saliency`."""
    path = Path(saliency_dir) / f"{name}.png"
    with Image.open(path) as image:
        return np.asarray(image, dtype=np.float32) / 255.0


def mask_nms(detections: list[dict], iou_threshold: float) -> list[dict]:
    """Greedy non-maximum suppression by mask IoU, within one image.

    Args:
        detections: dicts with RLE ``segmentation`` and ``score``.

    Returns:
        the kept detections, highest score first; a mask is dropped when its IoU with a kept one exceeds the
        threshold.
    """
    ordered = sorted(detections, key=lambda det: -det["score"])
    if not ordered:
        return []
    rles = [{"size": det["segmentation"]["size"], "counts": det["segmentation"]["counts"].encode("ascii")} for det in ordered]
    ious = mask_utils.iou(rles, rles, [0] * len(rles))
    kept: list[int] = []
    for index in range(len(ordered)):
        if all(ious[index, other] <= iou_threshold for other in kept):
            kept.append(index)
    return [ordered[index] for index in kept]


def filter_proposals(
    detections: list[dict], saliency: np.ndarray, min_salient_fraction: float = 0.5, nms_iou: float = 0.5
) -> list[dict]:
    """Keep one image's masks that are mostly salient, rescore them, and deduplicate by NMS.

    Args:
        detections: that image's masks (COCO results dicts).
        saliency: (H0, W0) float soft foreground; a pixel is salient when > 0.5.
    """
    salient = saliency > 0.5
    kept = []
    for det in detections:
        pixels = decode_rle(det["segmentation"])
        fraction = float(salient[pixels].mean()) if pixels.any() else 0.0
        if fraction >= min_salient_fraction:
            kept.append({**det, "salient_fraction": round(fraction, 6), "score": round(fraction * max(det["score"], 0.0), 6)})
    return mask_nms(kept, nms_iou)


def run_proposals(
    masks_json: str | Path,
    saliency_dir: str | Path,
    names_by_id: dict[int, str],
    out_json: str | Path,
    min_salient_fraction: float = 0.5,
    nms_iou: float = 0.5,
) -> int:
    """Saliency filter + NMS over all images' masks → COCO results JSON. Returns the proposal count."""
    by_image: dict[int, list[dict]] = {}
    for det in read_json(masks_json):
        by_image.setdefault(int(det["image_id"]), []).append(det)
    proposals = []
    for image_id, detections in sorted(by_image.items()):
        saliency = read_saliency(saliency_dir, names_by_id[image_id])
        proposals.extend(filter_proposals(detections, saliency, min_salient_fraction, nms_iou))
    write_json(out_json, proposals, indent=None)
    return len(proposals)
