"""Segmentation metrics: semantic (mIoU after cluster matching) and object (foreground IoU, max F-beta).

Pure functions of arrays and paths. Instance metrics (COCO mask AP/AR) are in :mod:`unseg.evaluation.instance_metrics`.

Conventions used throughout:

* A *confusion matrix* has predicted clusters on the rows and ground-truth classes on the columns:
  ``confusion[p, c]`` counts the labelled pixels that the predictor put in cluster ``p`` and whose true class is
  ``c``. Pixels whose ground truth is :data:`~unseg.core.io.IGNORE_LABEL` (255) are never counted.
* A *mapping* is an int64 array of shape (num_predicted,): ``mapping[p]`` is the class that cluster ``p`` is
  matched to, or ``-1`` when the cluster is unmatched. Pixels of an unmatched cluster are wrong: they are false
  negatives of their true class and false positives of no class.
* Every returned score is a **percentage** (0..100), including max F-beta. A score that is undefined (a class
  absent from both ground truth and prediction, an instance-count group with no instances) is ``None`` in the
  returned dicts, so that they stay strict JSON.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment

from unseg.core.io import IGNORE_LABEL, read_label_png

MATCHING_METHODS = ("hungarian", "majority")


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
            raise ValueError(f"{name}: prediction has shape {prediction.shape} "
                             f"but ground truth has shape {target.shape}")
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
        raise ValueError(
            f"{error} (prediction {current['prediction']!r}, ground truth {current['ground_truth']!r})"
        ) from None


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
