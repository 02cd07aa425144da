import numpy as np
import pytest
import scipy.linalg

from unseg.spectral import (
    bipartition_saliency,
    border_fraction,
    connected_components,
    cosine_affinity,
    laplacian_eigenvectors,
    multik_masks,
    spectral_clustering,
)


def two_region_grid(height=8, width=8, noise=0.05, seed=0):
    """Left half one 'colour' (feature direction), right half another."""
    rng = np.random.default_rng(seed)
    grid = np.zeros((height, width, 16), dtype=np.float32)
    grid[:, : width // 2, 0] = 1.0
    grid[:, width // 2 :, 1] = 1.0
    return grid + noise * rng.standard_normal(grid.shape).astype(np.float32)


def test_cosine_affinity_matches_manual():
    features = np.random.default_rng(1).standard_normal((5, 3)).astype(np.float32)
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    np.testing.assert_allclose(cosine_affinity(features), unit @ unit.T, atol=1e-6)


def test_laplacian_eigenvectors_match_scipy_reference():
    rng = np.random.default_rng(2)
    affinity = cosine_affinity(rng.standard_normal((40, 8)))
    values, vectors = laplacian_eigenvectors(affinity, 4)
    weights = np.clip(affinity, 0, None).astype(np.float64)  # self-loops kept, as Deep Spectral Methods does
    inv_sqrt = 1 / np.sqrt(weights.sum(axis=1))
    reference = np.eye(40) - inv_sqrt[:, None] * weights * inv_sqrt[None, :]
    ref_values, ref_vectors = scipy.linalg.eigh(reference)
    np.testing.assert_allclose(values, ref_values[:4], atol=1e-4)
    for column in range(4):
        assert abs(float(vectors[:, column] @ ref_vectors[:, column])) > 0.99


def test_two_flat_regions_give_two_masks():
    grid = two_region_grid()
    labels = spectral_clustering(cosine_affinity(grid.reshape(64, -1)), 2).reshape(8, 8)
    assert len(np.unique(labels[:, :4])) == 1 and len(np.unique(labels[:, 4:])) == 1
    assert labels[0, 0] != labels[0, 7]
    masks = [m for m in multik_masks(grid, ks=(2,)) if m.k == 2]
    assert len(masks) == 2
    halves = sorted(tuple(np.flatnonzero(m.mask.any(axis=0))) for m in masks)
    assert halves == [(0, 1, 2, 3), (4, 5, 6, 7)]
    assert all(m.coherence > 0.9 for m in masks)


def test_disconnected_blobs_in_one_cluster_become_two_masks():
    grid = np.zeros((8, 8, 16), dtype=np.float32)
    grid[..., 0] = 1.0  # background
    blob = np.zeros((8, 8), dtype=bool)
    blob[1:3, 1:3] = True
    blob[5:7, 5:7] = True
    grid[blob] = 0.0
    grid[blob, 1] = 1.0
    grid += 0.02 * np.random.default_rng(3).standard_normal(grid.shape).astype(np.float32)
    split = multik_masks(grid, ks=(2,), split_components=True, min_area=2)
    blob_masks = [m.mask for m in split if (m.mask & blob).sum() == m.mask.sum()]
    assert len(blob_masks) == 2
    assert {tuple(np.argwhere(m)[0]) for m in blob_masks} == {(1, 1), (5, 5)}
    unsplit = multik_masks(grid, ks=(2,), split_components=False)
    assert any(np.array_equal(m.mask, blob) for m in unsplit)


def test_connected_components_min_area():
    mask = np.zeros((5, 5), dtype=bool)
    mask[0, 0] = True
    mask[2:4, 2:4] = True
    assert [c.sum() for c in connected_components(mask, min_area=1)] == [1, 4]
    assert [c.sum() for c in connected_components(mask, min_area=2)] == [4]


def test_border_touching_region_is_background():
    grid = np.zeros((10, 10, 16), dtype=np.float32)
    grid[..., 0] = 1.0
    centre = np.zeros((10, 10), dtype=bool)
    centre[3:7, 2:8] = True  # the object: away from the border, and the larger-than-minimal side is background
    grid[centre] = 0.0
    grid[centre, 1] = 1.0
    grid += 0.02 * np.random.default_rng(4).standard_normal(grid.shape).astype(np.float32)
    foreground, soft = bipartition_saliency(grid)
    np.testing.assert_array_equal(foreground, centre)
    assert soft.min() >= 0 and soft.max() <= 1
    assert soft[centre].min() > 0.5 > soft[~centre].max()
    assert border_fraction(foreground) == 0.0


@pytest.mark.parametrize("ks", [(2, 3), (3,)])
def test_multik_reports_k(ks):
    masks = multik_masks(two_region_grid(), ks=ks)
    assert {m.k for m in masks} == set(ks)
