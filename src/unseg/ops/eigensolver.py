"""The eigensolvers of per-image feature affinities: the normalised Laplacian's smallest eigenvectors of a batch of
token grids, fast (batched, on CUDA when present), which the spectral masks and saliency share.

:func:`laplacian_eigenvectors` is the dense reference (full ``eigh`` of one L_sym); :func:`feature_laplacian_spectrum`
solves a batch of images at once: images whose cosines are all non-negative (W = F̂ F̂ᵀ) in feature space by
:func:`low_rank_laplacian_spectrum` (five skinny passes over the tokens, bfloat16 where the hardware has it), the
others by :func:`normalized_laplacian_spectrum` (restarted block Krylov on the explicit matrix, float32).
:func:`grid_spectra` is what the stages call: the eigenvectors of every image's grid.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from unseg.core.devices import resolve_device


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
    low_rank: np.ndarray  # (B,) bool: solved in feature space (W = F̂ F̂ᵀ, no thresholded entry), else dense


@dataclass(frozen=True)
class KrylovSettings:
    """Settings of :func:`block_krylov_largest` for the Laplacian spectra."""

    oversample: int = 4  # extra block columns beyond the wanted eigenvectors
    iterations: int = 3  # Krylov steps per round (basis of block × (iterations + 1) columns)
    tolerance: float = 1e-4  # largest accepted residual ‖A v − λ v‖ of a unit eigenvector
    max_restarts: int = 6
    seed: int = 0  # of the random start block


ORTHONORMALIZATIONS = ("auto", "householder", "cholesky")


def orthonormalize(block: torch.Tensor, basis: torch.Tensor | None, method: str = "householder") -> torch.Tensor:
    """(B, N, b) block made orthonormal and orthogonal to an orthonormal (B, N, m) basis (two Gram–Schmidt
    passes); N is the feature dimension D when the block lives in feature space.

    ``method``: "householder" (``torch.linalg.qr``) or "cholesky" (shifted Cholesky-QR3: three rounds of
    X ← X R⁻¹ with R the Cholesky factor of XᵀX, the first with a shift so that it cannot fail in float32;
    Fukaya et al. 2020). Cholesky-QR is three batched small kernels per round where a batched Householder QR may
    loop over the batch on CUDA.
    """
    if basis is not None:
        for _ in range(2):  # twice is enough in float32 ("twice is enough", Kahan–Parlett)
            block = block - basis @ (basis.transpose(1, 2) @ block)
    if method == "householder":
        return torch.linalg.qr(block).Q
    if method != "cholesky":
        raise ValueError(f"orthonormalization must be 'householder' or 'cholesky', got {method!r}")
    rows, columns = block.shape[-2:]
    identity = torch.eye(columns, device=block.device, dtype=block.dtype)
    for round_ in range(3):
        gram = block.transpose(-2, -1) @ block
        if round_ == 0:  # shift s = 11 (m n + n (n + 1)) u ‖X‖², with ‖X‖₂² <= trace(XᵀX)
            unit_roundoff = torch.finfo(block.dtype).eps / 2
            trace = gram.diagonal(dim1=-2, dim2=-1).sum(-1)[..., None, None]
            gram = gram + 11 * (rows * columns + columns * (columns + 1)) * unit_roundoff * trace * identity
        factor, _ = torch.linalg.cholesky_ex(gram, upper=True)  # _ex: no host sync to check for failure
        block = torch.linalg.solve_triangular(factor, block, upper=True, left=False)
    return block


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
        blocks = [orthonormalize(block, None)]
        images = []  # A @ blocks[j]
        for _ in range(iterations):
            images.append(apply(blocks[-1]))
            blocks.append(orthonormalize(images[-1], torch.cat(blocks, dim=-1)))
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
    device = torch.device(device) if device is not None else resolve_device()
    weights = _as_batch(affinity, device).clamp(min=0)
    degree = weights.sum(dim=-1)
    inv_sqrt = degree.clamp(min=1e-12).rsqrt()
    normalized = inv_sqrt[:, :, None] * weights * inv_sqrt[:, None, :]
    return _dense_spectrum(lambda x: normalized @ x, degree, num_vectors, solver)


def _dense_spectrum(apply, degree: torch.Tensor, num_vectors: int, solver: KrylovSettings) -> Spectrum:
    """The K largest eigenpairs of A = D^{-1/2} W D^{-1/2} (applied by ``apply``) as L_sym's smallest.

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
        low_rank=np.zeros(batch, dtype=bool),
    )


