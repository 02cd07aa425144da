"""Evaluation: semantic (mIoU after cluster matching), instance (COCO mask AP/AR), object (foreground IoU, max F-beta).

Pure functions of arrays, COCO-style dicts and paths; no Snakemake.

Conventions used throughout:

* A *confusion matrix* has predicted clusters on the rows and ground-truth classes on the columns:
  ``confusion[p, c]`` counts the labelled pixels that the predictor put in cluster ``p`` and whose true class is
  ``c``. Pixels whose ground truth is :data:`~unseg.io.IGNORE_LABEL` (255) are never counted.
* A *mapping* is an int64 array of shape (num_predicted,): ``mapping[p]`` is the class that cluster ``p`` is
  matched to, or ``-1`` when the cluster is unmatched. Pixels of an unmatched cluster are wrong: they are false
  negatives of their true class and false positives of no class.
* Every returned score is a **percentage** (0..100), including max F-beta. A score that is undefined (a class
  absent from both ground truth and prediction, an instance-count group with no instances) is ``None`` in the
  returned dicts, so that they stay strict JSON.
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
import os
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from scipy.optimize import linear_sum_assignment

from unseg.io import IGNORE_LABEL, atomic_output, read_json, read_label_png, write_json

__all__ = [
    "confusion_matrix",
    "hungarian_match",
    "majority_match",
    "segmentation_scores",
    "evaluate_semantic_arrays",
    "evaluate_semantic",
    "coco_mask_ap",
    "single_and_multi_ap",
    "recall_by_instance_count",
    "object_segmentation_scores",
    "write_report",
    "markdown_table",
    "run_evaluation",
]

MATCHING_METHODS = ("hungarian", "majority")
AP_KEYS = ("AP", "AP50", "AP75")


# ----------------------------------------------------------------------------------------------------------------
# Semantic segmentation
# ----------------------------------------------------------------------------------------------------------------


def confusion_matrix(
    prediction: np.ndarray,
    target: np.ndarray,
    num_predicted: int,
    num_classes: int,
    ignore_label: int | None = IGNORE_LABEL,
) -> np.ndarray:
    """Count pixels per (predicted cluster, ground-truth class) pair.

    Args:
        prediction: integer array of any shape (typically (H, W)) with cluster ids in ``0..num_predicted-1``.
        target: integer array of the same shape with class ids in ``0..num_classes-1`` or ``ignore_label``.
        num_predicted: number of predicted clusters (rows).
        num_classes: number of ground-truth classes (columns).
        ignore_label: target value whose pixels are skipped (``None``: skip nothing).

    Returns:
        (num_predicted, num_classes) int64 array; sum the matrices of several images to accumulate.

    Raises:
        ValueError: on a shape mismatch, or a prediction / non-ignored target value out of range.
    """
    prediction = np.asarray(prediction)
    target = np.asarray(target)
    if prediction.shape != target.shape:
        raise ValueError(f"prediction shape {prediction.shape} differs from target shape {target.shape}")
    prediction = prediction.reshape(-1)
    target = target.reshape(-1)
    if ignore_label is not None:
        labelled = target != ignore_label
        prediction = prediction[labelled]
        target = target[labelled]
    prediction = prediction.astype(np.int64)
    target = target.astype(np.int64)
    bad_prediction = (prediction < 0) | (prediction >= num_predicted)
    if bad_prediction.any():
        values = np.unique(prediction[bad_prediction])[:10].tolist()
        raise ValueError(f"prediction values {values} lie outside 0..{num_predicted - 1}")
    bad_target = (target < 0) | (target >= num_classes)
    if bad_target.any():
        values = np.unique(target[bad_target])[:10].tolist()
        raise ValueError(
            f"target values {values} lie outside 0..{num_classes - 1} and are not the ignore label {ignore_label}"
        )
    counts = np.bincount(prediction * num_classes + target, minlength=num_predicted * num_classes)
    return counts.reshape(num_predicted, num_classes).astype(np.int64)


def hungarian_match(confusion: np.ndarray) -> np.ndarray:
    """One-to-one matching of clusters to classes that maximises the matched pixel count.

    Args:
        confusion: (num_predicted, num_classes) pixel counts (see :func:`confusion_matrix`).

    Returns:
        (num_predicted,) int64 mapping cluster -> class; ``-1`` for clusters left unmatched (when there are more
        clusters than classes). With fewer clusters than classes, some classes receive no cluster.
    """
    confusion = np.asarray(confusion)
    if confusion.ndim != 2:
        raise ValueError(f"confusion must be 2-D, got shape {confusion.shape}")
    mapping = np.full(confusion.shape[0], -1, dtype=np.int64)
    rows, cols = linear_sum_assignment(confusion, maximize=True)
    mapping[rows] = cols
    return mapping


def majority_match(confusion: np.ndarray) -> np.ndarray:
    """Many-to-one matching: every cluster to the class that most of its pixels belong to.

    Args:
        confusion: (num_predicted, num_classes) pixel counts.

    Returns:
        (num_predicted,) int64 mapping; a cluster with no labelled pixel at all maps to ``-1``.
    """
    confusion = np.asarray(confusion)
    if confusion.ndim != 2:
        raise ValueError(f"confusion must be 2-D, got shape {confusion.shape}")
    mapping = confusion.argmax(axis=1).astype(np.int64)
    mapping[confusion.sum(axis=1) == 0] = -1
    return mapping


def _class_names(class_names: Sequence[str] | None, num_classes: int) -> list[str]:
    if class_names is None:
        return [f"class_{index}" for index in range(num_classes)]
    names = [str(name) for name in class_names]
    if len(names) != num_classes:
        raise ValueError(f"got {len(names)} class names for {num_classes} classes")
    if len(set(names)) != len(names):
        raise ValueError("class names must be unique")
    return names


def _percent(value: float) -> float | None:
    """A fraction as a percentage; NaN becomes None (strict JSON)."""
    return None if value is None or math.isnan(value) else float(100.0 * value)


def segmentation_scores(
    confusion: np.ndarray, mapping: np.ndarray | Sequence[int], class_names: Sequence[str] | None = None
) -> dict[str, Any]:
    """Per-class IoU, mIoU and pixel accuracy of clusters mapped to classes.

    The confusion is remapped to (num_classes, num_classes) — row = class a cluster was mapped to, column = true
    class — by summing the rows of the clusters matched to each class. Rows of unmatched clusters (mapping ``-1``)
    are left out: their pixels are false negatives of their true class, false positives of no class.

    Per class ``c``: IoU = TP / (TP + FP + FN). A class absent from both ground truth and prediction has an
    undefined IoU (NaN; ``None`` in the result) and is excluded from the mIoU; a class present in the ground truth
    but never predicted has IoU 0 and counts in the mIoU.

    Args:
        confusion: (num_predicted, num_classes) integer pixel counts.
        mapping: (num_predicted,) class per cluster, ``-1`` for unmatched.
        class_names: num_classes names (default ``class_0``, ``class_1``, ...).

    Returns:
        dict with ``miou`` and ``pixel_accuracy`` (percent; accuracy = TP sum / labelled pixels),
        ``per_class_iou`` (name -> percent or None), ``confusion`` (remapped, nested lists of int),
        ``unmatched_pixels`` (per true class, pixels that fell in unmatched clusters), ``num_labelled_pixels``.

    Raises:
        ValueError: on inconsistent shapes, a mapping value out of range, or no labelled pixel at all.
    """
    confusion = np.asarray(confusion, dtype=np.int64)
    if confusion.ndim != 2:
        raise ValueError(f"confusion must be 2-D, got shape {confusion.shape}")
    num_predicted, num_classes = confusion.shape
    mapping = np.asarray(mapping, dtype=np.int64).reshape(-1)
    if mapping.shape != (num_predicted,):
        raise ValueError(f"mapping has {mapping.size} entries for {num_predicted} clusters")
    if ((mapping < -1) | (mapping >= num_classes)).any():
        raise ValueError(f"mapping values must lie in -1..{num_classes - 1}")
    names = _class_names(class_names, num_classes)
    labelled_pixels = int(confusion.sum())
    if labelled_pixels == 0:
        raise ValueError("the confusion matrix counts no labelled pixel; scores are undefined")

    matched = mapping >= 0
    remapped = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(remapped, mapping[matched], confusion[matched])
    true_positives = np.diag(remapped)
    false_positives = remapped.sum(axis=1) - true_positives
    false_negatives = confusion.sum(axis=0) - true_positives  # includes pixels of unmatched clusters
    denominator = true_positives + false_positives + false_negatives
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(denominator > 0, true_positives / np.maximum(denominator, 1), np.nan)
    present = ~np.isnan(iou)
    miou = float(iou[present].mean()) if present.any() else float("nan")
    return {
        "miou": _percent(miou),
        "pixel_accuracy": _percent(true_positives.sum() / labelled_pixels),
        "per_class_iou": {name: _percent(float(value)) for name, value in zip(names, iou)},
        "confusion": remapped.tolist(),
        "unmatched_pixels": confusion[~matched].sum(axis=0).astype(np.int64).tolist(),
        "num_labelled_pixels": labelled_pixels,
    }


def evaluate_semantic_arrays(
    pairs: Iterable[tuple[str, np.ndarray, np.ndarray]],
    num_predicted: int,
    num_classes: int,
    matching: str = "hungarian",
    class_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Score predicted label maps against ground-truth label maps over a whole dataset.

    Ground-truth pixels equal to 255 are ignored. Prediction pixels equal to 255 (the predictor abstained) are
    counted as wrong: they go to an extra "no prediction" cluster that is never matched, so they are false
    negatives of their true class. The confusion is accumulated over all images, then matched once.

    Args:
        pairs: (name, prediction (H, W) int, ground truth (H, W) int) per image; the name is used in messages.
        num_predicted: number of predicted clusters (prediction values 0..num_predicted-1, or 255).
        num_classes: number of classes (ground-truth values 0..num_classes-1, or 255).
        matching: ``"hungarian"`` (one-to-one) or ``"majority"`` (many-to-one).
        class_names: num_classes names.

    Returns:
        dict with ``miou``, ``pixel_accuracy``, ``per_class_iou``, ``confusion`` (remapped), ``unmatched_pixels``,
        ``num_labelled_pixels`` (see :func:`segmentation_scores`), ``mapping`` (list of num_predicted ints),
        ``matching``, ``num_images`` and ``per_image_miou`` (name -> mIoU of that image under the dataset-wide
        mapping, over the classes present in its ground truth or prediction; None for an image without labelled
        pixel).

    Raises:
        ValueError: on no image, an unknown matching, a shape mismatch or out-of-range value (naming the image).
    """
    if matching not in MATCHING_METHODS:
        raise ValueError(f"matching must be one of {MATCHING_METHODS}, got {matching!r}")
    no_prediction = num_predicted  # extra row for pixels the predictor left at 255
    per_image: dict[str, np.ndarray] = {}
    for name, prediction, target in pairs:
        prediction = np.asarray(prediction)
        target = np.asarray(target)
        if prediction.shape != target.shape:
            raise ValueError(f"{name}: prediction has shape {prediction.shape} but ground truth has shape {target.shape}")
        prediction = prediction.astype(np.int64)
        abstained = prediction == IGNORE_LABEL
        if (prediction[~abstained] >= num_predicted).any():
            values = np.unique(prediction[~abstained & (prediction >= num_predicted)])[:10].tolist()
            raise ValueError(f"prediction {name}: values {values} outside 0..{num_predicted - 1}")
        prediction[abstained] = no_prediction
        try:
            per_image[name] = confusion_matrix(prediction, target, num_predicted + 1, num_classes, IGNORE_LABEL)
        except ValueError as error:
            raise ValueError(f"ground truth {name}: {error}") from None
    if not per_image:
        raise ValueError("no image to evaluate")
    confusion = np.sum(list(per_image.values()), axis=0)
    matcher = hungarian_match if matching == "hungarian" else majority_match
    mapping = matcher(confusion[:num_predicted])
    full_mapping = np.append(mapping, -1)
    scores = segmentation_scores(confusion, full_mapping, class_names)
    scores.update(
        mapping=mapping.tolist(),
        matching=matching,
        num_images=len(per_image),
        per_image_miou={
            name: segmentation_scores(image_confusion, full_mapping)["miou"] if image_confusion.sum() else None
            for name, image_confusion in per_image.items()
        },
    )
    return scores


