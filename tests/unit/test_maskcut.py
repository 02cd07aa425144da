"""MaskCut (unseg.ops.maskcut): the thresholded graph and the foreground rule by hand, the cuts on planted tokens,
and the same cuts as an independent reference solving CutLER's generalized eigenproblem with scipy."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch
from scipy import ndimage

from unseg.ops.maskcut import EDGE_EPSILON, foreground_of_cut, maskcut_masks, thresholded_affinity


def test_thresholded_affinity_by_hand():
    # cosine similarities: (a, b) = 0.8, (a, c) = 0.1, (b, c) = 0.6; the zero token is similar to nothing, not even
    # itself
    a, b, c = [1.0, 0.0], [0.8, 0.6], [0.1, np.sqrt(1 - 0.01)]
    features = torch.tensor([[a, b, c, [0.0, 0.0]]])
    graph = thresholded_affinity(features, tau=0.15)[0].numpy()
    e = EDGE_EPSILON
    expected = np.array([[1, 1, e, e],
                         [1, 1, 1, e],
                         [e, 1, 1, e],
                         [e, e, e, e]])
    np.testing.assert_allclose(graph, expected, rtol=1e-6)
    # a higher threshold removes the 0.6 edge
    assert thresholded_affinity(features, tau=0.7)[0, 1, 2] == pytest.approx(e)


def test_foreground_is_the_peak_component_of_its_side():
    # 4 x 5 grid; above the mean: a 2 x 2 block (peak 0.9 inside) and a lone cell apart from it
    fiedler = np.full((4, 5), -0.2)
    fiedler[1:3, 1:3] = 0.5
    fiedler[1, 1] = 0.9
    fiedler[3, 4] = 0.6
    mask = foreground_of_cut(fiedler.reshape(-1), (4, 5))
    expected = np.zeros((4, 5), bool)
    expected[1:3, 1:3] = True
    np.testing.assert_array_equal(mask, expected)


def test_foreground_flips_to_the_other_side_for_the_peak_or_three_corners():
    # the peak |x| (-1.0) lies below the mean: the side below is the object, its component holding the minimum
    fiedler = np.full((4, 5), 0.3)
    fiedler[2:4, 0:2] = -0.4
    fiedler[3, 0] = -1.0
    expected = np.zeros((4, 5), bool)
    expected[2:4, 0:2] = True
    np.testing.assert_array_equal(foreground_of_cut(fiedler.reshape(-1), (4, 5)), expected)
    # the side holding the peak (0.9) holds three corners: it is the background
    fiedler = np.full((4, 5), 0.5)
    fiedler[1:3, 1:4] = -0.3
    fiedler[3, 4] = -0.2
    fiedler[0, 0] = 0.9
    expected = np.zeros((4, 5), bool)
    expected[1:3, 1:4] = True  # the component of the most negative entry's side: not the lone corner cell
    fiedler[1, 2] = -0.4
    np.testing.assert_array_equal(foreground_of_cut(fiedler.reshape(-1), (4, 5)), expected)


def test_foreground_does_not_depend_on_the_solver_sign():
    rng = np.random.default_rng(0)
    for _ in range(200):
        fiedler = rng.standard_normal(30)
        np.testing.assert_array_equal(foreground_of_cut(fiedler, (5, 6)), foreground_of_cut(-fiedler, (5, 6)))


def planted_grid(seed: int = 0) -> tuple[np.ndarray, list[np.ndarray]]:
    """A 16 x 16 grid of 16-d tokens: a background direction and three objects of 42, 20 and 9 tokens, each of its
    own direction, with noise well inside the threshold."""
    rng = np.random.default_rng(seed)
    directions = np.eye(16)
    grid = np.tile(directions[0], (16, 16, 1))
    objects = []
    for index, (rows, cols) in enumerate([(slice(2, 8), slice(2, 9)), (slice(10, 14), slice(3, 8)),
                                          (slice(9, 12), slice(11, 14))], start=1):
        mask = np.zeros((16, 16), bool)
        mask[rows, cols] = True
        grid[mask] = directions[index]
        objects.append(mask)
    return (grid + 0.05 * rng.standard_normal(grid.shape)).astype(np.float32), objects


def normalized_cut(weights: np.ndarray, mask: np.ndarray) -> float:
    """Shi and Malik's Ncut(S, S̄) = cut / vol(S) + cut / vol(S̄) of the token set ``mask`` in the graph ``weights``."""
    inside = mask.reshape(-1)
    cut = weights[inside][:, ~inside].sum()
    return float(cut / weights[inside].sum() + cut / weights[~inside].sum())


