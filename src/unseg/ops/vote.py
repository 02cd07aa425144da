"""Voting over the masks of several feature sets (CuVLER's VoteCut, Arica et al., CVPR 2024, sec. 3.1).

Masks cut from different feature sets of one image (CuVLER: six DINO / DINOv2 backbones; here any masks variants: a
backbone, a facet, an input resolution each) are pooled and clustered by mask IoU. Each cluster becomes one mask,
the pixels that more than ``agreement`` of its members hold, and its ``votes``, the number of members: an object
that every feature set cuts the same way gathers many votes, a piece of background that one feature set happened to
cut gathers one. CuVLER ranks the voted masks by that count and trains on it as a soft target.

Clustering follows CuVLER's ``cluster_mask_by_iou``: the mask with the most neighbours (IoU above the threshold)
starts a cluster; the cluster takes the pivot's unclustered neighbours, the pivot moves to the member with the
largest summed IoU to the others, and this repeats (at most ``pivot_iterations`` times) until the cluster stops
growing; its members leave the pool.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

VOTE_IOU = 0.6  # CuVLER's cluster_mask_by_iou threshold
VOTE_AGREEMENT = 0.2  # CuVLER's tau_m: a pixel is the cluster's when more than this fraction of its members hold it
PIVOT_ITERATIONS = 5  # CuVLER's pivot_iter


def rle_ious(segmentations: Sequence[dict[str, Any]]) -> np.ndarray:
    """Pairwise IoU of COCO RLE masks of one image (``{"size": [H, W], "counts": str}`` as
    :func:`unseg.core.io.encode_rle` writes them): an (N, N) float64 array, 1 on the diagonal of non-empty masks."""
    if not segmentations:
        return np.zeros((0, 0))
    rles = [{"size": rle["size"], "counts": rle["counts"].encode("ascii") if isinstance(rle["counts"], str)
             else rle["counts"]} for rle in segmentations]
    return np.asarray(mask_utils.iou(rles, rles, [0] * len(rles)), dtype=np.float64).reshape(len(rles), len(rles))


def cluster_by_iou(ious: np.ndarray, threshold: float = VOTE_IOU,
                   pivot_iterations: int = PIVOT_ITERATIONS) -> list[np.ndarray]:
    """Greedy clusters of masks whose IoU with the cluster's pivot exceeds ``threshold`` (module docstring).

    Args:
        ious: (N, N) float pairwise mask IoU (:func:`rle_ious`).

    Returns:
        one int64 array of member indices (ascending) per cluster, largest-degree pivots first; every mask is in
        exactly one cluster (an isolated mask is a cluster of one).
    """
    count = len(ious)
    neighbours = (ious > threshold) | np.eye(count, dtype=bool)
    order = np.argsort(-neighbours.sum(axis=1), kind="stable")
    clustered = np.zeros(count, dtype=bool)
    clusters = []
    for start in order:
        if clustered[start]:
            continue
        pivot, members = start, np.array([start])
        for _ in range(pivot_iterations):
            grown = np.union1d(members, np.flatnonzero(neighbours[pivot] & ~clustered))
            if len(grown) == len(members):
                break
            members = grown
            pivot = members[np.argmax(ious[np.ix_(members, members)].sum(axis=1))]
        clusters.append(members.astype(np.int64))
        clustered[members] = True
    return clusters


def vote_masks(masks: np.ndarray, ious: np.ndarray, threshold: float = VOTE_IOU,
               agreement: float = VOTE_AGREEMENT) -> list[tuple[np.ndarray, np.ndarray]]:
    """One voted mask per IoU cluster of ``masks``.

    Args:
        masks: (N, H, W) bool masks of one image, from any number of feature sets.
        ious: (N, N) their pairwise IoU.
        agreement: a pixel is the voted mask's when more than this fraction of the cluster's members hold it.

    Returns:
        (voted (H, W) bool mask, member indices) per cluster, most members first (ties: clustering order); a
        cluster whose vote leaves no pixel is left out (it cannot happen for agreement < 1 / its size).
    """
    voted = []
    for members in cluster_by_iou(ious, threshold):
        fraction = masks[members].mean(axis=0, dtype=np.float32)
        mask = fraction > agreement
        if mask.any():
            voted.append((mask, members))
    return sorted(voted, key=lambda item: -len(item[1]))