def evaluate_semantic(
    pred_paths: Sequence[str | os.PathLike],
    gt_paths: Sequence[str | os.PathLike],
    num_predicted: int,
    num_classes: int,
    matching: str = "hungarian",
    class_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """:func:`evaluate_semantic_arrays` on paired label PNGs, (H, W) uint8 each, same order and same length.

    Images are named by their prediction file's stem in ``per_image_miou``; error messages name both files.
    """
    if len(pred_paths) != len(gt_paths):
        raise ValueError(f"{len(pred_paths)} prediction files but {len(gt_paths)} ground-truth files")
    current: dict[str, str] = {}  # the pair being scored when an error is raised

    def pairs() -> Iterable[tuple[str, np.ndarray, np.ndarray]]:
        for pred_path, gt_path in zip(pred_paths, gt_paths):
            current.update(prediction=str(pred_path), ground_truth=str(gt_path))
            yield Path(pred_path).stem, read_label_png(pred_path), read_label_png(gt_path)

    try:
        return evaluate_semantic_arrays(pairs(), num_predicted, num_classes, matching, class_names)
    except ValueError as error:
        if not current:
            raise
        raise ValueError(f"{error} (prediction {current['prediction']!r}, ground truth {current['ground_truth']!r})") from None


# ----------------------------------------------------------------------------------------------------------------
# Instance segmentation (COCO mask AP / AR)
# ----------------------------------------------------------------------------------------------------------------


def _to_rle(segmentation: Any, height: int, width: int) -> dict[str, Any]:
    """A COCO segmentation (polygons, uncompressed or compressed RLE) as a compressed RLE with bytes counts."""
    if isinstance(segmentation, list):  # polygons
        return mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    counts = segmentation["counts"]
    if isinstance(counts, list):  # uncompressed RLE
        return mask_utils.frPyObjects(segmentation, height, width)
    size = [int(segmentation["size"][0]), int(segmentation["size"][1])]
    if size != [height, width]:
        raise ValueError(f"mask of size {size} on an image of size {[height, width]}")
    return {"size": size, "counts": counts.encode("ascii") if isinstance(counts, str) else counts}


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
            annotation["area"] = float(mask_utils.area(_to_rle(annotation["segmentation"], height, width)))
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
            :func:`unseg.io.encode_rle`), score, and category_id (unless class-agnostic).
        class_agnostic: set every category to a single "object" category (unsupervised setting).
        max_dets: three increasing per-image detection limits; AP uses the last, AR is reported for each.

    Returns:
        dict with ``AP`` (IoU .50:.95), ``AP50``, ``AP75`` at ``max_dets[-1]`` detections and ``AR{m}`` for each
        ``m`` in max_dets (default keys AR1, AR10, AR100), all in percent over area range "all", plus
        ``num_detections``. An empty detection list gives zeros. With no ground-truth instance at all the scores
        are undefined and returned as None. pycocotools' console output is suppressed.
    """
    max_dets = [int(m) for m in max_dets]
    if len(max_dets) != 3 or sorted(max_dets) != max_dets:
        raise ValueError(f"max_dets must be three increasing limits, got {max_dets}")
    ar_keys = [f"AR{m}" for m in max_dets]
    gt, results = _prepared_coco_inputs(gt_coco, detections, class_agnostic)
    if not results:
        return {**{key: 0.0 for key in (*AP_KEYS, *ar_keys)}, "num_detections": 0}

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
        detections_by_image[detection["image_id"]].append(_to_rle(detection["segmentation"], height, width))

    num_instances = dict.fromkeys(groups, 0)
    num_recalled = dict.fromkeys(groups, 0)
    for image_id, annotations in gt_by_image.items():
        height, width = sizes[image_id]
        gt_rles = [_to_rle(annotation["segmentation"], height, width) for annotation in annotations]
        detected_rles = detections_by_image.get(image_id, [])
        if detected_rles:
            ious = np.asarray(mask_utils.iou(detected_rles, gt_rles, [0] * len(gt_rles))).reshape(
                len(detected_rles), len(gt_rles)
            )
            recalled = ious.max(axis=0) >= iou_threshold
        else:
            recalled = np.zeros(len(gt_rles), dtype=bool)
        per_category: dict[Any, list[int]] = defaultdict(list)
        for index, annotation in enumerate(annotations):
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


# ----------------------------------------------------------------------------------------------------------------
# Object (foreground / saliency) segmentation
# ----------------------------------------------------------------------------------------------------------------


def _max_fbeta_curve(soft: np.ndarray, gt: np.ndarray, beta2: float) -> np.ndarray:
    """F-beta of one image at the 255 thresholds k/255, k = 1..255 (foreground where soft >= threshold)."""
    bins = np.clip(np.floor(soft.astype(np.float64) * 255.0 + 1e-6), 0, 255).astype(np.int64)
    foreground_hist = np.bincount(bins[gt], minlength=256)
    background_hist = np.bincount(bins[~gt], minlength=256)
    true_positives = np.cumsum(foreground_hist[::-1])[::-1][1:].astype(np.float64)  # (255,) soft >= k/255
    false_positives = np.cumsum(background_hist[::-1])[::-1][1:].astype(np.float64)
    predicted = true_positives + false_positives
    precision = np.divide(true_positives, predicted, out=np.zeros_like(predicted), where=predicted > 0)
    num_foreground = float(gt.sum())
    recall = true_positives / num_foreground if num_foreground > 0 else np.zeros_like(true_positives)
    denominator = beta2 * precision + recall
    numerator = (1.0 + beta2) * precision * recall
    return np.divide(numerator, denominator, out=np.zeros_like(numerator), where=denominator > 0)


def object_segmentation_scores(
    pred_fg: Sequence[np.ndarray],
    gt_fg: Sequence[np.ndarray],
    soft: Sequence[np.ndarray] | None = None,
    beta2: float = 0.3,
) -> dict[str, Any]:
    """Foreground/background scores used for unsupervised object segmentation and saliency detection.

    Args:
        pred_fg: per image an (H, W) bool predicted foreground mask.
        gt_fg: per image an (H, W) bool ground-truth foreground mask (same shapes).
        soft: optional per image (H, W) float foreground scores in [0, 1], for max F-beta.
        beta2: beta squared of the F-measure (0.3, as in the saliency literature).

    Returns:
        dict (all scores in **percent**, 0..100):
        ``mean_iou``: mean over images of the foreground IoU (an image where both masks are empty scores 100);
        ``dataset_iou``: summed intersections / summed unions over the dataset;
        ``pixel_accuracy``: mean over images of the fraction of correctly classified pixels;
        ``max_fbeta`` and ``max_fbeta_threshold`` (only when ``soft`` is given): per image, F-beta at the 255
        thresholds k/255 (k = 1..255; precision taken as 0 where nothing is predicted, F as 0 where the image has
        no foreground), averaged over images, then maximised over thresholds; the threshold is a fraction;
        ``num_images``.
    """
    if len(pred_fg) != len(gt_fg):
        raise ValueError(f"{len(pred_fg)} predicted masks but {len(gt_fg)} ground-truth masks")
    if not gt_fg:
        raise ValueError("no image to evaluate")
    if soft is not None and len(soft) != len(gt_fg):
        raise ValueError(f"{len(soft)} soft maps but {len(gt_fg)} ground-truth masks")
    ious, accuracies = [], []
    total_intersection = total_union = 0
    fbeta_curves = []
    for index, (prediction, target) in enumerate(zip(pred_fg, gt_fg)):
        prediction = np.asarray(prediction).astype(bool)
        target = np.asarray(target).astype(bool)
        if prediction.shape != target.shape:
            raise ValueError(f"image {index}: prediction shape {prediction.shape} != ground truth {target.shape}")
        intersection = int(np.count_nonzero(prediction & target))
        union = int(np.count_nonzero(prediction | target))
        ious.append(intersection / union if union else 1.0)
        accuracies.append(float(np.mean(prediction == target)))
        total_intersection += intersection
        total_union += union
        if soft is not None:
            scores = np.asarray(soft[index], dtype=np.float64)
            if scores.shape != target.shape:
                raise ValueError(f"image {index}: soft map shape {scores.shape} != ground truth {target.shape}")
            if not np.all((scores >= 0.0) & (scores <= 1.0)):
                raise ValueError(f"image {index}: soft map values must lie in [0, 1]")
            fbeta_curves.append(_max_fbeta_curve(scores, target, beta2))
    result: dict[str, Any] = {
        "mean_iou": 100.0 * float(np.mean(ious)),
        "dataset_iou": 100.0 * (total_intersection / total_union if total_union else 1.0),
        "pixel_accuracy": 100.0 * float(np.mean(accuracies)),
    }
    if soft is not None:
        mean_curve = np.mean(fbeta_curves, axis=0)
        best = int(np.argmax(mean_curve))
        result["max_fbeta"] = 100.0 * float(mean_curve[best])
        result["max_fbeta_threshold"] = (best + 1) / 255.0
    result["num_images"] = len(gt_fg)
    return result


# ----------------------------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------------------------

_HEADLINE_LABELS = {
    "miou": "mIoU",
    "pixel_accuracy": "Pixel accuracy",
    "mean_iou": "Foreground IoU (mean over images)",
    "dataset_iou": "Foreground IoU (dataset)",
    "max_fbeta": "max F-beta",
    "miou_mean": "mIoU (mean over seeds)",
    "miou_std": "mIoU (std over seeds)",
    "pixel_accuracy_mean": "Pixel accuracy (mean over seeds)",
    "AP": "AP",
    "AP50": "AP50",
    "AP75": "AP75",
    "AR1": "AR@1",
    "AR10": "AR@10",
    "AR100": "AR@100",
}
_KNOWN_KEYS = set(_HEADLINE_LABELS) | {
    "title",
    "per_class_iou",
    "confusion",
    "unmatched_pixels",
    "mapping",
    "matching",
    "num_images",
    "num_labelled_pixels",
    "num_detections",
    "max_fbeta_threshold",
    "single",
    "multi",
    "recall_by_instance_count",
    "per_image_miou",
}


def format_value(value: Any) -> str:
    """A metric value as report text: numbers to 1 decimal, None / NaN as "n/a"."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return "n/a" if math.isnan(value) else f"{float(value):.1f}"
    return str(value)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    """Lines of a Markdown table (numbers to 1 decimal, None as "n/a"), followed by a blank line."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(format_value(cell) for cell in row) + " |" for row in rows]
    return lines + [""]


def is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (str, bool, int, float, np.integer, np.floating))


def _render_section(title: str, value: Any, level: int = 2) -> list[str]:
    """A generic section: a key/value table for a flat dict, nested headings for nested dicts."""
    lines = [f"{'#' * level} {title}", ""]
    if isinstance(value, Mapping):
        scalars = [(key, item) for key, item in value.items() if is_scalar(item)]
        if scalars:
            lines += markdown_table(["Key", "Value"], scalars)
        for key, item in value.items():
            if isinstance(item, Mapping) and all(is_scalar(v) for v in item.values()):
                lines += [f"{'#' * (level + 1)} {key}", ""] + markdown_table(["Key", "Value"], list(item.items()))
    elif is_scalar(value):
        lines += [format_value(value), ""]
    else:
        lines += [f"`{value}`", ""]
    return lines


def _render_metrics(metrics: Mapping[str, Any], level: int = 2) -> list[str]:
    """Markdown lines for one metrics dict; section headings at ``level``."""
    h = "#" * level
    lines: list[str] = []
    details = [
        f"{label}: {format_value(metrics[key])}"
        for key, label in (("num_images", "images"), ("matching", "matching"), ("num_detections", "detections"))
        if key in metrics
    ]
    if details:
        lines += [", ".join(details), ""]

    headline = [(label, metrics[key]) for key, label in _HEADLINE_LABELS.items() if key in metrics]
    headline += [
        (f"AR@{key[2:]}", metrics[key])
        for key in metrics
        if key.startswith("AR") and key[2:].isdigit() and key not in _HEADLINE_LABELS
    ]
    if headline:
        lines += [f"{h} Headline", ""] + markdown_table(["Metric", "Value (%)"], headline)

    ap_sets = [name for name in ("single", "multi") if isinstance(metrics.get(name), Mapping)]
    if ap_sets:
        keys = [key for key in metrics[ap_sets[0]] if key.startswith(("AP", "AR"))]
        lines += [f"{h} Class-agnostic mask AP (single / multi detections per image)", ""]
        lines += markdown_table(["Protocol", *keys], [[name, *(metrics[name].get(key) for key in keys)] for name in ap_sets])

    per_class = metrics.get("per_class_iou")
    if isinstance(per_class, Mapping) and per_class:
        lines += [f"{h} Per-class IoU", ""] + markdown_table(["Class", "IoU (%)"], list(per_class.items()))

    if "mapping" in metrics:
        names = list(per_class) if isinstance(per_class, Mapping) else []

        def class_name(index: int) -> str:
            if index < 0:
                return "unmatched"
            return names[index] if index < len(names) else f"class_{index}"

        lines += [f"{h} Class mapping", ""]
        rows = [[cluster, class_name(int(index))] for cluster, index in enumerate(metrics["mapping"])]
        lines += markdown_table(["Cluster", "Class"], rows)

    recall = metrics.get("recall_by_instance_count")
    if isinstance(recall, Mapping) and "recall" in recall:
        threshold = recall.get("iou_threshold")
        heading = f"{h} Recall by number of instances of the category in the image"
        lines += [heading + (f" (mask IoU >= {threshold:g})" if threshold is not None else ""), ""]
        counts = recall.get("num_instances", {})
        lines += markdown_table(
            ["Instances per image", "Recall (%)", "Instances"],
            [[group, value, counts.get(group)] for group, value in recall["recall"].items()],
        )

    others = {key: value for key, value in metrics.items()
              if key not in _KNOWN_KEYS and not (key.startswith("AR") and key[2:].isdigit())}
    details = [(key, value) for key, value in others.items() if is_scalar(value)]
    details += [(key, ", ".join(format_value(v) for v in value)) for key, value in others.items()
                if isinstance(value, (list, tuple)) and all(is_scalar(v) for v in value)]
    if details:
        lines += [f"{h} Details", ""] + markdown_table(["Key", "Value"], details)
    for key, value in others.items():
        if isinstance(value, Mapping):
            lines += _render_section(str(key), value, level)

    return lines


def write_report(
    metrics: Mapping[str, Any],
    path_md: str | os.PathLike,
    title: str | None = None,
    sections: Mapping[str, Mapping[str, Any]] | None = None,
) -> None:
    """Write ``metrics`` (as returned by the functions above, possibly merged into one dict) as Markdown.

    Sections, each present only when its keys are: a headline table (mIoU, pixel accuracy, foreground IoU,
    max F-beta, AP/AR), single/multi AP table, per-class IoU table, class mapping (cluster -> class name; class
    names are taken from ``per_class_iou`` in order), recall by instance count (key
    ``recall_by_instance_count``), then any other dict entries as generic key/value sections. Numbers are given
    to 1 decimal. The file is written atomically.

    Args:
        metrics: the metrics dict.
        path_md: output Markdown path.
        title: report title (default ``metrics["title"]`` or "Evaluation report").
        sections: further titled metric dicts (e.g. "Proposals"), each rendered like ``metrics`` one heading level
            deeper.
    """
    title = title or metrics.get("title") or "Evaluation report"
    lines = [f"# {title}", ""] + _render_metrics(metrics)
    for section_title, section in (sections or {}).items():
        lines += [f"## {section_title}", ""] + _render_metrics(section, level=3)
    with atomic_output(path_md) as tmp:
        Path(tmp).write_text("\n".join(lines).rstrip("\n") + "\n")


# --------------------------------------------------------------------------------------------------------------
# The evaluate stage: predictions and proposals of one pipeline branch against the dataset's ground truth.


DEFAULT_OPTIONS: dict[str, Any] = {
    "crf": False,
    "facet": "tokens",
    "linear_probe": None,  # {"train_split": "train", "seeds": [0, 1, 2], "steps": 200}
    "kmeans": None,  # {"seeds": [0, 1, 2, 3, 4]}
    "retrieval": None,  # {"reference_split": "train", "num_neighbours": 1, "classes": {"7 classes": [...]}}
    "num_examples": 3,
}


def run_evaluation(
    index_csv: str | os.PathLike,
    dataset_root: str | os.PathLike,
    predictions_dir: str | os.PathLike,
    proposals_json: str | os.PathLike,
    out_metrics: str | os.PathLike,
    out_report: str | os.PathLike,
    split: str = "val",
    matching: str = "hungarian",
    num_classes: int | None = None,
    class_names: Sequence[str] | None = None,
    provenance: Mapping[str, Any] | None = None,
    out_html: str | os.PathLike | None = None,
    saliency_dir: str | os.PathLike | None = None,
    features_store: str | os.PathLike | None = None,
    options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Evaluate one branch on an index split; write ``metrics.json``, ``report.md`` and optionally ``report.html``.

    - semantic: predicted label PNGs (``predictions_dir/{name}.png``) vs SegmentationClass PNGs, matched over the
      whole split (background is class 0 and is matched like any class); per-image mIoU under that matching;
    - ``crf`` (option): the same after dense-CRF refinement of the predictions (key ``crf``; skipped with a note
      when pydensecrf is missing);
    - instances: class-agnostic mask AP/AR (single and multi) and recall by number of same-class instances, for the
      proposals and for the predicted instances (``predictions_dir/instances.json``), when instance ground truth
      exists;
    - ``saliency_dir``: the branch's saliency maps vs ground-truth foreground (label > 0, void ignored): key
      ``object_segmentation`` (foreground IoU, accuracy, max F-beta; hard masks at soft >= 0.5);
    - ``features_store`` with options ``kmeans``, ``linear_probe``, ``retrieval``: the feature evaluations of
      :mod:`unseg.probe` on the option ``facet`` (the probe and retrieval train on / retrieve from the option's
      ``train_split`` / ``reference_split``, evaluate on ``split``).

    Args:
        num_classes: object classes without background; default: the largest ground-truth label.
        class_names: names of the object classes (background is prepended).
        options: see :data:`DEFAULT_OPTIONS`.
    """
    import hashlib
    import json

    from .index import coco_ground_truth, index_split, read_index

    options = {**DEFAULT_OPTIONS, **(options or {})}
    index = read_index(index_csv)
    rows = index_split(index, split)
    metrics: dict[str, Any] = {"title": f"Evaluation on split '{split}' ({len(rows)} images)", "split": split}
    labelled = rows[rows["gt_semantic"] != ""].reset_index(drop=True)
    names: list[str] = []
    if len(labelled):
        pred_paths = [Path(predictions_dir) / f"{name}.png" for name in labelled["name"]]
        missing = [str(path) for path in pred_paths if not path.is_file()]
        if missing:
            raise FileNotFoundError(f"no prediction for {len(missing)} images, first {missing[0]!r}")
        num_predicted = max(_max_label(path) for path in pred_paths) + 1
        if num_classes is None:
            num_classes = max(_max_label(path) for path in labelled["gt_semantic"])
        names = ["background", *(class_names or [f"class_{i}" for i in range(1, num_classes + 1)])]
        metrics.update(
            evaluate_semantic(pred_paths, labelled["gt_semantic"].tolist(), num_predicted, num_classes + 1, matching, names)
        )
        if options["crf"]:
            metrics["crf"] = _crf_scores(labelled, pred_paths, num_predicted, num_classes + 1, matching, names)
        if saliency_dir is not None:
            metrics["object_segmentation"] = _saliency_scores(labelled, saliency_dir)
        if features_store is not None:
            metrics.update(_feature_evaluations(index, labelled, pred_paths, features_store, num_classes + 1, names, options))
    ground_truth = coco_ground_truth(rows, dataset_root)
    if ground_truth is not None and ground_truth["annotations"]:
        image_ids = {int(image_id) for image_id in rows["image_id"]}
        for key, path in (("predicted_instances", Path(predictions_dir) / "instances.json"), ("proposals", proposals_json)):
            detections = [det for det in read_json(path) if int(det["image_id"]) in image_ids]
            metrics[key] = {
                **single_and_multi_ap(ground_truth, detections),
                "recall_by_instance_count": recall_by_instance_count(ground_truth, detections),
            }
    metrics["provenance"] = dict(provenance or {})
    metrics["config_digest"] = hashlib.sha256(json.dumps(provenance or {}, sort_keys=True, default=str).encode()).hexdigest()[:16]
    write_json(out_metrics, metrics)

    section_titles = {
        "crf": "After dense-CRF post-processing",
        "object_segmentation": "Object segmentation: saliency vs ground-truth foreground",
        "kmeans": "K-means of frozen features (Hungarian, mean over seeds)",
        "linear_probe": "Linear probe on frozen features",
        "retrieval": "Segment retrieval",
        "proposals": "Proposals (class-agnostic)",
        "predicted_instances": "Predicted instances (class-agnostic)",
    }
    hidden = ("provenance", "confusion", "per_image_miou", *section_titles)
    report = {key: value for key, value in metrics.items() if key not in hidden}
    sections = {title: metrics[key] for key, title in section_titles.items() if key in metrics}
    write_report(report, out_report, sections=sections)
    if out_html is not None:
        _write_evaluation_html(metrics, out_html, labelled, predictions_dir, int(options["num_examples"]))
    return metrics


