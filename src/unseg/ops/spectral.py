"""Spectral masks of one image's token grid, as arrays: multi-k clustering (Engstler et al. 2023), Deep Spectral
Methods' masks (Melas-Kyriazi et al. 2022), the k = 2 bipartition saliency, and the mask geometry and coherence they
use. They take precomputed eigenvectors from :func:`unseg.ops.eigensolver.grid_spectra`; the stage runners live in
:mod:`unseg.stages.masks` and :mod:`unseg.stages.saliency`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from unseg.ops.cluster import kmeans
from unseg.ops.eigensolver import feature_laplacian_spectrum, laplacian_eigenvectors


def spectral_clustering(
    affinity: np.ndarray | None, num_clusters: int, seed: int = 0, eigenvectors: np.ndarray | None = None
) -> np.ndarray:
    """Ng–Jordan–Weiss spectral clustering: k-means on the row-normalised K smallest Laplacian eigenvectors.

    Args:
        affinity: (N, N) float array (unused, may be None, when ``eigenvectors`` is given).
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
    k: int  # number of clusters of the clustering that produced it (2 for an eigenvector's sign split)
    cluster: int  # cluster index within that clustering
    component: int  # connected-component index within the cluster (0 when not split)
    coherence: float  # mean cosine similarity between the mask's tokens, in [-1, 1]
    eigen_index: int | None = None  # deep_spectral: i >= 1 for eigenvector i's split, -1 for k-means of 1..K-1


def mask_coherence(unit_features: np.ndarray, mask: np.ndarray) -> float:
    """Mean pairwise cosine similarity of the masked tokens (self-pairs included) = ‖mean unit feature‖².

    Args:
        unit_features: (N, D) float unit-norm tokens; mask: N bools (any shape).
    """
    selected = unit_features[mask.reshape(-1)]
    return float(np.square(selected.mean(axis=0)).sum()) if len(selected) else 0.0


def coverage_coherence(unit_features: np.ndarray, coverage: np.ndarray) -> float:
    """:func:`mask_coherence` of a soft mask: ‖coverage-weighted mean unit feature‖² (0 for an empty mask).

    Args:
        unit_features: (N, D) float unit-norm tokens; coverage: N weights in [0, 1] (any shape), e.g. the fraction
            of each token cell a pixel mask covers (:func:`unseg.core.geometry.image_to_grid`).
    """
    weights = np.asarray(coverage, dtype=np.float64).reshape(-1)
    total = weights.sum()
    if total <= 0:
        return 0.0
    mean = (unit_features * weights[:, None]).sum(axis=0) / total
    return float(np.square(mean).sum())


def unit_rows(features: np.ndarray) -> np.ndarray:
    flat = np.asarray(features, dtype=np.float32).reshape(-1, features.shape[-1])
    return flat / np.linalg.norm(flat, axis=1, keepdims=True).clip(min=1e-12)


def _split(mask: np.ndarray, split_components: bool, min_area: int) -> list[np.ndarray]:
    if split_components:
        return connected_components(mask, min_area)
    return [mask] if mask.sum() >= min_area else []


def multik_masks(
    features: np.ndarray,
    ks: tuple[int, ...] = (2, 3, 4, 5),
    split_components: bool = True,
    min_area: int = 2,
    seed: int = 0,
    eigenvectors: np.ndarray | None = None,
) -> list[GridMask]:
    """Engstler et al. (2023): spectral clustering of one image's tokens for every k, masks of all clusters.

    Args:
        features: (h, w, D) float token grid (e.g. last-block keys).
        ks: the numbers of clusters.
        split_components: split each cluster into its connected components.
        min_area: drop masks (components) with fewer cells.
        eigenvectors: optional (h·w, >= max k) smallest L_sym eigenvectors of this image (from a batched
            :func:`feature_laplacian_spectrum`); solved here when absent.

    Returns:
        masks of every clustering, in order of k, cluster and component.
    """
    grid_h, grid_w, _ = features.shape
    ks = tuple(k for k in ks if k <= grid_h * grid_w)
    if not ks:
        return []
    unit = unit_rows(features)
    if eigenvectors is None:  # one solve serves every k
        eigenvectors = feature_laplacian_spectrum(unit, max(ks), device="cpu").vectors[0]
    results: list[GridMask] = []
    for k in ks:
        labels = spectral_clustering(None, k, seed=seed, eigenvectors=eigenvectors).reshape(grid_h, grid_w)
        for cluster in range(k):
            for component, part in enumerate(_split(labels == cluster, split_components, min_area)):
                results.append(GridMask(part, k, cluster, component, mask_coherence(unit, part)))
    return results


