"""K-means, one implementation for the whole package: faiss on the CPU, torch on a GPU.

faiss-gpu wheels need a CUDA 12 runtime that cannot live beside torch's CUDA build here, so on CUDA the clustering
runs in torch (:func:`torch_kmeans`: k-means++ seeding, Lloyd iterations), checked against faiss on the same points
by the tests.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

SMALL_PROBLEM_SIZE = 1 << 20  # points × dimensions below which k-means runs single-threaded


def kmeans(
    points: np.ndarray, num_clusters: int, seed: int = 0, num_restarts: int = 3, iterations: int = 50,
    device: str | torch.device | None = None,
) -> tuple[np.ndarray, np.ndarray, float]:
    """Lloyd's k-means, best of ``num_restarts`` by inertia: faiss, or :func:`torch_kmeans` when ``device`` is a
    CUDA device.

    Args:
        points: (N, D) float array.
        num_clusters: K, at most N.

    Returns:
        labels (N,) int64 in [0, K), centroids (K, D) float32, inertia (sum of squared distances).
    """
    points = np.ascontiguousarray(points, dtype=np.float32)
    if points.ndim != 2:
        raise ValueError(f"kmeans expects (N, D) points, got shape {points.shape}")
    if not 1 <= num_clusters <= len(points):
        raise ValueError(f"cannot make {num_clusters} clusters from {len(points)} points")
    if device is not None and torch.device(device).type == "cuda":
        runs = [torch_kmeans(points, num_clusters, seed + restart, iterations, device)
                for restart in range(num_restarts)]
        return min(runs, key=lambda run: run[2])
    import faiss

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


@torch.no_grad()
def torch_kmeans(
    points: np.ndarray, num_clusters: int, seed: int = 0, iterations: int = 50, device: str | None = "cpu",
) -> tuple[np.ndarray, np.ndarray, float]:
    """k-means in torch on ``device``: k-means++ seeding (Arthur & Vassilvitskii, 2007), then Lloyd iterations
    until no assignment changes (at most ``iterations``); an emptied cluster is re-seeded at the point farthest from
    its centroid.

    Args:
        points: (N, D) float array.

    Returns:
        labels (N,) int64, centroids (K, D) float32, inertia — as :func:`kmeans`.
    """
    data = torch.as_tensor(np.ascontiguousarray(points, dtype=np.float32), device=device)
    generator = torch.Generator(device=data.device).manual_seed(int(seed))
    count = data.shape[0]
    first = torch.randint(count, (1,), generator=generator, device=data.device)
    centroids = data[first]
    nearest = torch.cdist(data, centroids).pow(2)[:, 0]
    for _ in range(1, num_clusters):
        weights = nearest.clamp(min=0)
        index = (torch.multinomial(weights / weights.sum(), 1, generator=generator) if weights.sum() > 0
                 else torch.randint(count, (1,), generator=generator, device=data.device))
        centroids = torch.cat([centroids, data[index]])
        nearest = torch.minimum(nearest, torch.cdist(data, data[index]).pow(2)[:, 0])
    labels = None
    for _ in range(iterations):
        distances = torch.cdist(data, centroids).pow(2)
        new_labels = distances.argmin(1)
        if labels is not None and torch.equal(new_labels, labels):
            break
        labels = new_labels
        sums = torch.zeros_like(centroids).index_add_(0, labels, data)
        sizes = torch.bincount(labels, minlength=num_clusters).to(data.dtype)
        empty = sizes == 0
        centroids = torch.where(empty[:, None], centroids, sums / sizes.clamp(min=1)[:, None])
        for cluster in torch.nonzero(empty).flatten().tolist():
            farthest = distances.gather(1, labels[:, None])[:, 0].argmax()
            centroids[cluster] = data[farthest]
    distances = torch.cdist(data, centroids).pow(2)
    labels = distances.argmin(1)
    inertia = float(distances.gather(1, labels[:, None]).sum())
    return labels.cpu().numpy().astype(np.int64), centroids.cpu().numpy(), inertia


def kmeans_over_seeds(
    points: np.ndarray, num_clusters: int, seeds: Sequence[int], device: str | None = None,
) -> tuple[np.ndarray, np.ndarray, dict[int, float]]:
    """One k-means per seed, the lowest inertia kept: (labels, centroids, {seed: inertia} of every run)."""
    runs = {int(seed): kmeans(points, num_clusters, seed=int(seed), num_restarts=1, device=device) for seed in seeds}
    best = min(runs, key=lambda seed: runs[seed][2])
    return runs[best][0], runs[best][1], {seed: run[2] for seed, run in runs.items()}