def _crf_scores(labelled, pred_paths, num_predicted: int, num_classes: int, matching: str, names) -> dict[str, Any]:
    """Semantic scores of CRF-refined predictions (hard labels turned into soft probabilities first)."""
    from .crf import crf_available, dense_crf_labels, labels_to_probabilities
    from .io import read_image

    if not crf_available():
        return {"skipped": "pydensecrf is not installed (pip install 'pydensecrf2==1.1')"}

    def refined():
        for pred_path, row in zip(pred_paths, labelled.itertuples()):
            prediction = read_label_png(pred_path)
            image = read_image(row.path)
            refined_labels = dense_crf_labels(image, labels_to_probabilities(prediction, num_predicted))
            yield row.name, refined_labels, read_label_png(row.gt_semantic)

    scores = evaluate_semantic_arrays(refined(), num_predicted, num_classes, matching, names)
    return {key: value for key, value in scores.items() if key not in ("confusion", "per_image_miou")}


def _saliency_scores(labelled, saliency_dir: str | os.PathLike) -> dict[str, Any]:
    """Object-segmentation scores of the saliency maps over the labelled images; void pixels left out."""
    from .proposals import read_saliency

    predicted, targets, soft = [], [], []
    for row in labelled.itertuples():
        target = read_label_png(row.gt_semantic)
        saliency = read_saliency(saliency_dir, row.name)
        if saliency.shape != target.shape:
            raise ValueError(f"saliency map of {row.name!r} in {str(saliency_dir)!r} has shape {saliency.shape}, ground truth {target.shape}")
        valid = target != IGNORE_LABEL
        targets.append(target[valid] > 0)  # 1-D: the scores are per-pixel, so flattening drops void pixels cleanly
        soft.append(saliency[valid])
        predicted.append(saliency[valid] >= 0.5)
    return object_segmentation_scores(predicted, targets, soft)


