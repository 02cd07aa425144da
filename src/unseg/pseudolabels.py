"""Pseudo-labels: K-means of per-proposal features into pseudo-classes, painted into semantic label PNGs.

MaskDistill-style: each proposal gets the mean of its tokens (L2-normalised), weighted by how much of each token
cell the mask covers; faiss k-means groups them into ``num_clusters`` pseudo-classes; each image's label map paints
its proposals in order of increasing score (the most confident mask wins overlaps) with ``cluster + 1``, and 0
(background) elsewhere.

The saliency filter lets through masks of background next to objects (a bipartition's foreground is generous), and
k-means would spend a pseudo-class on them. So k-means makes ``num_clusters + background_clusters`` clusters, and
the ``background_clusters`` whose centroids lie nearest the background prototype (the mean feature of the
non-salient cells of all images) are painted as background. On the synthetic default this lifts the pseudo-label
mIoU from about 47 % to about 73 % (see the closing note of the walking-skeleton issue).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .cluster import kmeans
from .geometry import image_to_grid
from .io import atomic_output, decode_rle, read_json, write_json, write_label_png
from .store import FeatureStore


def mask_feature(features: np.ndarray, coverage: np.ndarray) -> np.ndarray:
    """Coverage-weighted mean of a token grid, L2-normalised.

    Args:
        features: (h, w, D) float.
        coverage: (h, w) float in [0, 1], the fraction of each cell inside the mask.

    Returns:
        (D,) float32 unit vector (zeros when the mask covers nothing).
    """
    weights = coverage.reshape(-1, 1).astype(np.float32)
    total = float(weights.sum())
    if total <= 0:
        return np.zeros(features.shape[-1], dtype=np.float32)
    mean = (features.reshape(-1, features.shape[-1]) * weights).sum(axis=0) / total
    return (mean / max(float(np.linalg.norm(mean)), 1e-12)).astype(np.float32)


def assign_background_clusters(centroids: np.ndarray, background_prototype: np.ndarray, num_background: int) -> np.ndarray:
    """Map k-means clusters to labels: the ``num_background`` clusters most similar (cosine) to the background
    prototype become 0, the others 1..K-num_background in their original order.

    Args:
        centroids: (K, D) float.
        background_prototype: (D,) float.

    Returns:
        (K,) int64 label of each cluster.
    """
    unit = centroids / np.linalg.norm(centroids, axis=1, keepdims=True).clip(min=1e-12)
    similarity = unit @ (background_prototype / max(float(np.linalg.norm(background_prototype)), 1e-12))
    background = set(np.argsort(-similarity, kind="stable")[:num_background].tolist())
    labels, next_label = np.zeros(len(centroids), dtype=np.int64), 1
    for cluster in range(len(centroids)):
        if cluster not in background:
            labels[cluster], next_label = next_label, next_label + 1
    return labels


def paint_label_map(masks: list[np.ndarray], scores: list[float], labels: list[int], shape: tuple[int, int]) -> np.ndarray:
    """Paint masks into an (H, W) uint8 map, lowest score first so the most confident mask wins; 0 elsewhere."""
    label_map = np.zeros(shape, dtype=np.uint8)
    for index in np.argsort(scores, kind="stable"):
        label_map[masks[index]] = labels[index]
    return label_map


def run_pseudolabels(
    proposals_json: str | Path,
    store_path: str | Path,
    saliency_dir: str | Path,
    names_by_id: dict[int, str],
    out_dir: str | Path,
    num_clusters: int,
    background_clusters: int = 1,
    min_score: float = 0.0,
    facet: str = "tokens",
    seed: int = 0,
    num_restarts: int = 5,
    progress: bool = True,
) -> dict:
    """Cluster proposals into pseudo-classes; write ``out_dir/{name}.png`` for every image and
    ``out_dir/pseudolabels.json`` (the kept proposals with ``category_id``: 0 background, 1..num_clusters).

    Args:
        saliency_dir: the saliency maps the proposals were filtered with (for the background prototype).
        background_clusters: extra k-means clusters that absorb background-like masks (0 turns this off).
        min_score: proposals scoring below this are neither clustered nor painted.

    Returns:
        a summary: proposal counts, cluster sizes, k-means inertia.
    """
    from .io import read_saliency

    store = FeatureStore(store_path)
    all_proposals = read_json(proposals_json)
    proposals = [det for det in all_proposals if det["score"] >= min_score]
    total_clusters = num_clusters + background_clusters
    if len(proposals) < total_clusters:
        raise ValueError(
            f"{proposals_json}: {len(proposals)} proposals score >= {min_score}, too few for {total_clusters} clusters; "
            "lower 'clusters' or 'min_score', or loosen the proposal filter"
        )
    features, background = [], []
    for name in names_by_id.values():
        grid = store.facet(name, facet)
        salient = image_to_grid(read_saliency(saliency_dir, name) > 0.5, store.geometry(name))
        background.append(mask_feature(grid, 1.0 - salient))
    for det in tqdm(proposals, desc="mask features", unit="mask", disable=not progress):
        name = names_by_id[int(det["image_id"])]
        coverage = image_to_grid(decode_rle(det["segmentation"]), store.geometry(name))
        features.append(mask_feature(store.facet(name, facet), coverage))
    clusters, centroids, inertia = kmeans(np.stack(features), total_clusters, seed=seed, num_restarts=num_restarts)
    labels = assign_background_clusters(centroids, np.mean(background, axis=0), background_clusters)[clusters]

    by_image: dict[int, list[int]] = {}
    for position, det in enumerate(proposals):
        by_image.setdefault(int(det["image_id"]), []).append(position)
    labelled = [{**det, "category_id": int(labels[i])} for i, det in enumerate(proposals)]
    with atomic_output(out_dir) as tmp:
        tmp.mkdir(parents=True)
        for image_id, name in sorted(names_by_id.items()):
            positions = by_image.get(image_id, [])
            height, width = store.geometry(name).original_size
            label_map = paint_label_map(
                [decode_rle(proposals[p]["segmentation"]) for p in positions],
                [proposals[p]["score"] for p in positions],
                [int(labels[p]) for p in positions],
                (height, width),
            )
            write_label_png(tmp / f"{name}.png", label_map)
        write_json(tmp / "pseudolabels.json", labelled, indent=None)
    return {
        "num_proposals": len(all_proposals),
        "num_clustered": len(proposals),
        "label_sizes": np.bincount(labels, minlength=num_clusters + 1).tolist(),
        "inertia": inertia,
    }
