"""Pseudo-labels: K-means of per-proposal features into pseudo-classes, painted into semantic label PNGs.

MaskDistill-style: each proposal gets the mean of its tokens (L2-normalised), weighted by how much of each token
cell the mask covers; faiss k-means groups them into ``num_clusters`` pseudo-classes; each image's label map paints
its proposals in order of increasing score (the most confident mask wins overlaps) with ``cluster + 1``, and 0
(background) elsewhere.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .cluster import kmeans
from .features import FeatureStore, image_to_grid
from .io import atomic_output, decode_rle, read_json, write_json, write_label_png


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


def paint_label_map(masks: list[np.ndarray], scores: list[float], labels: list[int], shape: tuple[int, int]) -> np.ndarray:
    """Paint masks into an (H, W) uint8 map, lowest score first so the most confident mask wins; 0 elsewhere."""
    label_map = np.zeros(shape, dtype=np.uint8)
    for index in np.argsort(scores, kind="stable"):
        label_map[masks[index]] = labels[index]
    return label_map


def run_pseudolabels(
    proposals_json: str | Path,
    store_path: str | Path,
    names_by_id: dict[int, str],
    out_dir: str | Path,
    num_clusters: int,
    facet: str = "tokens",
    seed: int = 0,
    num_restarts: int = 5,
    progress: bool = True,
) -> dict:
    """Cluster proposals into pseudo-classes; write ``out_dir/{name}.png`` for every image and
    ``out_dir/pseudolabels.json`` (the proposals with ``category_id`` = cluster + 1). Returns a summary."""
    store = FeatureStore(store_path)
    proposals = read_json(proposals_json)
    if len(proposals) < num_clusters:
        raise ValueError(
            f"{proposals_json}: {len(proposals)} proposals cannot make {num_clusters} pseudo-classes; "
            "lower 'clusters' or loosen the proposal filter"
        )
    features = []
    for det in tqdm(proposals, desc="mask features", unit="mask", disable=not progress):
        name = names_by_id[int(det["image_id"])]
        grid = store.facet(name, facet)
        coverage = image_to_grid(decode_rle(det["segmentation"]), grid.shape[:2])
        features.append(mask_feature(grid, coverage))
    assignments, _, inertia = kmeans(np.stack(features), num_clusters, seed=seed, num_restarts=num_restarts)

    by_image: dict[int, list[int]] = {}
    for position, det in enumerate(proposals):
        by_image.setdefault(int(det["image_id"]), []).append(position)
    labelled = [{**det, "category_id": int(assignments[i]) + 1} for i, det in enumerate(proposals)]
    with atomic_output(out_dir) as tmp:
        tmp.mkdir(parents=True)
        for image_id, name in sorted(names_by_id.items()):
            positions = by_image.get(image_id, [])
            height, width = store.geometry(name).original_size
            masks = [decode_rle(proposals[p]["segmentation"]) for p in positions]
            label_map = paint_label_map(
                masks, [proposals[p]["score"] for p in positions], [int(assignments[p]) + 1 for p in positions], (height, width)
            )
            write_label_png(tmp / f"{name}.png", label_map)
        write_json(tmp / "pseudolabels.json", labelled, indent=None)
    sizes = np.bincount(assignments, minlength=num_clusters)
    return {"num_proposals": len(proposals), "cluster_sizes": sizes.tolist(), "inertia": inertia}