def _feature_evaluations(index, labelled, pred_paths, features_store, num_classes: int, names, options) -> dict[str, Any]:
    """K-means evaluation, linear probe and segment retrieval on the store's token grids (each when configured)."""
    from .features import FeatureStore
    from .index import index_split
    from . import probe

    store = FeatureStore(features_store)
    facet = options["facet"]

    def load(rows):
        return [store.facet(name, facet) for name in rows["name"]], [read_label_png(path) for path in rows["gt_semantic"]]

    def labelled_split(split_name: str):
        try:
            rows = index_split(index, split_name)
        except ValueError:
            return None
        rows = rows[rows["gt_semantic"] != ""]
        return rows if len(rows) else None

    tokens, labels = load(labelled)
    results: dict[str, Any] = {}
    if options.get("kmeans"):
        settings = options["kmeans"]
        results["kmeans"] = probe.kmeans_evaluation(tokens, labels, num_classes, seeds=settings.get("seeds", [0, 1, 2, 3, 4]), class_names=names)
    for key in ("linear_probe", "retrieval"):
        settings = options.get(key)
        if not settings:
            continue
        split_key = "train_split" if key == "linear_probe" else "reference_split"
        reference_split = settings.get(split_key, "train")
        reference_rows = labelled_split(reference_split)
        if reference_rows is None:
            results[key] = {"skipped": f"no labelled image in split {reference_split!r} (evaluate option {key}.{split_key})"}
            continue
        reference_tokens, reference_labels = load(reference_rows)
        note = {split_key: reference_split}
        if key == "linear_probe" and reference_split == _single_split(labelled):
            note["warning"] = "trained and scored on the same images: an optimistic upper bound"
        if key == "retrieval":
            note["leave_own_image_out"] = True
        if key == "linear_probe":
            results[key] = {**note, **probe.linear_probe(reference_tokens, reference_labels, tokens, labels, num_classes,
                                                          seeds=settings.get("seeds", [0]), steps=settings.get("steps", 200), class_names=names)}
        else:
            segments = [read_label_png(path) for path in pred_paths]
            own_images = {"query_ids": list(labelled["name"]), "reference_ids": list(reference_rows["name"])}
            results[key] = {**note, "all classes": _without_confusion(probe.segment_retrieval(
                tokens, segments, labels, reference_tokens, reference_labels, num_classes,
                num_neighbours=settings.get("num_neighbours", 1), class_names=names, **own_images))}
            for subset_name, subset in (settings.get("class_subsets") or {}).items():
                unknown = [c for c in subset if (c not in names) if isinstance(c, str)]
                if unknown:
                    raise ValueError(f"evaluate option retrieval.class_subsets.{subset_name}: unknown classes {unknown} (known: {names})")
                kept = [names.index(c) if isinstance(c, str) else int(c) for c in subset]
                results[key][subset_name] = _without_confusion(probe.segment_retrieval(
                    tokens, segments, labels, reference_tokens, reference_labels, num_classes,
                    num_neighbours=settings.get("num_neighbours", 1), classes=kept, class_names=[names[c] for c in kept],
                    **own_images))
            results[key]["miou"] = results[key]["all classes"]["miou"]
    return results


