"""Evaluations of frozen features against ground truth (MaskContrast protocols).

* :func:`linear_probe` — a 1×1 convolution on frozen token grids, trained on one set's ground truth and scored on
  another; mean and std over seeds.
* :func:`kmeans_evaluation` — k-means of the per-token embeddings into as many clusters as classes, Hungarian-matched
  mIoU; mean and std over seeds.
* :func:`object_kmeans_evaluation` — MaskContrast's own k-means protocol: one prototype per image (the mean
  embedding inside its foreground), PCA-whitened, k-means into the object classes, each image's foreground painted
  with its prototype's cluster; Hungarian-matched mIoU over seeds.
* :func:`segment_retrieval` — mean feature per predicted segment, nearest neighbours (faiss, cosine) among the
  ground-truth segments of a reference set, each query segment painted with the neighbours' majority class, mIoU.

Inputs are plain lists of arrays: token grids (h, w, D) float and ground-truth label maps (H, W) integer with
:data:`~unseg.core.io.IGNORE_LABEL` for void. A grid is upsampled bilinearly to its label map's size (grid cells at
patch
centres). Scores are percentages (see :mod:`unseg.stages.evaluate`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from unseg.core.geometry import ResizeGeometry, grid_to_image, image_to_grid
from unseg.core.io import IGNORE_LABEL
from unseg.evaluation.metrics import confusion_matrix, hungarian_match, segmentation_scores
from unseg.ops.cluster import kmeans

__all__ = ["upsample_grid", "linear_probe", "kmeans_evaluation", "object_kmeans_evaluation", "segment_embeddings",
           "segment_retrieval"]


def upsample_grid(values: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(C, h, w) grid values → (C, H, W) float32 at pixel resolution ``size`` = (H, W), bilinearly.

    Cell centres sit at patch centres: :func:`unseg.core.geometry.grid_to_image` for a plain resize (no crop).
    """
    values = np.asarray(values, dtype=np.float32)
    size = (int(size[0]), int(size[1]))
    return grid_to_image(values, ResizeGeometry(size, size, tuple(values.shape[-2:])))


def _check_pairs(tokens: Sequence[np.ndarray], labels: Sequence[np.ndarray], what: str) -> None:
    if len(tokens) != len(labels):
        raise ValueError(f"{what}: {len(tokens)} token grids but {len(labels)} label maps")
    if not tokens:
        raise ValueError(f"{what}: no image")
    for index, grid in enumerate(tokens):
        if np.ndim(grid) != 3:
            raise ValueError(f"{what}: token grid {index} must be (h, w, D), got shape {np.shape(grid)}")


def _class_fractions(label_map: np.ndarray, grid_size: tuple[int, int], num_classes: int) -> np.ndarray:
    """(h, w, C) fraction of each cell's pixels that carry each class (void pixels count for no class)."""
    return np.stack([image_to_grid(label_map == c, grid_size) for c in range(num_classes)], axis=-1)


def _summary(values: Sequence[float]) -> tuple[float, float]:
    return float(np.mean(values)), float(np.std(values))


def _scores_over_seeds(per_seed: list[dict[str, Any]], seeds: Sequence[int]) -> dict[str, Any]:
    mious = [scores["miou"] for scores in per_seed]
    accuracies = [scores["pixel_accuracy"] for scores in per_seed]
    miou_mean, miou_std = _summary(mious)
    accuracy_mean, accuracy_std = _summary(accuracies)
    return {
        "miou_mean": miou_mean,
        "miou_std": miou_std,
        "pixel_accuracy_mean": accuracy_mean,
        "pixel_accuracy_std": accuracy_std,
        "seeds": [int(seed) for seed in seeds],
        "miou_per_seed": mious,
    }


