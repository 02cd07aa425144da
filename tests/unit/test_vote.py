"""Voting over masks of several feature sets (unseg.ops.vote, CuVLER's VoteCut), on hand-made masks."""

import numpy as np
import pytest

from unseg.core.io import encode_rle
from unseg.ops.vote import cluster_by_iou, rle_ious, vote_masks

from helpers import box

SHAPE = (10, 10)
# A and two shrunk copies (IoU 0.8, 0.8 and 16 / 24 = 0.667 between the copies), B and a shrunk copy (IoU 0.75),
# and C alone
A = box(SHAPE, 0, 0, 5, 5)
A_NARROW = box(SHAPE, 0, 0, 5, 4)
A_SHORT = box(SHAPE, 0, 0, 4, 5)
B = box(SHAPE, 6, 6, 10, 10)
B_NARROW = box(SHAPE, 6, 7, 10, 10)
C = box(SHAPE, 0, 8, 2, 10)
MASKS = np.stack([C, B, A, A_NARROW, B_NARROW, A_SHORT])


def test_rle_ious_equal_the_hand_computed_overlaps():
    ious = rle_ious([encode_rle(mask) for mask in MASKS])
    assert ious.shape == (6, 6)
    assert np.allclose(np.diag(ious), 1.0)
    assert ious[2, 3] == pytest.approx(0.8) and ious[2, 5] == pytest.approx(0.8)
    assert ious[3, 5] == pytest.approx(16 / 24) and ious[1, 4] == pytest.approx(0.75)
    assert ious[0, 1] == 0.0 and np.allclose(ious, ious.T)
    assert rle_ious([]).shape == (0, 0)


def test_clusters_start_at_the_mask_with_most_neighbours_and_partition_the_masks():
    ious = rle_ious([encode_rle(mask) for mask in MASKS])
    clusters = cluster_by_iou(ious, threshold=0.6)
    assert [members.tolist() for members in clusters] == [[2, 3, 5], [1, 4], [0]]
    # above 0.7 the two copies of A are no longer neighbours, but both are A's: still one cluster around A
    assert [members.tolist() for members in cluster_by_iou(ious, threshold=0.7)] == [[2, 3, 5], [1, 4], [0]]
    # above 0.78 B's copy leaves B; above 0.8 every mask is alone
    assert [members.tolist() for members in cluster_by_iou(ious, threshold=0.78)] == [[2, 3, 5], [0], [1], [4]]
    assert sorted(len(members) for members in cluster_by_iou(ious, threshold=0.8)) == [1] * 6


def test_the_pivot_moves_to_the_cluster_centre_and_takes_its_neighbours():
    # 0 and 1 both have four neighbours; 0 starts (first of the tie) and takes 1, 2, 3 and 5. Summed IoU in that
    # cluster: 0 has 1 + 0.9 * 3 + 0.61 = 4.31, 1 has 0.9 + 1 + 0.99 * 2 + 0.5 = 4.38, so the pivot moves to 1,
    # whose neighbour 4 (IoU 0.7 with 1, 0 with 0) then joins.
    ious = np.eye(6)
    for (i, j), iou in {(0, 1): 0.9, (0, 2): 0.9, (0, 3): 0.9, (0, 5): 0.61, (1, 2): 0.99, (1, 3): 0.99,
                        (1, 4): 0.7, (1, 5): 0.5, (2, 3): 0.9}.items():
        ious[i, j] = ious[j, i] = iou
    assert [m.tolist() for m in cluster_by_iou(ious, 0.6, pivot_iterations=1)] == [[0, 1, 2, 3, 5], [4]]
    assert [m.tolist() for m in cluster_by_iou(ious, 0.6)] == [[0, 1, 2, 3, 4, 5]]


def test_random_masks_fall_in_exactly_one_connected_cluster():
    rng = np.random.default_rng(0)
    masks = np.stack([box((24, 24), *sorted(rng.integers(0, 24, 2)), *sorted(rng.integers(0, 24, 2)))
                      for _ in range(40)])
    masks = masks[masks.reshape(40, -1).any(axis=1)]
    ious = rle_ious([encode_rle(mask) for mask in masks])
    clusters = cluster_by_iou(ious, 0.5)
    assert sorted(np.concatenate(clusters).tolist()) == list(range(len(masks)))
    for members in clusters:  # every member reaches the others through edges above the threshold
        reached, frontier = {members[0]}, [members[0]]
        while frontier:
            current = frontier.pop()
            for other in members:
                if other not in reached and ious[current, other] > 0.5:
                    reached.add(other)
                    frontier.append(other)
        assert reached == set(members.tolist())


def test_a_voted_mask_holds_the_pixels_more_than_the_agreement_of_its_members_hold():
    ious = rle_ious([encode_rle(mask) for mask in MASKS])
    voted = vote_masks(MASKS, ious, threshold=0.6, agreement=0.2)
    assert [members.tolist() for _, members in voted] == [[2, 3, 5], [1, 4], [0]]
    # pixel (4, 4) is A's alone: 1 of 3 > 0.2 keeps it, so the vote is A
    assert (voted[0][0] == A).all()
    assert (vote_masks(MASKS, ious, 0.6, agreement=0.5)[0][0] == A & ~box(SHAPE, 4, 4, 5, 5)).all()  # 1/3 < 0.5
    assert (vote_masks(MASKS, ious, 0.6, agreement=0.7)[0][0] == box(SHAPE, 0, 0, 4, 4)).all()  # 2/3 < 0.7
    assert (voted[1][0] == B).all() and (vote_masks(MASKS, ious, 0.6, 0.5)[1][0] == B_NARROW).all()  # 1/2 not > 0.5
    assert (voted[2][0] == C).all()
