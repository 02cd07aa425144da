"""Spectral decomposition of per-image feature affinities: multi-k clustering, Deep Spectral Methods masks,
bipartition saliency, and the fast batched eigensolver they share.

Eigensolvers: :func:`laplacian_eigenvectors` is the dense reference (full ``eigh`` of one L_sym);
:func:`feature_laplacian_spectrum` / :func:`normalized_laplacian_spectrum` solve a batch of images at once in
float32 (on CUDA when present) with a restarted block Krylov method, applying W = F Fᵀ implicitly when no cosine
is negative. The mask functions work on one image's token grid, as arrays, and take precomputed eigenvectors from
:func:`grid_spectra`; the stage runners live in :mod:`unseg.proposals`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
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
    # The dense reference: a full symmetric solve; feature_laplacian_spectrum is the fast batched path.
    eigenvalues, eigenvectors = torch.linalg.eigh(laplacian)
    return eigenvalues[:num_vectors].numpy(), eigenvectors[:, :num_vectors].numpy()


@dataclass
class Spectrum:
    """The smallest eigenpairs of the normalised Laplacians of a batch of affinities (same N for every image)."""

    values: np.ndarray  # (B, K) float32 ascending eigenvalues of L_sym = I − D^{-1/2} W D^{-1/2}
    vectors: np.ndarray  # (B, N, K) float32 unit eigenvectors of L_sym (sign: largest-magnitude entry positive)
    degree: np.ndarray  # (B, N) float32 degrees of W (row sums, self-loops included)
    low_rank: bool  # True when W = F Fᵀ was applied implicitly (no thresholded entry), False for the dense path


@dataclass(frozen=True)
class KrylovSettings:
    """Settings of :func:`block_krylov_largest` for the Laplacian spectra."""

    oversample: int = 4  # extra block columns beyond the wanted eigenvectors
    iterations: int = 3  # Krylov steps per round (basis of block × (iterations + 1) columns)
    tolerance: float = 1e-4  # largest accepted residual ‖A v − λ v‖ of a unit eigenvector
    max_restarts: int = 6
    seed: int = 0  # of the random start block


def _orthonormalize(block: torch.Tensor, basis: torch.Tensor | None) -> torch.Tensor:
    """(B, N, b) block made orthonormal and orthogonal to an orthonormal (B, N, m) basis (two Gram–Schmidt passes)."""
    if basis is not None:
        for _ in range(2):  # twice is enough in float32 ("twice is enough", Kahan–Parlett)
            block = block - basis @ (basis.transpose(1, 2) @ block)
    return torch.linalg.qr(block).Q


def block_krylov_largest(
    apply: Callable[[torch.Tensor], torch.Tensor],
    start: torch.Tensor,
    num_vectors: int,
    iterations: int = 3,
    tolerance: float = 1e-4,
    max_restarts: int = 6,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Largest eigenpairs of a batch of symmetric operators: restarted block Krylov with Rayleigh–Ritz.

    Each round builds the basis [X, AX, …, A^q X] (block size b = start's columns), orthonormalised, and solves
    the small (b(q+1))² projected problem; the b best Ritz vectors restart the next round until every wanted
    residual ‖A v − λ v‖ is at most ``tolerance`` (eigenvector error ≈ residual / eigen-gap).

    Args:
        apply: maps a (B, N, m) tensor to A @ it, A (B, N, N) symmetric (never needed explicitly).
        start: (B, N, b) float start block, b >= num_vectors.
        num_vectors: K.

    Returns:
        values (B, K) descending, vectors (B, N, K) orthonormal, residual norms (B, K).
    """
    block = start
    for _ in range(max_restarts + 1):
        blocks = [_orthonormalize(block, None)]
        images = []  # A @ blocks[j]
        for _ in range(iterations):
            images.append(apply(blocks[-1]))
            blocks.append(_orthonormalize(images[-1], torch.cat(blocks, dim=-1)))
        images.append(apply(blocks[-1]))
        basis, applied = torch.cat(blocks, dim=-1), torch.cat(images, dim=-1)
        projected = basis.transpose(1, 2) @ applied
        values, coefficients = torch.linalg.eigh((projected + projected.transpose(1, 2)) / 2)
        values, coefficients = values.flip(-1), coefficients.flip(-1)[..., : block.shape[-1]]
        ritz = basis @ coefficients
        residual = torch.linalg.vector_norm(
            applied @ coefficients[..., :num_vectors] - ritz[..., :num_vectors] * values[:, None, :num_vectors], dim=1
        )
        if float(residual.max()) <= tolerance:
            break
        block = ritz
    else:
        warnings.warn(f"block Krylov stopped after {max_restarts} restarts with residual "
                      f"{float(residual.max()):.2e} > {tolerance:.0e}", RuntimeWarning, stacklevel=2)
    return values[:, :num_vectors], ritz[..., :num_vectors], residual