def linear_probe(
    train_tokens: Sequence[np.ndarray],
    train_labels: Sequence[np.ndarray],
    test_tokens: Sequence[np.ndarray],
    test_labels: Sequence[np.ndarray],
    num_classes: int,
    seeds: Sequence[int] = (0,),
    steps: int = 200,
    learning_rate: float = 0.01,
    weight_decay: float = 1e-4,
    class_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Linear probe: a 1×1 conv (a linear map per token) on standardised frozen tokens.

    Each training token's target is the fraction of its cell's pixels in each class; the loss is the soft cross
    entropy weighted by the cell's labelled fraction (full batch, AdamW, ``steps`` steps). At test time the logits
    are upsampled to the label maps and arg-maxed; classes are known, so no matching (identity mapping).

    Args:
        train_tokens, test_tokens: per image (h, w, D) float token grids.
        train_labels, test_labels: per image (H, W) integer class maps, 0..num_classes-1 or 255.
        num_classes: C, background included.
        seeds: one probe per seed (initialisation); scores are averaged.

    Returns:
        dict with ``miou_mean``, ``miou_std``, ``pixel_accuracy_mean``, ``pixel_accuracy_std``, ``seeds``,
        ``miou_per_seed`` and ``per_class_iou`` (of the first seed's probe).
    """
    _check_pairs(train_tokens, train_labels, "linear probe train set")
    _check_pairs(test_tokens, test_labels, "linear probe test set")
    features = torch.from_numpy(
        np.concatenate([np.asarray(g, np.float32).reshape(-1, g.shape[-1]) for g in train_tokens])
    )
    targets = torch.from_numpy(
        np.concatenate(
            [
                _class_fractions(np.asarray(label_map), g.shape[:2], num_classes).reshape(-1, num_classes)
                for g, label_map in zip(train_tokens, train_labels)
            ]
        )
    )
    weights = targets.sum(1)
    keep = weights > 0
    features, targets, weights = features[keep], targets[keep] / weights[keep, None], weights[keep]
    if len(features) == 0:
        raise ValueError("linear probe train set has no labelled pixel")
    mean, std = features.mean(0), features.std(0).clamp(min=1e-6)
    features = (features - mean) / std

    per_seed = []
    for seed in seeds:
        torch.manual_seed(int(seed))
        layer = torch.nn.Linear(features.shape[1], num_classes)
        optimizer = torch.optim.AdamW(layer.parameters(), lr=learning_rate, weight_decay=weight_decay)
        for _ in range(steps):
            loss = -(targets * torch.log_softmax(layer(features), dim=1)).sum(1).mul(weights).sum() / weights.sum()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
        with torch.no_grad():
            for grid, label_map in zip(test_tokens, test_labels):
                tokens = (torch.from_numpy(np.asarray(grid, np.float32)) - mean) / std
                logits = layer(tokens).permute(2, 0, 1).numpy()  # (C, h, w)
                prediction = upsample_grid(logits, np.shape(label_map)).argmax(0)
                confusion += confusion_matrix(prediction, label_map, num_classes, num_classes)
        per_seed.append(segmentation_scores(confusion, np.arange(num_classes), class_names))
    result = _scores_over_seeds(per_seed, seeds)
    result["per_class_iou"] = per_seed[0]["per_class_iou"]
    return result


def kmeans_evaluation(
    tokens: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    num_classes: int,
    seeds: Sequence[int] = (0, 1, 2, 3, 4),
    num_clusters: int | None = None,
    class_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """K-means of the L2-normalised per-token embeddings of all images, Hungarian mIoU; one run per seed.

    Each token's cluster is painted over its pixels (one-hot cluster maps upsampled bilinearly, then arg-maxed),
    the confusion is accumulated over all images and matched once per seed.

    Args:
        tokens: per image (h, w, D) float token grids.
        labels: per image (H, W) integer class maps, 0..num_classes-1 or 255.
        num_classes: C, background included.
        seeds: k-means seeds (MaskContrast reports 5).
        num_clusters: K (default C).

    Returns:
        dict with ``miou_mean``, ``miou_std``, ``pixel_accuracy_mean``, ``pixel_accuracy_std``, ``seeds``,
        ``miou_per_seed``, ``num_clusters``.
    """
    _check_pairs(tokens, labels, "k-means evaluation")
    num_clusters = int(num_clusters or num_classes)
    points = np.concatenate([np.asarray(g, np.float32).reshape(-1, g.shape[-1]) for g in tokens])
    points /= np.maximum(np.linalg.norm(points, axis=1, keepdims=True), 1e-12)
    offsets = np.cumsum([0] + [g.shape[0] * g.shape[1] for g in tokens])
    per_seed = []
    for seed in seeds:
        assignment, _, _ = kmeans(points, num_clusters, seed=int(seed), num_restarts=1)
        confusion = np.zeros((num_clusters, num_classes), dtype=np.int64)
        for index, (grid, label_map) in enumerate(zip(tokens, labels)):
            cells = assignment[offsets[index] : offsets[index + 1]].reshape(grid.shape[:2])
            one_hot = (cells[None] == np.arange(num_clusters)[:, None, None]).astype(np.float32)
            prediction = upsample_grid(one_hot, np.shape(label_map)).argmax(0)
            confusion += confusion_matrix(prediction, label_map, num_clusters, num_classes)
        per_seed.append(segmentation_scores(confusion, hungarian_match(confusion), class_names))
    result = _scores_over_seeds(per_seed, seeds)
    result["num_clusters"] = num_clusters
    return result


def foreground_prototype(grid: np.ndarray, foreground: np.ndarray) -> np.ndarray | None:
    """(D,) unit prototype of one image: its L2-normalised tokens summed with weight = the foreground fraction of
    each cell, over the cells more than half foreground (MaskContrast's ``sal * (sal > 0.5)``; every cell with any
    foreground when none is); None for an image without foreground.

    Args:
        grid: (h, w, D) float token grid.
        foreground: (H, W) bool foreground at pixel resolution.
    """
    grid = np.asarray(grid, dtype=np.float32)
    grid = grid / np.maximum(np.linalg.norm(grid, axis=-1, keepdims=True), 1e-12)
    fractions = image_to_grid(np.asarray(foreground, dtype=bool), grid.shape[:2])
    weights = np.where(fractions > 0.5, fractions, 0.0) if (fractions > 0.5).any() else fractions
    if weights.sum() <= 0:
        return None
    summed = (grid * weights[..., None]).sum((0, 1))
    return summed / max(float(np.linalg.norm(summed)), 1e-12)


def pca_whiten(points: np.ndarray, components: int) -> tuple[np.ndarray, int]:
    """(N, D) → ((N, c) projections, c): the points on their top c = min(components, D, N // 10) principal axes,
    each divided by its standard deviation (MaskContrast whitens its 1,449 VOC prototypes to 32 components); the
    points unchanged and c = 0 when c < 2. Whitening lifts every kept axis to unit variance, noise axes too: with
    few points per axis k-means then splits along noise (8 prototypes on 2 whitened axes, one planted and one noise,
    were split wrongly under one seed in two), hence at least 10 points per axis."""
    count = min(int(components), points.shape[1], points.shape[0] // 10)
    if count < 2:
        return points, 0
    centred = points - points.mean(0, keepdims=True)
    _, singular, axes = np.linalg.svd(centred.astype(np.float64), full_matrices=False)
    scale = singular[:count] / max(points.shape[0] - 1, 1) ** 0.5
    return (centred @ axes[:count].T / np.maximum(scale, 1e-12)).astype(np.float32), count


def object_kmeans_evaluation(
    tokens: Sequence[np.ndarray],
    foregrounds: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    num_classes: int,
    seeds: Sequence[int] = (0, 1, 2, 3, 4),
    pca_components: int = 32,
    class_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """MaskContrast's k-means protocol (``segmentation/utils/kmeans_utils.py``): per image the
    :func:`foreground_prototype`, PCA-whitened (:func:`pca_whiten`), k-means into C - 1 clusters; the image's
    foreground pixels get its cluster + 1, the rest background 0; the confusion over all images is Hungarian-matched
    (background matched like any class), once per seed.

    Args:
        tokens: per image (h, w, D) float token grids.
        foregrounds: per image (H, W) bool foreground (the same for every feature set compared, so that only the
            embeddings differ).
        labels: per image (H, W) integer class maps, 0..num_classes-1 or 255.
        num_classes: C, background included (C >= 2).

    Returns:
        dict with ``miou_mean``, ``miou_std``, ``pixel_accuracy_mean``, ``pixel_accuracy_std``, ``seeds``,
        ``miou_per_seed``, ``num_clusters`` (C - 1), ``num_prototypes`` (images with foreground),
        ``pca_components`` (used; 0 for none).
    """
    _check_pairs(tokens, labels, "object k-means evaluation")
    if len(foregrounds) != len(tokens):
        raise ValueError(f"object k-means evaluation: {len(foregrounds)} foreground maps for {len(tokens)} images")
    prototypes = [foreground_prototype(grid, foreground) for grid, foreground in zip(tokens, foregrounds)]
    owners = [index for index, prototype in enumerate(prototypes) if prototype is not None]
    num_clusters = int(num_classes) - 1
    if num_clusters < 1 or len(owners) < num_clusters:
        raise ValueError(f"object k-means evaluation: {len(owners)} images with foreground for {num_clusters} "
                         "object clusters")
    points, used_components = pca_whiten(np.stack([prototypes[i] for i in owners]).astype(np.float32), pca_components)
    per_seed = []
    for seed in seeds:
        assignment, _, _ = kmeans(np.ascontiguousarray(points), num_clusters, seed=int(seed), num_restarts=1)
        cluster_of = dict(zip(owners, assignment.tolist()))
        confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
        for index, (foreground, label_map) in enumerate(zip(foregrounds, labels)):
            prediction = np.zeros(np.shape(label_map), dtype=np.int64)
            if index in cluster_of:
                prediction[np.asarray(foreground, dtype=bool)] = cluster_of[index] + 1
            confusion += confusion_matrix(prediction, label_map, num_classes, num_classes)
        per_seed.append(segmentation_scores(confusion, hungarian_match(confusion), class_names))
    result = _scores_over_seeds(per_seed, seeds)
    result.update(num_clusters=num_clusters, num_prototypes=len(owners), pca_components=used_components)
    return result


def segment_embeddings(
    grid: np.ndarray, segment_map: np.ndarray, ignore_label: int = IGNORE_LABEL
) -> tuple[list[int], np.ndarray]:
    """Mean token embedding of every segment of one image.

    Args:
        grid: (h, w, D) float token grid.
        segment_map: (H, W) integer map; each value other than ``ignore_label`` is one segment.

    Returns:
        (segment values in increasing order, (S, D) float32 embeddings: tokens averaged with weights = the fraction
        of each cell covered by the segment). A segment too small to cover any cell is left out.
    """
    grid = np.asarray(grid, dtype=np.float32)
    values, embeddings = [], []
    for value in np.unique(segment_map):
        if value == ignore_label:
            continue
        weights = image_to_grid(segment_map == value, grid.shape[:2])
        if weights.sum() <= 0:
            continue
        values.append(int(value))
        embeddings.append((grid * weights[..., None]).sum((0, 1)) / weights.sum())
    return values, np.asarray(embeddings, dtype=np.float32).reshape(len(values), grid.shape[-1])


def segment_retrieval(
    query_tokens: Sequence[np.ndarray],
    query_segments: Sequence[np.ndarray],
    query_labels: Sequence[np.ndarray],
    reference_tokens: Sequence[np.ndarray],
    reference_labels: Sequence[np.ndarray],
    num_classes: int,
    num_neighbours: int = 1,
    classes: Sequence[int] | None = None,
    class_names: Sequence[str] | None = None,
    query_ids: Sequence[Any] | None = None,
    reference_ids: Sequence[Any] | None = None,
) -> dict[str, Any]:
    """Segment retrieval (MaskContrast): classify each predicted segment by its nearest reference segments.

    Reference segments are the ground-truth class regions of the reference images (one per class per image),
    labelled with their class. Every query segment (a value of a predicted segment map) gets the majority class of
    its ``num_neighbours`` nearest reference segments (cosine similarity of mean embeddings, faiss inner product;
    ties go to the nearest), and its pixels are painted with that class; then mIoU against the query ground truth.

    Args:
        query_tokens, reference_tokens: per image (h, w, D) float token grids.
        query_segments: per query image (H, W) integer predicted segments (255 = none).
        query_labels, reference_labels: per image (H, W) ground-truth class maps (0..num_classes-1, 255 void).
        num_classes: C, background included.
        classes: evaluate on this subset of class ids only (e.g. MaskContrast's 7 VOC classes): other classes' pixels
            become void in the query ground truth and their reference segments are dropped; default all classes.
        class_names: names of the kept classes, in the order of ``classes``.
        query_ids, reference_ids: image identities; when given, a query never retrieves segments of its own image
            (leave-one-image-out, for a reference set that contains the queries).

    Returns:
        ``segmentation_scores`` of the painted maps (``miou``, ``pixel_accuracy``, ``per_class_iou``, ...) plus
        ``num_query_segments``, ``num_reference_segments``, ``num_neighbours``.
    """
    import faiss

    _check_pairs(query_tokens, query_labels, "segment retrieval queries")
    _check_pairs(reference_tokens, reference_labels, "segment retrieval references")
    if len(query_segments) != len(query_tokens):
        raise ValueError(f"{len(query_segments)} segment maps for {len(query_tokens)} query images")
    kept = list(range(num_classes)) if classes is None else [int(c) for c in classes]
    remap = np.full(256, IGNORE_LABEL, dtype=np.int64)
    remap[kept] = np.arange(len(kept))  # class id -> position in the kept subset; others void

    if (query_ids is None) != (reference_ids is None):
        raise ValueError("give both query_ids and reference_ids, or neither")
    reference_ids = list(reference_ids) if reference_ids is not None else list(range(len(reference_tokens)))
    query_ids = list(query_ids) if query_ids is not None else [object() for _ in query_tokens]  # matches nothing
    reference_classes, reference_embeddings, reference_owner = [], [], []
    for image_id, grid, label_map in zip(reference_ids, reference_tokens, reference_labels):
        values, embeddings = segment_embeddings(grid, remap[np.asarray(label_map)])
        reference_classes += values
        reference_owner += [image_id] * len(values)
        reference_embeddings.append(embeddings)
    if not reference_classes:
        raise ValueError("segment retrieval: the reference set has no labelled segment of the evaluated classes")
    reference = np.concatenate(reference_embeddings)
    faiss.normalize_L2(reference)
    index = faiss.IndexFlatIP(reference.shape[1])
    index.add(reference)
    reference_classes = np.asarray(reference_classes)
    neighbours_k = min(int(num_neighbours), len(reference_classes))
    # search deep enough that neighbours_k remain after dropping the query image's own segments
    search_k = min(len(reference_classes), neighbours_k + max(Counter(reference_owner).values()))

    unassigned = len(kept)  # extra row for pixels of no query segment: wrong, matched to no class
    confusion = np.zeros((len(kept) + 1, len(kept)), dtype=np.int64)
    num_queries = 0
    for query_id, grid, segments, label_map in zip(query_ids, query_tokens, query_segments, query_labels):
        segments = np.asarray(segments)
        values, embeddings = segment_embeddings(grid, segments)
        painted = np.full(segments.shape, unassigned, dtype=np.int64)
        if values:
            faiss.normalize_L2(embeddings)
            _, neighbours = index.search(embeddings, search_k)
            for value, row in zip(values, neighbours):
                row = [r for r in row if r >= 0 and reference_owner[r] != query_id][:neighbours_k]
                if not row:
                    continue
                retrieved = reference_classes[row].tolist()  # nearest first
                votes = Counter(retrieved)
                top = max(votes.values())
                painted[segments == value] = next(c for c in retrieved if votes[c] == top)
            num_queries += len(values)
        confusion += confusion_matrix(painted, remap[np.asarray(label_map)], len(kept) + 1, len(kept))
    scores = segmentation_scores(confusion, np.append(np.arange(len(kept)), -1), class_names)
    scores.update(num_query_segments=num_queries, num_reference_segments=int(len(reference_classes)),
                  num_neighbours=neighbours_k)
    return scores