def _single_split(rows) -> str | None:
    """The split of the given index rows when they all share one, else None."""
    splits = set(rows["split"])
    return splits.pop() if len(splits) == 1 else None


def _without_confusion(scores: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in scores.items() if key not in ("confusion", "unmatched_pixels")}


def _write_evaluation_html(metrics, out_html, labelled, predictions_dir, num_examples: int) -> None:
    """report.html: headline cards, figures, tables, best and worst images with overlays."""
    from .audit import overlay_labels
    from .io import read_image, voc_palette
    from .report_html import confusion_figure, evaluation_sections, per_class_iou_figure, section_html, write_html_report

    headline = [(label, metrics[key]) for key, label in _HEADLINE_LABELS.items() if key in metrics]
    for key, label in (("crf", "mIoU + CRF"), ("linear_probe", "Linear probe mIoU"), ("kmeans", "K-means mIoU"), ("retrieval", "Retrieval mIoU")):
        value = metrics.get(key, {})
        if isinstance(value, Mapping) and (value.get("miou") is not None or value.get("miou_mean") is not None):
            headline.append((label, value.get("miou", value.get("miou_mean"))))
    saliency = metrics.get("object_segmentation")
    if saliency:
        headline += [("Saliency IoU", saliency["mean_iou"]), ("Saliency max F-beta", saliency.get("max_fbeta"))]
    for key, label in (("proposals", "Proposals AP50"), ("predicted_instances", "Instances AP50")):
        if key in metrics:
            headline.append((label, metrics[key]["multi"]["AP50"]))

    figures = []
    per_class = metrics.get("per_class_iou")
    if per_class:
        figures.append(("Per-class IoU after matching", per_class_iou_figure(per_class)))
        figures.append(("Confusion matrix after matching; each column normalised over the true class", confusion_figure(metrics["confusion"], list(per_class))))
    html_sections = evaluation_sections(metrics)
    details = {key: metrics[key] for key in ("split", "num_images", "num_labelled_pixels", "config_digest") if key in metrics}
    html_sections.append(("Details", section_html(details)))

    examples = []
    per_image = {name: value for name, value in (metrics.get("per_image_miou") or {}).items() if value is not None}
    if per_image and num_examples > 0:
        ranked = sorted(per_image, key=lambda name: per_image[name], reverse=True)
        chosen = [("best", name) for name in ranked[:num_examples]]
        chosen += [("worst", name) for name in ranked[::-1][:num_examples] if name not in ranked[:num_examples]]
        mapping = np.asarray(metrics["mapping"] + [-1] * 256, dtype=np.int64)[:256]
        mapping[mapping < 0] = IGNORE_LABEL
        rows_by_name = {row.name: row for row in labelled.itertuples()}
        for kind, name in chosen:
            row = rows_by_name[name]
            image = read_image(row.path)
            prediction = read_label_png(Path(predictions_dir) / f"{name}.png")
            mapped = mapping[prediction].astype(np.uint8)
            examples.append((f"{kind}: {name}", f"mIoU {per_image[name]:.1f} % (matched as over the whole split)",
                             [("image", image), ("ground truth", overlay_labels(image, read_label_png(row.gt_semantic))),
                              ("prediction (matched to classes)", overlay_labels(image, mapped))]))
    legend = [(name, color) for name, color in zip(per_class or {}, voc_palette().tolist()) if name != "background"]
    write_html_report(out_html, metrics.get("title", "Evaluation report"), headline, html_sections, figures, examples,
                      subtitle="All numbers in percent. Unmatched clusters are drawn white.",
                      legend=legend + [("unmatched / void", (255, 255, 255))])


def _max_label(path: str | os.PathLike) -> int:
    """Largest label in a label PNG, 255 (ignore) excluded."""
    labels = read_label_png(path)
    return int(labels[labels != IGNORE_LABEL].max(initial=0))
