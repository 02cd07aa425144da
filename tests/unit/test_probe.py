"""Tests for unseg.evaluation.probe: k-means evaluation, linear probe and segment retrieval on hand-built token grids.

Token grids are 4x4 cells over 8x8-pixel label maps, each cell covering a uniform 2x2 pixel block, so that
the bilinear upsampling of a cell-constant map is exact away from cell borders and the expected scores can be
written down by hand.
"""

from __future__ import annotations

import numpy as np
import pytest

from unseg.evaluation.probe import (
    kmeans_evaluation,
    linear_probe,
    segment_embeddings,
    segment_retrieval,
    upsample_grid,
)


def cells_to_pixels(cells: np.ndarray, scale: int = 2) -> np.ndarray:
    """(h, w) per-cell classes → (h*scale, w*scale) uint8 label map."""
    return np.kron(np.asarray(cells), np.ones((scale, scale), dtype=np.int64)).astype(np.uint8)


def tokens_for(cells: np.ndarray, codebook: np.ndarray, noise: float = 0.0, seed: int = 0) -> np.ndarray:
    """(h, w, D) tokens: the codebook row of each cell's class, plus small Gaussian noise."""
    rng = np.random.default_rng(seed)
    tokens = codebook[np.asarray(cells)].astype(np.float32)
    return tokens + noise * rng.standard_normal(tokens.shape).astype(np.float32)


CODEBOOK = np.eye(3, 8, dtype=np.float32) * 5.0  # class c ↦ 5 e_c
CELLS_A = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 0, 0], [2, 2, 0, 0]])
CELLS_B = np.array([[1, 1, 1, 1], [0, 0, 0, 0], [0, 2, 2, 0], [0, 0, 0, 0]])


def test_upsample_grid_of_constant_blocks_is_nearest_inside_blocks():
    grid = np.zeros((1, 2, 2), np.float32)
    grid[0, 0, 1] = 1.0
    up = upsample_grid(grid, (8, 8))
    assert up.shape == (1, 8, 8)
    assert up[0, 0, 7] == pytest.approx(1.0) and up[0, 7, 0] == pytest.approx(0.0)


def test_kmeans_evaluation_of_separable_features_is_perfect_for_every_seed():
    tokens = [tokens_for(CELLS_A, CODEBOOK, 0.05, 1), tokens_for(CELLS_B, CODEBOOK, 0.05, 2)]
    labels = [cells_to_pixels(CELLS_A), cells_to_pixels(CELLS_B)]
    result = kmeans_evaluation(tokens, labels, num_classes=3, seeds=[0, 1, 2])
    assert result["miou_per_seed"] == pytest.approx([100.0, 100.0, 100.0])
    assert result["miou_mean"] == pytest.approx(100.0) and result["miou_std"] == pytest.approx(0.0)
    assert result["num_clusters"] == 3 and result["seeds"] == [0, 1, 2]


def test_kmeans_evaluation_with_two_classes_sharing_features():
    # Classes 0 and 1 have the same feature, class 2 another; with 2 clusters, {0,1} form one cluster, which the
    # Hungarian matching gives to the larger class 0. CELLS_A: class 0 = 8 cells, 1 = 4 cells, 2 = 4 cells.
    # IoU_0 = 8 / (8 + 4 false positives) = 2/3; IoU_1 = 0 (never predicted); IoU_2 = 1. mIoU = (2/3 + 0 + 1) / 3.
    codebook = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], np.float32)
    result = kmeans_evaluation([tokens_for(CELLS_A, codebook)], [cells_to_pixels(CELLS_A)], num_classes=3,
                               seeds=[0, 1], num_clusters=2)
    assert result["miou_mean"] == pytest.approx(100 * (2 / 3 + 0 + 1) / 3)
    # pixel accuracy: (8 + 4) correct cells of 16
    assert result["pixel_accuracy_mean"] == pytest.approx(75.0)


def test_kmeans_evaluation_ignores_void_pixels():
    labels = cells_to_pixels(CELLS_A)
    labels[:2, :] = 255  # first cell row void: the clustering may do anything there
    result = kmeans_evaluation([tokens_for(CELLS_A, CODEBOOK)], [labels], num_classes=3, seeds=[0])
    assert result["miou_mean"] == pytest.approx(100.0)


# The probe's logits are upsampled bilinearly, so at a border between cells the larger logit can win a pixel of the
# neighbouring cell; label maps at the grid's own size (scale 1) keep the expected scores exact.


def test_linear_probe_learns_the_classes_and_generalises():
    train = [tokens_for(CELLS_A, CODEBOOK, 0.1, 3)]
    test = [tokens_for(CELLS_B, CODEBOOK, 0.1, 4)]
    result = linear_probe(train, [cells_to_pixels(CELLS_A, 1)], test, [cells_to_pixels(CELLS_B, 1)], num_classes=3,
                          seeds=[0, 1], steps=150, class_names=["bg", "one", "two"])
    assert result["miou_mean"] == pytest.approx(100.0)
    assert result["per_class_iou"] == {"bg": 100.0, "one": 100.0, "two": 100.0}
    assert len(result["miou_per_seed"]) == 2