def foreground_side(positive: np.ndarray) -> bool:
    """Border rule for an (h, w) bool split: True when ``positive`` is the foreground (covers less of the border;
    on a tie, the smaller side is the object)."""
    return (border_fraction(positive), positive.sum()) <= (border_fraction(~positive), (~positive).sum())


def bipartition_saliency(
    features: np.ndarray, eigenvectors: np.ndarray | None = None, degree: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Foreground by a k = 2 spectral bipartition; the side covering less of the image border is foreground.

    The split is the sign of the generalised Fiedler vector x = D^{-1/2} u₂ (the normalised-cut relaxation).

    Args:
        features: (h, w, D) float token grid.
        eigenvectors, degree: optional (h·w, >= 2) smallest L_sym eigenvectors and (h·w,) degrees of this image
            (from a batched :func:`feature_laplacian_spectrum`); solved here when absent.

    Returns:
        foreground (h, w) bool, and a soft map (h, w) float32 in [0, 1] with 0.5 at the split, higher = more salient.
    """
    grid_h, grid_w, _ = features.shape
    if eigenvectors is None or degree is None:
        spectrum = feature_laplacian_spectrum(unit_rows(features), 2, device="cpu")
        eigenvectors, degree = spectrum.vectors[0], spectrum.degree[0]
    fiedler = (eigenvectors[:, 1] / np.sqrt(np.clip(degree, 1e-12, None))).reshape(grid_h, grid_w)
    if not foreground_side(fiedler > 0):
        fiedler = -fiedler
    soft = 0.5 + 0.5 * fiedler / max(float(np.abs(fiedler).max()), 1e-12)
    return fiedler > 0, soft.astype(np.float32)


def color_knn_affinity(image: np.ndarray, neighbors: tuple[int, ...] = (20, 10),
                       spatial_weights: tuple[float, ...] = (2.0, 0.1)) -> np.ndarray:
    """Image-matting KNN colour affinity (pymatting's ``knn_affinity``, as Deep Spectral Methods uses it).

    For each (n, s) pair, every pixel is linked to its n nearest neighbours (itself included) in the space
    (r, g, b, s·x, s·y) with colours in [0, 1] and coordinates in [0, 1]; W counts the links in both directions,
    so it is symmetric with integer entries (a strong spatial weight links near pixels, a weak one similar colours
    anywhere).

    Args:
        image: (h, w, 3) uint8 or float in [0, 1], already down-sampled to the token grid.

    Returns:
        (h·w, h·w) float32 dense affinity.
    """
    from scipy.spatial import cKDTree

    image = np.asarray(image)
    colors = image.astype(np.float32) / (255.0 if image.dtype == np.uint8 else 1.0)
    height, width = colors.shape[:2]
    count = height * width
    x = np.tile(np.linspace(0, 1, width, dtype=np.float32), height)
    y = np.repeat(np.linspace(0, 1, height, dtype=np.float32), width)
    affinity = np.zeros((count, count), dtype=np.float32)
    for num_neighbors, weight in zip(neighbors, spatial_weights):
        points = np.column_stack([colors.reshape(-1, 3), weight * x, weight * y])
        _, nearest = cKDTree(points).query(points, k=min(num_neighbors, count))
        rows = np.repeat(np.arange(count), nearest.shape[1])
        np.add.at(affinity, (rows, nearest.reshape(-1)), 1.0)
        np.add.at(affinity, (nearest.reshape(-1), rows), 1.0)
    return affinity


def deep_spectral_masks(
    features: np.ndarray,
    ks: tuple[int, ...] = (2, 3, 4, 5),
    num_eigenvectors: int = 10,
    eigen_masks: int = 3,
    split_components: bool = True,
    min_area: int = 2,
    drop_background: bool = True,
    seed: int = 0,
    eigenvectors: np.ndarray | None = None,
    degree: np.ndarray | None = None,
    image: np.ndarray | None = None,
    color_weight: float = 0.0,
) -> list[GridMask]:
    """Deep Spectral Methods (Melas-Kyriazi et al. 2022) masks of one image.

    W = C · (C > 0) (+ ``color_weight`` × :func:`color_knn_affinity` of the image down-sampled to the grid),
    L_sym's smallest ``num_eigenvectors`` eigenpairs, and the generalised eigenvectors x = D^{-1/2} u (as
    deep-spectral's ``eigsh(D − W, M=D)``). Two kinds of masks:

    * eigen-masks: for i = 1..``eigen_masks``, the sign split of x_i; the side covering less of the image border is
      the object (border rule); ``k = 2``, ``eigen_index = i``;
    * segments: for each k, k-means of the rows of x_1..x_{K−1} into k segments (deep-spectral's semantic
      segments); the segment covering most of the border is background and dropped (``drop_background``);
      ``eigen_index = -1``.

    Every mask is split into connected components (``split_components``) of at least ``min_area`` cells.

    Args:
        features: (h, w, D) float token grid.
        eigenvectors, degree: optional precomputed (h·w, >= num_eigenvectors) L_sym eigenvectors and (h·w,)
            degrees of this image's affinity (with the colour term when ``color_weight`` > 0).
        image: (h, w, 3) image at the grid size, needed when ``color_weight`` > 0.
    """
    grid_h, grid_w, _ = features.shape
    count = grid_h * grid_w
    num_eigenvectors = min(num_eigenvectors, count)
    unit = unit_rows(features)
    if eigenvectors is None or degree is None:
        extra = None
        if color_weight > 0:
            if image is None:
                raise ValueError("deep_spectral_masks: color_weight > 0 needs the down-sampled image")
            extra = color_weight * color_knn_affinity(image)
        spectrum = feature_laplacian_spectrum(unit, num_eigenvectors, extra_affinity=extra, device="cpu")
        eigenvectors, degree = spectrum.vectors[0], spectrum.degree[0]
    generalised = eigenvectors[:, :num_eigenvectors] / np.sqrt(np.clip(degree, 1e-12, None))[:, None]
    generalised = generalised / np.linalg.norm(generalised, axis=0, keepdims=True).clip(min=1e-12)
    results: list[GridMask] = []
    for index in range(1, min(eigen_masks, num_eigenvectors - 1) + 1):
        positive = generalised[:, index].reshape(grid_h, grid_w) > 0
        foreground = positive if foreground_side(positive) else ~positive
        for component, part in enumerate(_split(foreground, split_components, min_area)):
            results.append(GridMask(part, 2, 0, component, mask_coherence(unit, part), eigen_index=index))
    embedding = generalised[:, 1:num_eigenvectors]
    for k in (k for k in ks if k <= count and embedding.shape[1] > 0):
        labels, _, _ = kmeans(embedding, k, seed=seed, num_restarts=5)
        labels = labels.reshape(grid_h, grid_w)
        present = [cluster for cluster in range(k) if (labels == cluster).any()]
        background = max(present, key=lambda cluster: border_fraction(labels == cluster)) if drop_background else None
        for cluster in present:
            if cluster == background:
                continue
            for component, part in enumerate(_split(labels == cluster, split_components, min_area)):
                results.append(GridMask(part, k, cluster, component, mask_coherence(unit, part), eigen_index=-1))
    return results
