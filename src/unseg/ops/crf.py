"""Dense CRF refinement (Krähenbühl & Koltun, 2011) of any per-pixel class probabilities, through pydensecrf.

Generic, so every stage can reuse it: (image (H, W, 3) uint8, probabilities (C, H, W)) → refined probabilities or
labels. ``pydensecrf`` (PyPI ``pydensecrf2``, the optional extra ``crf``) is imported lazily; without it
:func:`crf_available` is False and the refining functions raise an ImportError that says how to install it.

The default kernel parameters are those of MaskContrast / DeepLab's CRF post-processing (10 mean-field iterations,
Gaussian kernel weight 3 and sxy 1, bilateral kernel weight 4, sxy 67, srgb 3).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["CrfParams", "crf_available", "dense_crf", "dense_crf_labels", "labels_to_probabilities"]

INSTALL_HINT = (
    "dense CRF needs pydensecrf: pip install 'pydensecrf2==1.1' "
    "(or the project's extra: pip install -e '.[crf]')"
)


@dataclass(frozen=True)
class CrfParams:
    """Mean-field iterations and the two pairwise kernels' weights (compat) and standard deviations."""

    iterations: int = 10
    gaussian_weight: float = 3.0
    gaussian_sxy: float = 1.0
    bilateral_weight: float = 4.0
    bilateral_sxy: float = 67.0
    bilateral_srgb: float = 3.0


def crf_available() -> bool:
    """Whether pydensecrf can be imported."""
    try:
        import pydensecrf.densecrf  # noqa: F401
    except ImportError:
        return False
    return True


def dense_crf(image: np.ndarray, probabilities: np.ndarray, params: CrfParams = CrfParams()) -> np.ndarray:
    """Refine per-pixel class probabilities with a fully connected CRF whose pairwise term follows the image.

    Args:
        image: (H, W, 3) uint8 RGB image.
        probabilities: (C, H, W) float, non-negative, summing to 1 over C (softmax output); C >= 1.
        params: kernel parameters.

    Returns:
        (C, H, W) float32 refined marginals (each pixel sums to 1).

    Raises:
        ImportError: pydensecrf is missing (the message says how to install it).
        ValueError: on shapes that do not match or probabilities outside [0, 1].
    """
    try:
        import pydensecrf.densecrf as dcrf
    except ImportError as error:
        raise ImportError(INSTALL_HINT) from error
    image = np.asarray(image)
    probabilities = np.asarray(probabilities, dtype=np.float32)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be (H, W, 3) uint8, got {image.shape} {image.dtype}")
    if probabilities.ndim != 3 or probabilities.shape[1:] != image.shape[:2]:
        raise ValueError(f"probabilities must be (C, H, W) with (H, W) = {image.shape[:2]}, got {probabilities.shape}")
    if probabilities.min() < 0 or probabilities.max() > 1 + 1e-4:
        raise ValueError("probabilities must lie in [0, 1]")
    num_labels, height, width = probabilities.shape
    crf = dcrf.DenseCRF2D(width, height, num_labels)
    # unary = -log p, clipped so that a zero probability is a large finite energy
    unary = -np.log(np.clip(probabilities, 1e-8, 1.0)).reshape(num_labels, -1)
    crf.setUnaryEnergy(np.ascontiguousarray(unary, dtype=np.float32))
    crf.addPairwiseGaussian(sxy=params.gaussian_sxy, compat=params.gaussian_weight)
    crf.addPairwiseBilateral(
        sxy=params.bilateral_sxy,
        srgb=params.bilateral_srgb,
        rgbim=np.ascontiguousarray(image),
        compat=params.bilateral_weight,
    )
    marginals = np.asarray(crf.inference(params.iterations), dtype=np.float32)
    return marginals.reshape(num_labels, height, width)


def dense_crf_labels(image: np.ndarray, probabilities: np.ndarray, params: CrfParams = CrfParams()) -> np.ndarray:
    """:func:`dense_crf`, then the most probable label per pixel: (H, W) int64."""
    return dense_crf(image, probabilities, params).argmax(axis=0).astype(np.int64)


def labels_to_probabilities(
    labels: np.ndarray, num_labels: int, confidence: float = 0.8, ignore_label: int = 255
) -> np.ndarray:
    """Soft probabilities from a hard label map, for refining predictions saved only as labels.

    Args:
        labels: (H, W) integer labels in 0..num_labels-1, or ``ignore_label`` (no opinion: uniform).
        num_labels: C.
        confidence: probability given to the labelled class; the rest is spread evenly over the other classes.

    Returns:
        (C, H, W) float32 probabilities summing to 1 per pixel.
    """
    labels = np.asarray(labels)
    if not 0.0 < confidence <= 1.0:
        raise ValueError(f"confidence must lie in (0, 1], got {confidence}")
    valid = labels != ignore_label
    if (labels[valid] >= num_labels).any() or (labels[valid] < 0).any():
        raise ValueError(f"labels must lie in 0..{num_labels - 1} or be {ignore_label}")
    if num_labels == 1:
        confidence = 1.0  # a single label is certain
    other = (1.0 - confidence) / max(num_labels - 1, 1)
    probabilities = np.full((num_labels, *labels.shape), other, dtype=np.float32)
    rows, cols = np.nonzero(valid)
    probabilities[labels[valid].astype(np.int64), rows, cols] = confidence
    probabilities[:, ~valid] = 1.0 / num_labels
    return probabilities
