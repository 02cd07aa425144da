"""Spectral decomposition of per-image feature affinities: multi-k clustering, bipartition saliency.

All functions work on one image's token grid, as arrays; the stage runners live in :mod:`unseg.stages`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage

from .cluster import kmeans


def cosine_affinity(features: np.ndarray) -> np.ndarray:
    """(N, D) features → (N, N) float32 cosine similarities."""
    features = torch.as_tensor(np.asarray(features, dtype=np.float32))
    features = torch.nn.functional.normalize(features, dim=-1)
    return (features @ features.T).numpy()


def laplacian_eigenvectors(affinity: np.ndarray, num_vectors: int) -> tuple[np.ndarray, np.ndarray]:
    """Smallest eigenpairs of the symmetric normalised Laplacian of a non-negative-clipped affinity.

    The affinity is thresholded at zero (W · (W > 0), as in Deep Spectral Methods), then
    L = I − D^{-1/2} W D^{-1/2}.

    Args:
        affinity: (N, N) symmetric float array.
        num_vectors: K, how many of the smallest eigenpairs to return.

    Returns:
        eigenvalues (K,) float32 ascending, eigenvectors (N, K) float32 (unit columns of L_sym).
    """
    weights = torch.as_tensor(np.asarray(affinity, dtype=np.float32)).clamp(min=0)
    inv_sqrt_degree = weights.sum(dim=1).clamp(min=1e-12).rsqrt()
    normalized = inv_sqrt_degree[:, None] * weights * inv_sqrt_degree[None, :]
    laplacian = torch.eye(len(weights)) - normalized
    # A dense symmetric solve: N is a few hundred tokens per image here; issue #4 brings the batched fast path.
    eigenvalues, eigenvectors = torch.linalg.eigh(laplacian)
    return eigenvalues[:num_vectors].numpy(), eigenvectors[:, :num_vectors].numpy()


def spectral_clustering(
    affinity: np.ndarray, num_clusters: int, seed: int = 0, eigenvectors: np.ndarray | None = None
) -> np.ndarray:
    """Ng–Jordan–Weiss spectral clustering: k-means on the row-normalised K smallest Laplacian eigenvectors.

    Args:
        affinity: (N, N) float array.
        eigenvectors: optional (N, >= K) smallest eigenvectors already computed for this affinity (multi-k
            clustering solves once for the largest k).

    Returns:
        (N,) int64 cluster labels in [0, num_clusters).
    """
    if eigenvectors is None:
        _, eigenvectors = laplacian_eigenvectors(affinity, num_clusters)
    embedding = eigenvectors[:, :num_clusters]
    embedding = embedding / np.linalg.norm(embedding, axis=1, keepdims=True).clip(min=1e-12)
    labels, _, _ = kmeans(embedding, num_clusters, seed=seed, num_restarts=5)
    return labels


def connected_components(mask: np.ndarray, min_area: int = 1) -> list[np.ndarray]:
    """Split an (h, w) bool mask into its 4-connected components with at least ``min_area`` cells."""
    labelled, count = ndimage.label(mask)
    components = [labelled == index for index in range(1, count + 1)]
    return [component for component in components if component.sum() >= min_area]


def border_fraction(mask: np.ndarray) -> float:
    """Fraction of the image border cells (outer ring of an (h, w) grid) that the mask covers."""
    border = np.ones_like(mask, dtype=bool)
    border[1:-1, 1:-1] = False
    return float(mask[border].mean())


@dataclass
class GridMask:
    """One mask on the token grid and how it was made."""

    mask: np.ndarray  # (h, w) bool
    k: int  # number of clusters of the clustering that produced it
    cluster: int  # cluster index within that clustering
    component: int  # connected-component index within the cluster (0 when not split)
    coherence: float  # mean affinity between the mask's tokens, in [-1, 1]


def multik_masks(
    features: np.ndarray,
    ks: tuple[int, ...] = (2, 3, 4, 5),
    split_components: bool = True,
    min_area: int = 2,
    seed: int = 0,
) -> list[GridMask]:
    """Engstler et al. (2023): spectral clustering of one image's tokens for every k, masks of all clusters.

    Args:
        features: (h, w, D) float token grid (e.g. last-block keys).
        ks: the numbers of clusters.
        split_components: split each cluster into its connected components.
        min_area: drop masks (components) with fewer cells.

    Returns:
        masks of every clustering, in order of k, cluster and component.
    """
    grid_h, grid_w, _ = features.shape
    affinity = cosine_affinity(features.reshape(grid_h * grid_w, -1))
    ks = tuple(k for k in ks if k <= grid_h * grid_w)
    if not ks:
        return []
    _, eigenvectors = laplacian_eigenvectors(affinity, max(ks))  # one solve serves every k
    results: list[GridMask] = []
    for k in ks:
        labels = spectral_clustering(affinity, k, seed=seed, eigenvectors=eigenvectors).reshape(grid_h, grid_w)
        for cluster in range(k):
            cluster_mask = labels == cluster
            parts = connected_components(cluster_mask, min_area) if split_components else (
                [cluster_mask] if cluster_mask.sum() >= min_area else []
            )
            for component, part in enumerate(parts):
                flat = part.reshape(-1)
                coherence = float(affinity[np.ix_(flat, flat)].mean())
                results.append(GridMask(part, k, cluster, component, coherence))
    return results


def bipartition_saliency(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Foreground by a k = 2 spectral bipartition; the side covering less of the image border is foreground.

    The split is the sign of the generalised Fiedler vector x = D^{-1/2} u₂ (the normalised-cut relaxation).

    Args:
        features: (h, w, D) float token grid.

    Returns:
        foreground (h, w) bool, and a soft map (h, w) float32 in [0, 1] with 0.5 at the split, higher = more salient.
    """
    grid_h, grid_w, _ = features.shape
    affinity = cosine_affinity(features.reshape(grid_h * grid_w, -1))
    _, vectors = laplacian_eigenvectors(affinity, 2)
    degree = np.clip(affinity, 0, None).sum(axis=1)
    fiedler = (vectors[:, 1] / np.sqrt(np.clip(degree, 1e-12, None))).reshape(grid_h, grid_w)
    positive = fiedler > 0
    # Foreground touches the border less; on a tie, the smaller side is the object.
    flip = (border_fraction(positive), positive.sum()) > (border_fraction(~positive), (~positive).sum())
    if flip:
        fiedler = -fiedler
    soft = 0.5 + 0.5 * fiedler / max(float(np.abs(fiedler).max()), 1e-12)
    return fiedler > 0, soft.astype(np.float32)
