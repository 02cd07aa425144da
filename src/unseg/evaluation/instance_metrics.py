"""Class-agnostic instance metrics: COCO mask AP/AR (pycocotools) and recall by the number of same-class instances.

Scores are percentages (0..100); an undefined score is None (strict JSON). Detections and ground truth are COCO
dicts (RLE segmentations, as :mod:`unseg.core.io` writes them).
"""

from __future__ import annotations

import contextlib
import copy
import io
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from unseg.core.io import segmentation_rle

AP_KEYS = ("AP", "AP50", "AP75")
# COCO's object sizes by mask area in pixels: small < 32², medium < 96², large (pycocotools' areaRng)
SIZE_KEYS = {"small": ("APs", "ARs"), "medium": ("APm", "ARm"), "large": ("APl", "ARl")}


def _image_sizes(gt_coco: Mapping[str, Any]) -> dict[Any, tuple[int, int]]:
    return {image["id"]: (int(image["height"]), int(image["width"])) for image in gt_coco["images"]}


def _prepared_coco_inputs(
    gt_coco: Mapping[str, Any], detections: Sequence[Mapping[str, Any]], class_agnostic: bool
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Copies of the ground truth and detections ready for COCOeval (areas, ids, iscrowd filled in)."""
    sizes = _image_sizes(gt_coco)
    gt = {key: copy.deepcopy(value) for key, value in gt_coco.items() if key != "annotations"}
    annotations = []
    for index, annotation in enumerate(gt_coco.get("annotations", [])):
        annotation = copy.deepcopy(dict(annotation))
        height, width = sizes[annotation["image_id"]]
        annotation.setdefault("id", index + 1)
        annotation.setdefault("iscrowd", 0)
        if "area" not in annotation:
            annotation["area"] = float(mask_utils.area(segmentation_rle(annotation["segmentation"], height, width)))
        if class_agnostic:
            annotation["category_id"] = 1
        annotations.append(annotation)
    gt["annotations"] = annotations
    if class_agnostic:
        gt["categories"] = [{"id": 1, "name": "object"}]
    gt.setdefault("categories", [])
    unknown = {detection["image_id"] for detection in detections} - set(sizes)
    if unknown:
        raise ValueError(f"detections refer to image ids absent from the ground truth: {sorted(unknown)[:10]}")
    results = []
    for detection in detections:
        detection = copy.deepcopy(dict(detection))
        if "score" not in detection:
            raise ValueError("every detection needs a 'score'")
        if class_agnostic:
            detection["category_id"] = 1
        results.append(detection)
    return gt, results


def coco_mask_ap(
    gt_coco: Mapping[str, Any],
    detections: Sequence[Mapping[str, Any]],
    class_agnostic: bool = True,
    max_dets: Sequence[int] = (1, 10, 100),
) -> dict[str, Any]:
    """COCO mask AP/AR (pycocotools, iouType "segm") on in-memory ground truth and detections.

    Args:
        gt_coco: a COCO instances dict (``images`` with id/height/width, ``annotations`` with image_id,
            category_id and segmentation as polygons or RLE, ``categories``). ``area``/``iscrowd``/``id`` are
            filled in when missing. The input is not modified.
        detections: COCO result dicts: image_id, segmentation (compressed RLE, e.g. from
            :func:`unseg.core.io.encode_rle`), score, and category_id (unless class-agnostic).
        class_agnostic: set every category to a single "object" category (unsupervised setting).
        max_dets: three increasing per-image detection limits; AP uses the last, AR is reported for each.

    Returns:
        dict with ``AP`` (IoU .50:.95), ``AP50``, ``AP75`` at ``max_dets[-1]`` detections and ``AR{m}`` for each ``m``
        in max_dets (default keys AR1, AR10, AR100), all in percent over area range "all"; ``APs``, ``APm``, ``APl`` and
        ``ARs``, ``ARm``, ``ARl`` over COCO's small / medium / large objects (mask area under 32², under 96², above) at
        ``max_dets[-1]``; and ``num_detections``. An empty detection list gives zeros. With no ground-truth instance at
        all the scores are undefined and returned as None. pycocotools' console output is suppressed.
    """
    max_dets = [int(m) for m in max_dets]
    if len(max_dets) != 3 or sorted(max_dets) != max_dets:
        raise ValueError(f"max_dets must be three increasing limits, got {max_dets}")
    ar_keys = [f"AR{m}" for m in max_dets]
    gt, results = _prepared_coco_inputs(gt_coco, detections, class_agnostic)
    if not results:
        size_keys = [key for pair in SIZE_KEYS.values() for key in pair]
        return {**{key: 0.0 for key in (*AP_KEYS, *ar_keys, *size_keys)}, "num_detections": 0}

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(results)
        evaluator = COCOeval(coco_gt, coco_dt, iouType="segm")
        evaluator.params.maxDets = max_dets
        evaluator.params.useCats = 1
        evaluator.evaluate()
        evaluator.accumulate()

    params = evaluator.params
    area_all = params.areaRngLbl.index("all")
    precision = evaluator.eval["precision"][:, :, :, area_all, -1]  # (T, R, K) at max_dets[-1]
    recall = evaluator.eval["recall"][:, :, area_all, :]  # (T, K, M)

    def mean_valid(values: np.ndarray) -> float | None:
        valid = values[values > -1]
        return float(100.0 * valid.mean()) if valid.size else None

    def at_iou(threshold: float) -> np.ndarray:
        return precision[np.flatnonzero(np.isclose(params.iouThrs, threshold))]

    metrics: dict[str, Any] = {
        "AP": mean_valid(precision),
        "AP50": mean_valid(at_iou(0.5)),
        "AP75": mean_valid(at_iou(0.75)),
    }
    for index, key in enumerate(ar_keys):
        metrics[key] = mean_valid(recall[:, :, index])
    for area, (ap_key, ar_key) in SIZE_KEYS.items():
        area_index = params.areaRngLbl.index(area)
        metrics[ap_key] = mean_valid(evaluator.eval["precision"][:, :, :, area_index, -1])
        metrics[ar_key] = mean_valid(evaluator.eval["recall"][:, :, area_index, -1])
    metrics["num_detections"] = len(results)
    return metrics


def single_and_multi_ap(
    gt_coco: Mapping[str, Any], detections: Sequence[Mapping[str, Any]], class_agnostic: bool = True
) -> dict[str, dict[str, Any]]:
    """MaskDistill's protocol: "single" scores only the most confident detection per image, "multi" all of them.

    Returns:
        ``{"single": coco_mask_ap(...), "multi": coco_mask_ap(...)}``.
    """
    best: dict[Any, Mapping[str, Any]] = {}
    for detection in detections:
        current = best.get(detection["image_id"])
        if current is None or detection["score"] > current["score"]:
            best[detection["image_id"]] = detection
    return {
        "single": coco_mask_ap(gt_coco, list(best.values()), class_agnostic=class_agnostic),
        "multi": coco_mask_ap(gt_coco, detections, class_agnostic=class_agnostic),
    }


def recall_by_instance_count(
    gt_coco: Mapping[str, Any],
    detections: Sequence[Mapping[str, Any]],
    iou_threshold: float = 0.5,
    buckets: Sequence[int] = (1, 2, 3, 4, 5),
) -> dict[str, Any]:
    """Instance recall grouped by how many instances of the same category share the image (Engstler et al. 2023,
    Table 1).

    For each image and category, n = number of (non-crowd) ground-truth instances of that category in the image.
    An instance is recalled when any detection of that image (class-agnostic) has mask IoU >= ``iou_threshold``
    with it. Crowd annotations are ignored.

    Args:
        gt_coco: COCO instances dict (segmentations as polygons or RLE).
        detections: COCO result dicts with image_id and segmentation (RLE); categories and scores are ignored.
        iou_threshold: minimum mask IoU for an instance to count as recalled.
        buckets: the counts reported individually, which must be 1..k; larger counts form the group "{k+1}+".

    Returns:
        ``{"recall": {group: percent or None}, "num_instances": {group: int}, "iou_threshold": float}`` with
        groups "1", ..., "k", "{k+1}+" in that order (None where a group has no instance).
    """
    buckets = [int(bucket) for bucket in buckets]
    if not buckets or buckets != list(range(1, len(buckets) + 1)):
        raise ValueError(f"buckets must be 1, 2, ..., k; got {buckets}")
    overflow = f"{len(buckets) + 1}+"
    groups = [str(bucket) for bucket in buckets] + [overflow]
    sizes = _image_sizes(gt_coco)

    gt_by_image: dict[Any, list[Mapping[str, Any]]] = defaultdict(list)
    for annotation in gt_coco.get("annotations", []):
        if not annotation.get("iscrowd", 0):
            gt_by_image[annotation["image_id"]].append(annotation)
    detections_by_image: dict[Any, list[dict[str, Any]]] = defaultdict(list)
    for detection in detections:
        if detection["image_id"] not in sizes:
            raise ValueError(f"detection on image id {detection['image_id']!r} absent from the ground truth")
        height, width = sizes[detection["image_id"]]
        detections_by_image[detection["image_id"]].append(segmentation_rle(detection["segmentation"], height, width))

    num_instances = dict.fromkeys(groups, 0)
    num_recalled = dict.fromkeys(groups, 0)
    for image_id, image_annotations in gt_by_image.items():
        height, width = sizes[image_id]
        gt_rles = [segmentation_rle(annotation["segmentation"], height, width) for annotation in image_annotations]
        detected_rles = detections_by_image.get(image_id, [])
        if detected_rles:
            ious = np.asarray(mask_utils.iou(detected_rles, gt_rles, [0] * len(gt_rles))).reshape(
                len(detected_rles), len(gt_rles)
            )
            recalled = ious.max(axis=0) >= iou_threshold
        else:
            recalled = np.zeros(len(gt_rles), dtype=bool)
        per_category: dict[Any, list[int]] = defaultdict(list)
        for index, annotation in enumerate(image_annotations):
            per_category[annotation["category_id"]].append(index)
        for indices in per_category.values():
            group = str(len(indices)) if len(indices) <= len(buckets) else overflow
            num_instances[group] += len(indices)
            num_recalled[group] += int(recalled[indices].sum())

    return {
        "recall": {
            group: (100.0 * num_recalled[group] / num_instances[group] if num_instances[group] else None)
            for group in groups
        },
        "num_instances": num_instances,
        "iou_threshold": float(iou_threshold),
    }
