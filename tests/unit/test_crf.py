"""Tests for unseg.ops.crf. The refining tests need pydensecrf (extra "crf") and are skipped cleanly without it."""

from __future__ import annotations

import numpy as np
import pytest

from unseg.ops.crf import (
    CrfParams,
    crf_available,
    dense_crf,
    dense_crf_labels,
    labels_to_probabilities,
)

needs_crf = pytest.mark.skipif(
    not crf_available(), reason="pydensecrf is not installed (pip install 'pydensecrf2==1.1')"
)


def test_labels_to_probabilities_by_hand():
    labels = np.array([[0, 2], [255, 1]], dtype=np.uint8)
    probabilities = labels_to_probabilities(labels, num_labels=3, confidence=0.8)
    assert probabilities.shape == (3, 2, 2) and probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities[:, 0, 0], [0.8, 0.1, 0.1])
    np.testing.assert_allclose(probabilities[:, 0, 1], [0.1, 0.1, 0.8])
    np.testing.assert_allclose(probabilities[:, 1, 0], [1 / 3] * 3)  # void: no opinion
    np.testing.assert_allclose(probabilities.sum(0), 1.0, rtol=1e-6)
    with pytest.raises(ValueError, match="0..2"):
        labels_to_probabilities(np.array([[3]]), num_labels=3)


def test_crf_refuses_mismatched_inputs_or_says_how_to_install():
    image = np.zeros((4, 5, 3), np.uint8)
    probabilities = np.full((2, 4, 4), 0.5, np.float32)
    if crf_available():
        with pytest.raises(ValueError, match="probabilities"):
            dense_crf(image, probabilities)
    else:
        with pytest.raises(ImportError, match="pydensecrf2"):
            dense_crf(image, probabilities)


@needs_crf
def test_crf_snaps_a_blurred_prediction_to_the_colour_edge():
    # Left half black, right half white; the prediction's boundary is 4 px too far right and soft. The bilateral
    # kernel pulls the misplaced column block to the colour of its neighbours: the result equals the image halves.
    height, width = 24, 32
    image = np.zeros((height, width, 3), np.uint8)
    image[:, width // 2 :] = 255
    truth = (np.arange(width) >= width // 2).astype(np.int64)[None].repeat(height, 0)
    predicted = (np.arange(width) >= width // 2 + 4).astype(np.int64)[None].repeat(height, 0)
    probabilities = labels_to_probabilities(predicted, 2, confidence=0.6)
    refined = dense_crf(image, probabilities)
    assert refined.shape == (2, height, width)
    np.testing.assert_allclose(refined.sum(0), 1.0, atol=1e-4)
    labels = dense_crf_labels(image, probabilities)
    assert (predicted != truth).sum() == 4 * height
    assert (labels != truth).sum() == 0


@needs_crf
def test_crf_without_pairwise_terms_returns_the_unary_probabilities():
    # With both kernel weights 0 the mean-field marginals are exp(-unary) normalised, i.e. the input probabilities.
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (6, 7, 3), dtype=np.uint8)
    logits = rng.standard_normal((3, 6, 7))
    probabilities = (np.exp(logits) / np.exp(logits).sum(0)).astype(np.float32)
    refined = dense_crf(image, probabilities, CrfParams(iterations=3, gaussian_weight=0.0, bilateral_weight=0.0))
    np.testing.assert_allclose(refined, probabilities, atol=1e-5)