def test_the_cuts_find_the_planted_objects_in_cut_order_and_never_reuse_a_patch():
    grid, objects = planted_grid()
    masks = maskcut_masks([grid], num_cuts=3, tau=0.15, center=False)[0]
    assert [m.cluster for m in masks] == [0, 1, 2]
    found = [next(i for i, planted in enumerate(objects) if np.array_equal(m.mask, planted)) for m in masks]
    assert sorted(found) == [0, 1, 2]  # each cut is exactly one planted object
    assert all(m.coherence > 0.9 for m in masks)
    # the first cut is the planted object of the smallest normalized cut in the whole graph (the noise's chance
    # edges above tau make it the 20-token one here, not the largest)
    weights = thresholded_affinity(torch.tensor(grid.reshape(1, -1, 16)), 0.15)[0].double().numpy()
    assert found[0] == int(np.argmin([normalized_cut(weights, planted) for planted in objects]))
    # a further cut has only the background and the removed tokens left: its mask overlaps the last one or is the
    # background, so the cuts end with the three objects
    assert len(maskcut_masks([grid], num_cuts=5, tau=0.15, center=False)[0]) == 3


def reference_maskcut(grid: np.ndarray, num_cuts: int, tau: float) -> list[np.ndarray]:
    """CutLER's MaskCut in float64 with scipy's generalized eigensolver, (D − W) x = λ D x, for one image."""
    height, width, dim = grid.shape
    features = grid.reshape(-1, dim).astype(np.float64)
    removed = np.zeros(height * width, bool)
    masks, previous = [], None
    for _ in range(num_cuts):
        kept = features * ~removed[:, None]
        norms = np.linalg.norm(kept, axis=1, keepdims=True)
        unit = np.divide(kept, norms, out=np.zeros_like(kept), where=norms > 0)
        weights = np.where(unit @ unit.T > tau, 1.0, 1e-5)
        degree = np.diag(weights.sum(axis=1))
        _, vectors = scipy.linalg.eigh(degree - weights, degree, subset_by_index=[1, 1])
        x = vectors[:, 0]
        x = x * np.sign(x[np.argmax(np.abs(x))])  # the peak positive: the side above the mean holds it
        side = x > x.mean()
        corners = side.reshape(height, width)[[0, 0, -1, -1], [0, -1, 0, -1]].sum()
        if corners >= 3:
            side, x = ~side, -x
        labels, _ = ndimage.label(side.reshape(height, width))
        mask = labels == labels.flat[np.argmax(x)]
        iou = (mask & previous).sum() / (mask | previous).sum() if previous is not None else 0.0
        if mask.mean() <= 0.01 or iou > 0.5:
            break
        if (mask & ~removed.reshape(height, width)).any():  # a cut of removed tokens only adds no mask
            masks.append(mask & ~removed.reshape(height, width))
        removed |= mask.reshape(-1)
        previous = mask
    return masks


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_batched_cuts_equal_the_scipy_reference(seed):
    # tokens with spatial structure and overlapping similarities (no planted cliques): a smooth random field plus
    # noise; three images of two sizes in one call (the 12 x 12 ones cut together)
    rng = np.random.default_rng(seed)
    grids = []
    for size in (12, 14, 12):
        coarse = rng.standard_normal((4, 4, 24))
        smooth = ndimage.zoom(coarse, (size / 4, size / 4, 1), order=1)
        grids.append((smooth + 0.3 * rng.standard_normal((size, size, 24))).astype(np.float32))
    ours = maskcut_masks(grids, num_cuts=3, tau=0.15, center=False)
    assert max(len(found) for found in ours) >= 2  # the removal of cut tokens is exercised
    for grid, found in zip(grids, ours):
        expected = reference_maskcut(grid, 3, 0.15)
        assert len(found) == len(expected)
        for mask, reference in zip(found, expected):
            np.testing.assert_array_equal(mask.mask, reference)
        union = np.zeros(grid.shape[:2], int)
        for mask in found:
            union += mask.mask
        assert union.max() == 1  # no patch in two masks


def test_centring_recovers_the_objects_under_a_shared_component():
    # DINOv2's keys: a component shared by every token, ~93 % of their norm. Added to the planted grid it puts every
    # cosine above tau: the uncentred graph is complete and its cut finds no object; centred, the cuts are the
    # reference's on the centred tokens and find the three objects again
    grid, objects = planted_grid()
    shared = grid + 3.0 * np.ones(16, np.float32)
    unit = shared.reshape(-1, 16) / np.linalg.norm(shared.reshape(-1, 16), axis=1, keepdims=True)
    assert (unit @ unit.T).min() > 0.15
    uncentred = maskcut_masks([shared], num_cuts=3, tau=0.15, center=False)[0]
    assert not any(np.array_equal(m.mask, planted) for m in uncentred for planted in objects)
    centred = maskcut_masks([shared], num_cuts=3, tau=0.15)[0]
    expected = reference_maskcut(shared - shared.reshape(-1, 16).mean(axis=0), 3, 0.15)
    assert [m.mask.tolist() for m in centred] == [m.tolist() for m in expected]
    assert sorted(next(i for i, planted in enumerate(objects) if np.array_equal(m.mask, planted))
                  for m in centred) == [0, 1, 2]