@dataclass(frozen=True)
class LowRankSettings:
    """Settings of :func:`low_rank_laplacian_spectrum` (block Krylov in feature space)."""

    oversample: int = 6  # start-block columns beyond the K − 1 wanted, rounded up to a multiple of 16
    steps: int = 2  # Krylov blocks: basis orth[CΩ, …, C^steps Ω] (>= 1); 2·steps + 1 passes over the features
    precision: str = "auto"  # of the passes: "bfloat16", "float32", or "auto" (bfloat16 where it is native)
    chunk: int = 8  # images per batched pass on the CPU, so that their features stay in cache (all on CUDA)
    seed: int = 0  # of the random start block
    # of the Krylov blocks: "householder", "cholesky" (Cholesky-QR3), or "auto": Cholesky-QR on CUDA, where
    # batched Householder QR loops over the images (22× slower per solve on an H100), Householder on the CPU
    # (there the two are equally fast; Householder is the longer-tested path)
    orthonormalization: str = "auto"


@functools.lru_cache(maxsize=1)  # the CPU does not change; /proc/cpuinfo is read once per process
def _cpu_has_native_bfloat16() -> bool:
    """True when the CPU multiplies bfloat16 in hardware (AVX512-BF16 or AMX); elsewhere it is emulated, slow."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            flags = next((line for line in handle if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def pass_dtype(precision: str, device: str | torch.device | None = None) -> torch.dtype:
    """The dtype of the feature passes for ``LowRankSettings.precision`` on ``device`` (default: CUDA if present)."""
    device = torch.device(device) if device is not None else resolve_device()
    if precision == "auto":
        native = torch.cuda.is_bf16_supported() if device.type == "cuda" else _cpu_has_native_bfloat16()
        return torch.bfloat16 if native else torch.float32
    if precision not in ("bfloat16", "float32"):
        raise ValueError(f"precision must be 'auto', 'bfloat16' or 'float32', got {precision!r}")
    return getattr(torch, precision)


def feature_degrees(features: torch.Tensor, per_image: bool | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B, N, D) float32 raw tokens → inverse norms (B, N), column sums of the unit tokens F̂ᵀ1 (B, D) and the
    degrees of W = F̂ F̂ᵀ, d = F̂ (F̂ᵀ 1) (B, N): two matrix–vector passes, no N × N matrix. ``per_image``: one
    matrix–vector product per image (default on the CPU) rather than one batched product (default on CUDA)."""
    inverse_norm = torch.linalg.vector_norm(features, dim=-1).clamp(min=1e-12).reciprocal()
    if per_image if per_image is not None else features.device.type == "cpu":
        # a batched product with a single column takes a ~10× slower path on the CPU
        column_sum = torch.stack([image.T @ weights for image, weights in zip(features, inverse_norm)])
        degree = inverse_norm * torch.stack([image @ total for image, total in zip(features, column_sum)])
    else:
        column_sum = (features.transpose(1, 2) @ inverse_norm[..., None])[..., 0]
        degree = inverse_norm * (features @ column_sum[..., None])[..., 0]
    return inverse_norm, column_sum, degree