def test_linear_probe_scores_against_test_ground_truth_not_train():
    # Test features of class 1 look like train class 2 and vice versa: a probe that is scored at all honestly gets
    # classes 1 and 2 wrong. Class 0 stays right: IoU_0 = 1; class 1 and 2 IoU = 0 → mIoU 33.3.
    swapped = CODEBOOK[[0, 2, 1]]
    result = linear_probe([tokens_for(CELLS_A, CODEBOOK)], [cells_to_pixels(CELLS_A, 1)],
                          [tokens_for(CELLS_B, swapped)], [cells_to_pixels(CELLS_B, 1)], num_classes=3, steps=150)
    assert result["miou_mean"] == pytest.approx(100 / 3)


def test_segment_embeddings_average_tokens_over_each_segment():
    grid = np.arange(16, dtype=np.float32).reshape(4, 4, 1)
    segments = cells_to_pixels(np.array([[0, 0, 1, 1]] * 4))
    segments[0, 0] = 255
    values, embeddings = segment_embeddings(grid, segments)
    assert values == [0, 1]
    # segment 1 = columns 2-3 of every row: mean of 2,3,6,7,10,11,14,15 = 8.5
    assert embeddings[1, 0] == pytest.approx(8.5)
    # segment 0 misses a quarter of cell (0,0): weights 0.75 for value 0, 1 for 1,4,5,8,9,12,13
    expected = (0.75 * 0 + 1 + 4 + 5 + 8 + 9 + 12 + 13) / 7.75
    assert embeddings[0, 0] == pytest.approx(expected)


def test_segment_retrieval_paints_segments_with_nearest_reference_class():
    reference_cells = CELLS_A
    reference = [tokens_for(reference_cells, CODEBOOK)]
    # Query: ground truth CELLS_B; predicted segments: segment 7 = the whole class-1 row plus cell (2,1) of class 2,
    # segment 3 = everything else. Segment 7's mean feature is 4/5 class 1 → retrieves class 1; segment 3 mixes
    # 10 background cells and 1 class-2 cell → background.
    segments_cells = np.full((4, 4), 3)
    segments_cells[0, :] = 7
    segments_cells[2, 1] = 7
    query_tokens = [tokens_for(CELLS_B, CODEBOOK)]
    result = segment_retrieval(query_tokens, [cells_to_pixels(segments_cells)], [cells_to_pixels(CELLS_B)],
                               reference, [cells_to_pixels(reference_cells)], num_classes=3)
    # painted: class 1 on 5 cells (4 right, 1 wrong from class 2), class 0 on 11 cells (10 right, 1 from class 2)
    # IoU_0 = 10 / 11, IoU_1 = 4 / 5, IoU_2 = 0 / 2 = 0
    assert result["per_class_iou"] == pytest.approx({"class_0": 100 * 10 / 11, "class_1": 80.0, "class_2": 0.0})
    assert result["num_query_segments"] == 2 and result["num_reference_segments"] == 3


def test_segment_retrieval_on_a_class_subset_and_leave_own_image_out():
    labels = [cells_to_pixels(CELLS_A), cells_to_pixels(CELLS_B)]
    tokens = [tokens_for(CELLS_A, CODEBOOK), tokens_for(CELLS_B, CODEBOOK)]
    # ground-truth segments as queries, the same images as references: with its own image excluded each query
    # segment still finds the same class in the other image → perfect.
    result = segment_retrieval(tokens, labels, labels, tokens, labels, num_classes=3, query_ids=["a", "b"],
                               reference_ids=["a", "b"])
    assert result["miou"] == pytest.approx(100.0)
    # Only image A as reference, and A excluded for query A: query A retrieves nothing → its pixels are wrong.
    only_a = segment_retrieval(tokens[:1], labels[:1], labels[:1], tokens[:1], labels[:1], num_classes=3,
                               query_ids=["a"], reference_ids=["a"])
    assert only_a["miou"] == pytest.approx(0.0)
    # Subset {1, 2}: background pixels become void, reference background segments are dropped.
    subset = segment_retrieval(tokens, labels, labels, tokens, labels, num_classes=3, classes=[1, 2],
                               class_names=["one", "two"])
    assert set(subset["per_class_iou"]) == {"one", "two"} and subset["miou"] == pytest.approx(100.0)


def test_probe_inputs_are_checked():
    with pytest.raises(ValueError, match="token grids but"):
        kmeans_evaluation([np.zeros((2, 2, 3))], [], num_classes=2)
    with pytest.raises(ValueError, match=r"\(h, w, D\)"):
        kmeans_evaluation([np.zeros((2, 2))], [np.zeros((4, 4), np.uint8)], num_classes=2)