def _fix_signs(vectors: torch.Tensor) -> torch.Tensor:
    """Flip each (B, N, K) column so that its largest-magnitude entry is positive (a deterministic sign)."""
    index = vectors.abs().argmax(dim=1, keepdim=True)
    return vectors * torch.where(torch.gather(vectors, 1, index) < 0, -1.0, 1.0)


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _as_batch(array: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    """A float32 tensor on ``device`` with a leading batch axis (added to a 2-D input)."""
    tensor = array if torch.is_tensor(array) else torch.as_tensor(np.asarray(array, dtype=np.float32))
    tensor = tensor.to(device=device, dtype=torch.float32)
    return tensor[None] if tensor.ndim == 2 else tensor


def normalized_laplacian_spectrum(
    affinity: np.ndarray | torch.Tensor,
    num_vectors: int,
    solver: KrylovSettings = KrylovSettings(),
    device: str | torch.device | None = None,
) -> Spectrum:
    """Smallest eigenpairs of L_sym for a batch of dense affinities (the general fast path).

    W = A · (A > 0); the smallest eigenvectors of L_sym are the largest of D^{-1/2} W D^{-1/2}, found by
    :func:`block_krylov_largest` in float32 with the known null vector √d / ‖√d‖ in the start block.

    Args:
        affinity: (B, N, N) symmetric float array (or (N, N) for one image).
        num_vectors: K.
        solver: block Krylov settings.
        device: torch device; default CUDA when available.

    Returns:
        a :class:`Spectrum` with (B, ·) arrays (B = 1 for a 2-D input).
    """
    device = torch.device(device) if device is not None else _default_device()
    weights = _as_batch(affinity, device).clamp(min=0)
    degree = weights.sum(dim=-1)
    inv_sqrt = degree.clamp(min=1e-12).rsqrt()
    normalized = inv_sqrt[:, :, None] * weights * inv_sqrt[:, None, :]
    return _spectrum(lambda x: normalized @ x, degree, num_vectors, solver, low_rank=False)


def _spectrum(apply, degree: torch.Tensor, num_vectors: int, solver: KrylovSettings, low_rank: bool) -> Spectrum:
    """Shared tail of the fast paths: the K largest eigenpairs of A = D^{-1/2} W D^{-1/2} as L_sym's smallest.

    A √d = √d exactly, so that eigenpair (L eigenvalue 0) is known and deflated: the Krylov method runs on
    P A P with P = I − v vᵀ, v = √d / ‖√d‖. Without it the eigenvalue 1 dominates every Krylov block and the
    small eigenvalues of low-rank affinities (0.01–0.1 for ViT keys) drown in float32 cancellation.
    """
    batch, count = degree.shape
    num_vectors = min(num_vectors, count)
    null_vector = torch.nn.functional.normalize(degree.clamp(min=0).sqrt(), dim=-1)[..., None]  # (B, N, 1)
    if (num_vectors + solver.oversample) * (solver.iterations + 1) >= count:  # tiny: a full solve is cheaper, exact
        full = apply(torch.eye(count, device=degree.device).expand(batch, count, count))
        values, vectors = torch.linalg.eigh((full + full.transpose(1, 2)) / 2)
        values, vectors = values.flip(-1)[:, :num_vectors], vectors.flip(-1)[..., :num_vectors]
    elif num_vectors == 1:
        values, vectors = torch.ones_like(degree[:, :1]), null_vector
    else:

        def project(x: torch.Tensor) -> torch.Tensor:
            return x - null_vector @ (null_vector.transpose(1, 2) @ x)

        generator = torch.Generator(device=degree.device).manual_seed(solver.seed)
        start = torch.randn(batch, count, num_vectors - 1 + solver.oversample, generator=generator,
                            device=degree.device)
        values, vectors, _ = block_krylov_largest(
            lambda x: project(apply(project(x))), project(start), num_vectors - 1, solver.iterations,
            solver.tolerance, solver.max_restarts,
        )
        values = torch.cat([torch.ones_like(values[:, :1]), values], dim=1)
        vectors = torch.cat([null_vector, vectors], dim=-1)
    return Spectrum(
        values=(1.0 - values).cpu().numpy(),
        vectors=_fix_signs(vectors).cpu().numpy(),
        degree=degree.cpu().numpy(),
        low_rank=low_rank,
    )


def features_in_positive_cone(unit_features: torch.Tensor) -> torch.Tensor:
    """(B, N, D) unit features → (B,) bool: True when every pairwise cosine is provably >= 0.

    With θ_i the angle of token i to the mean direction, any two tokens are at most θ_i + θ_j apart, so the two
    largest θ summing to <= 90° guarantees W = F Fᵀ has no negative entry (checked in O(N D), without forming W).
    """
    mean_direction = torch.nn.functional.normalize(unit_features.mean(dim=1), dim=-1)
    angles = torch.arccos((unit_features @ mean_direction[:, :, None])[..., 0].clamp(-1, 1))
    two_largest = angles.topk(min(2, angles.shape[1]), dim=1).values.sum(dim=1)
    return two_largest <= torch.pi / 2 - 1e-4


def feature_laplacian_spectrum(
    features: np.ndarray | torch.Tensor,
    num_vectors: int,
    extra_affinity: np.ndarray | torch.Tensor | None = None,
    solver: KrylovSettings = KrylovSettings(),
    device: str | torch.device | None = None,
) -> Spectrum:
    """Smallest eigenpairs of L_sym for the thresholded cosine affinities of a batch of token sets (fast path).

    W = C · (C > 0) with C the cosine similarities (+ ``extra_affinity``, e.g. λ × colour KNN affinity). When
    every cosine is provably non-negative (:func:`features_in_positive_cone`; true for DINO/DINOv2 keys, which
    share a large common component) and there is no extra term, W = F Fᵀ has rank <= D and is applied implicitly
    (d = F (Fᵀ 1), A x = D^{-1/2} F Fᵀ D^{-1/2} x): no N × N matrix is formed. Otherwise the dense path.

    Args:
        features: (B, N, D) float tokens (or (N, D)); need not be normalised.
        extra_affinity: optional (B, N, N) non-negative affinity added to W.
        solver: block Krylov settings.
        device: torch device; default CUDA when available.

    Returns:
        a :class:`Spectrum`.
    """
    device = torch.device(device) if device is not None else _default_device()
    unit = torch.nn.functional.normalize(_as_batch(features, device), dim=-1)
    if extra_affinity is None and bool(features_in_positive_cone(unit).all()):
        degree = (unit @ unit.sum(dim=1)[:, :, None])[..., 0]
        inv_sqrt = degree.clamp(min=1e-12).rsqrt()[:, :, None]
        scaled = inv_sqrt * unit  # G = D^{-1/2} F; A = G Gᵀ

        def apply(x: torch.Tensor) -> torch.Tensor:
            return scaled @ (scaled.transpose(1, 2) @ x)

        return _spectrum(apply, degree, num_vectors, solver, low_rank=True)
    weights = (unit @ unit.transpose(1, 2)).clamp(min=0)
    if extra_affinity is not None:
        weights = weights + _as_batch(extra_affinity, device).reshape(weights.shape)
    return normalized_laplacian_spectrum(weights, num_vectors, solver, device)


def grid_spectra(
    grids: list[np.ndarray],
    num_vectors: int,
    extra_affinities: list[np.ndarray | None] | None = None,
    batch_size: int = 64,
    device: str | torch.device | None = None,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Spectra of many images' token grids, solved in batches of equal token count.

    Args:
        grids: per image an (h, w, D) float token grid.
        extra_affinities: per image None or an (h·w, h·w) affinity added to the thresholded cosine one.

    Returns:
        per image (eigenvectors (h·w, K) float32 of L_sym, degrees (h·w,) float32), in input order.
    """
    extra_affinities = extra_affinities or [None] * len(grids)
    groups: dict[tuple, list[int]] = {}
    for position, (grid, extra) in enumerate(zip(grids, extra_affinities)):
        groups.setdefault((grid.shape[0] * grid.shape[1], grid.shape[-1], extra is None), []).append(position)
    results: list[tuple[np.ndarray, np.ndarray] | None] = [None] * len(grids)
    for (count, dim, no_extra), positions in groups.items():
        for start in range(0, len(positions), batch_size):
            chunk = positions[start : start + batch_size]
            features = np.stack([np.asarray(grids[p], dtype=np.float32).reshape(count, dim) for p in chunk])
            extra = None if no_extra else np.stack([extra_affinities[p] for p in chunk])
            spectrum = feature_laplacian_spectrum(features, num_vectors, extra_affinity=extra, device=device)
            for offset, position in enumerate(chunk):
                results[position] = (spectrum.vectors[offset], spectrum.degree[offset])
    return results


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


def _unit_rows(features: np.ndarray) -> np.ndarray:
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
    unit = _unit_rows(features)
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
        spectrum = feature_laplacian_spectrum(_unit_rows(features), 2, device="cpu")
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
    unit = _unit_rows(features)
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
