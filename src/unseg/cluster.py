"""K-means, one implementation for the whole package (faiss, CPU or GPU build)."""

from __future__ import annotations

import numpy as np

SMALL_PROBLEM_SIZE = 1 << 20  # points × dimensions below which k-means runs single-threaded


def kmeans(
    points: np.ndarray, num_clusters: int, seed: int = 0, num_restarts: int = 3, iterations: int = 50
) -> tuple[np.ndarray, np.ndarray, float]:
    """Lloyd's k-means with faiss, best of ``num_restarts`` by inertia.

    Args:
        points: (N, D) float array.
        num_clusters: K, at most N.

    Returns:
        labels (N,) int64 in [0, K), centroids (K, D) float32, inertia (sum of squared distances).
    """
    import faiss

    points = np.ascontiguousarray(points, dtype=np.float32)
    if points.ndim != 2:
        raise ValueError(f"kmeans expects (N, D) points, got shape {points.shape}")
    if not 1 <= num_clusters <= len(points):
        raise ValueError(f"cannot make {num_clusters} clusters from {len(points)} points")
    trainer = faiss.Kmeans(
        points.shape[1],
        num_clusters,
        niter=iterations,
        nredo=num_restarts,
        seed=int(seed),
        verbose=False,
        min_points_per_centroid=1,
        max_points_per_centroid=max(256, len(points)),
    )
    # Per-image problems (a few hundred points) run several times faster on one thread than on many, where
    # faiss's OpenMP start-up dominates; big problems keep all threads.
    threads = faiss.omp_get_max_threads()
    if len(points) * points.shape[1] < SMALL_PROBLEM_SIZE:
        faiss.omp_set_num_threads(1)
    try:
        trainer.train(points)
        distances, labels = trainer.index.search(points, 1)
    finally:
        faiss.omp_set_num_threads(threads)
    return labels[:, 0].astype(np.int64), trainer.centroids.copy(), float(distances.sum())