def _cone_from_degrees(degree: torch.Tensor, column_sum: torch.Tensor) -> torch.Tensor:
    """(B,) bool: every pairwise cosine provably >= 0 (see :func:`features_in_positive_cone`).

    The cosine of unit token i with the mean direction m = F̂ᵀ1 / ‖F̂ᵀ1‖ is f̂_i · m = d_i / ‖F̂ᵀ1‖, so the
    degrees give every angle θ_i for free.
    """
    cosines = degree / torch.linalg.vector_norm(column_sum, dim=-1, keepdim=True).clamp(min=1e-12)
    angles = torch.arccos(cosines.clamp(-1, 1))
    two_largest = angles.topk(min(2, angles.shape[1]), dim=1).values.sum(dim=1)
    return two_largest <= torch.pi / 2 - 1e-4


def low_rank_laplacian_spectrum(
    features: torch.Tensor, num_vectors: int, settings: LowRankSettings = LowRankSettings()
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Smallest eigenpairs of L_sym for W = F̂ F̂ᵀ (unit tokens, every cosine >= 0), solved in feature space.

    With G = D^{-1/2} F̂ (N × D), the wanted vectors are the largest eigenvectors of A = G Gᵀ, i.e. the left
    singular vectors of G. The top one, √d / ‖√d‖ (eigenvalue 1), is known; its right partner w0 ∝ F̂ᵀ1 is
    deflated. A block Krylov basis Z = orth[CΩ, …, C^q Ω] of C = Gᵀ G (D × D, never formed) is grown from a
    random (D, b) block Ω ⟂ w0, keeping each G Z_j; Rayleigh–Ritz of C on Z then needs only (GZ)ᵀ(GZ), and the
    Ritz vectors map back as u = G Z c / ‖G Z c‖. That is 2q + 1 skinny passes over the features (b = 16 columns
    for K ≤ 11), each a single bandwidth-bound matrix product, instead of an N × N matrix or its factorisation.
    (Ω itself is left out of Z: random in every direction, it adds 16 columns to the small eigenproblem and
    nothing to the wanted vectors.)
    The passes may run in bfloat16 (float32 accumulation); the degrees and the small problems stay float32.

    Args:
        features: (B, N, D) float raw tokens (not necessarily unit; float16 is read chunk by chunk, not copied).
        num_vectors: K (including the known first vector), K <= D.
        settings: block size, steps, precision, chunking.

    Returns:
        values (B, K) descending eigenvalues of A (1 − L_sym's), vectors (B, N, K) unit columns, degrees (B, N),
        and (B,) bool: the image's cosines are all provably >= 0 (:func:`features_in_positive_cone`). Where that
        is False the affinity is not F̂ F̂ᵀ and the image's values and vectors are meaningless.
    """
    if settings.steps < 1:
        raise ValueError(f"LowRankSettings.steps must be >= 1, got {settings.steps}")
    if settings.orthonormalization not in ORTHONORMALIZATIONS:
        raise ValueError(f"LowRankSettings.orthonormalization must be one of {ORTHONORMALIZATIONS}, "
                         f"got {settings.orthonormalization!r}")
    batch, count, dim = features.shape
    device = features.device
    wanted = min(num_vectors, count, dim) - 1
    block = -(-(wanted + settings.oversample) // 16) * 16
    exact = block * settings.steps >= dim // 2  # small D: the whole complement of w0 is cheaper, and exact
    dtype = pass_dtype(settings.precision, device)
    orthonormalization = settings.orthonormalization
    if orthonormalization == "auto":
        orthonormalization = "cholesky" if device.type == "cuda" else "householder"
    chunk = batch if device.type == "cuda" else max(1, settings.chunk)
    generator = torch.Generator(device=device).manual_seed(settings.seed)
    omega = torch.randn(dim, block, generator=generator, device=device)
    # Reused buffers: a fresh multi-MB tensor per chunk costs page faults comparable to a pass over it.
    convert = features.dtype != torch.float32 or not features.is_contiguous()
    shape = (min(chunk, batch), count, dim)
    full_buffer = torch.empty(shape, device=device) if convert else None
    low_buffer = torch.empty(shape, device=device, dtype=dtype) if dtype != torch.float32 else None
    values, vectors, degrees, in_cone = [], [], [], []
    for start in range(0, batch, chunk):
        tokens = features[start : start + chunk]
        tokens = full_buffer[: len(tokens)].copy_(tokens) if convert else tokens
        inverse_norm, column_sum, degree = feature_degrees(tokens)
        scale = (inverse_norm * degree.clamp(min=1e-12).rsqrt())[..., None]  # G = scale ⊙ F (rows)
        known = torch.nn.functional.normalize(degree.clamp(min=0).sqrt(), dim=-1)[..., None]
        w0 = torch.nn.functional.normalize(column_sum, dim=1)[..., None]
        degrees.append(degree)
        in_cone.append(_cone_from_degrees(degree, column_sum))
        if wanted <= 0:
            values.append(torch.ones_like(degree[:, :1]))
            vectors.append(known)
            continue
        if exact:
            scaled = scale * tokens
            projector = torch.eye(dim, device=device) - w0 @ w0.transpose(1, 2)
            gram = projector @ (scaled.transpose(1, 2) @ scaled) @ projector
            theta, coefficients = torch.linalg.eigh((gram + gram.transpose(1, 2)) / 2)
            image = scaled
        else:
            low = tokens if low_buffer is None else low_buffer[: len(tokens)].copy_(tokens)

            def times_g(x: torch.Tensor) -> torch.Tensor:  # (B, D, m) → G x (B, N, m)
                # contiguous: QR returns column-major blocks, which send the product down a slow path
                return scale * (low @ x.to(dtype).contiguous()).float()

            def times_g_t(y: torch.Tensor) -> torch.Tensor:  # (B, N, m) → Gᵀ y (B, D, m)
                # (yᵀ F)ᵀ: a row-major F read in order, no transposed copy of F (slow for bfloat16 on the CPU)
                return ((scale * y).transpose(1, 2).contiguous().to(dtype) @ low).float().transpose(1, 2)

            # Z1 = orth(C Ω) ⟂ w0. Ω needs no orthonormalising, but its w0 part must go before the bfloat16 pass:
            # G w0 has norm 1, far above the wanted directions, and would swamp them in the rounding.
            start_block = omega - w0 @ (w0.transpose(1, 2) @ omega)
            basis = [orthonormalize(times_g_t(times_g(start_block)), w0, orthonormalization)]
            images = [times_g(basis[0])]
            for _ in range(settings.steps - 1):
                basis.append(orthonormalize(times_g_t(images[-1]), torch.cat([w0, *basis], dim=-1),
                                             orthonormalization))
                images.append(times_g(basis[-1]))
            image = torch.cat(images, dim=-1)  # G Z
            theta, coefficients = torch.linalg.eigh(image.transpose(1, 2) @ image)  # Zᵀ C Z
        theta = theta.flip(-1)[:, :wanted]
        ritz = torch.nn.functional.normalize(image @ coefficients.flip(-1)[..., :wanted], dim=1)
        values.append(torch.cat([torch.ones_like(theta[:, :1]), theta], dim=1))
        vectors.append(torch.cat([known, ritz], dim=-1))
    return torch.cat(values), torch.cat(vectors), torch.cat(degrees), torch.cat(in_cone)


def features_in_positive_cone(unit_features: torch.Tensor) -> torch.Tensor:
    """(B, N, D) unit features → (B,) bool: True when every pairwise cosine is provably >= 0.

    With θ_i the angle of token i to the mean direction, any two tokens are at most θ_i + θ_j apart, so the two
    largest θ summing to <= 90° guarantees W = F Fᵀ has no negative entry (checked in O(N D), without forming W).
    """
    _, column_sum, degree = feature_degrees(unit_features)
    return _cone_from_degrees(degree, column_sum)


def feature_laplacian_spectrum(
    features: np.ndarray | torch.Tensor,
    num_vectors: int,
    extra_affinity: np.ndarray | torch.Tensor | None = None,
    solver: KrylovSettings = KrylovSettings(),
    device: str | torch.device | None = None,
    low_rank_solver: LowRankSettings = LowRankSettings(),
) -> Spectrum:
    """Smallest eigenpairs of L_sym for the thresholded cosine affinities of a batch of token sets (fast path).

    W = C · (C > 0) with C the cosine similarities (+ ``extra_affinity``, e.g. λ × colour KNN affinity). For each
    image whose cosines are all provably non-negative (:func:`features_in_positive_cone`; true for DINO/DINOv2
    keys, which share a large common component) and with no extra term, W = F̂ F̂ᵀ and
    :func:`low_rank_laplacian_spectrum` solves in feature space, without an N × N matrix. The other images take
    the dense path (:func:`normalized_laplacian_spectrum`).

    Args:
        features: (B, N, D) float tokens (or (N, D)); need not be normalised.
        extra_affinity: optional (B, N, N) non-negative affinity added to W.
        solver: block Krylov settings of the dense path.
        device: torch device; default CUDA when available.
        low_rank_solver: settings of the feature-space path.

    Returns:
        a :class:`Spectrum`.
    """
    device = torch.device(device) if device is not None else resolve_device()
    tokens = torch.as_tensor(features)
    tokens = (tokens if tokens.is_floating_point() else tokens.float()).to(device)  # float16 stays float16
    tokens = tokens[None] if tokens.ndim == 2 else tokens
    batch, count, dim = tokens.shape
    num_vectors = min(num_vectors, count)
    if extra_affinity is None and num_vectors <= dim and count > 64:  # tiny grids: the dense solve is exact, cheap
        top, vectors, degree, low_rank = low_rank_laplacian_spectrum(tokens, num_vectors, low_rank_solver)
        values = 1.0 - top
    else:
        values, vectors = torch.empty(batch, num_vectors, device=device), torch.empty(batch, count, num_vectors,
                                                                                        device=device)
        degree, low_rank = torch.empty(batch, count, device=device), torch.zeros(batch, dtype=torch.bool,
                                                                                 device=device)
    if not bool(low_rank.all()):
        dense_images = (~low_rank).nonzero()[:, 0]
        unit = torch.nn.functional.normalize(tokens[dense_images].float(), dim=-1)
        weights = (unit @ unit.transpose(1, 2)).clamp(min=0)
        if extra_affinity is not None:
            weights = weights + _as_batch(extra_affinity, device)[dense_images].reshape(weights.shape)
        dense = normalized_laplacian_spectrum(weights, num_vectors, solver, device)
        values[dense_images] = torch.as_tensor(dense.values, device=device)
        vectors[dense_images] = torch.as_tensor(dense.vectors, device=device)
        degree[dense_images] = torch.as_tensor(dense.degree, device=device)
    return Spectrum(values=values.cpu().numpy(), vectors=_fix_signs(vectors).cpu().numpy(),
                    degree=degree.cpu().numpy(), low_rank=low_rank.cpu().numpy())


def grid_spectra(
    grids: list[np.ndarray],
    num_vectors: int,
    extra_affinities: list[np.ndarray | None] | None = None,
    batch_size: int = 64,
    device: str | torch.device | None = None,
    precision: str = "auto",
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Spectra of many images' token grids, solved in batches of equal token count.

    Args:
        grids: per image an (h, w, D) float token grid.
        extra_affinities: per image None or an (h·w, h·w) affinity added to the thresholded cosine one.
        precision: of the feature-space passes (:class:`LowRankSettings`): "auto", "bfloat16" or "float32".

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
            spectrum = feature_laplacian_spectrum(features, num_vectors, extra_affinity=extra, device=device,
                                                  low_rank_solver=LowRankSettings(precision=precision))
            for offset, position in enumerate(chunk):
                results[position] = (spectrum.vectors[offset], spectrum.degree[offset])
    return results
