import numpy as np
import pytest
import scipy.linalg
import scipy.sparse.linalg
import torch

from unseg.ops.eigensolver import (
    LowRankSettings,
    block_krylov_largest,
    cosine_affinity,
    feature_degrees,
    feature_laplacian_spectrum,
    features_in_positive_cone,
    grid_spectra,
    laplacian_eigenvectors,
    normalized_laplacian_spectrum,
    orthonormalize,
    pass_dtype,
)
from unseg.ops.spectral import (
    bipartition_saliency,
    border_fraction,
    color_knn_affinity,
    connected_components,
    deep_spectral_masks,
    mask_coherence,
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



def reference_spectrum(affinity, num_vectors):
    """scipy eigsh (float64, shift-invert at 0) on L_sym of the thresholded affinity: ascending values, vectors."""
    weights = np.clip(np.asarray(affinity, dtype=np.float64), 0, None)
    inv_sqrt = 1 / np.sqrt(weights.sum(axis=1))
    laplacian = np.eye(len(weights)) - inv_sqrt[:, None] * weights * inv_sqrt[None, :]
    values, vectors = scipy.sparse.linalg.eigsh(laplacian, k=num_vectors, sigma=-1e-3, which="LM")
    order = np.argsort(values)
    return values[order], vectors[:, order]


def agreement(ours, reference, reference_values, gap=1e-3):
    """Per column: |cos| with the reference vector, or the projection norm onto its near-degenerate cluster."""
    return np.array([
        np.linalg.norm(reference[:, np.abs(reference_values - reference_values[c]) < gap].T @ ours[:, c])
        for c in range(ours.shape[1])
    ])


def clustered_features(count, dim, clusters, common, seed):
    """(count, dim) tokens around ``clusters`` directions plus a shared ``common`` component (keys-like)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim))
    tokens = centres[rng.integers(0, clusters, count)] + 0.6 * rng.standard_normal((count, dim))
    tokens[:, 0] += common
    return tokens.astype(np.float32)


@pytest.mark.parametrize("common", [12.0, 0.0])  # in the positive cone (low-rank path) / not (dense path)
def test_feature_spectrum_matches_scipy_eigsh(common):
    features = np.stack([clustered_features(300, 24, 5, common, seed) for seed in range(3)])
    spectrum = feature_laplacian_spectrum(features, 6, device="cpu")
    assert spectrum.low_rank.tolist() == [common > 0] * 3
    assert spectrum.vectors.shape == (3, 300, 6) and spectrum.vectors.dtype == np.float32
    for index in range(3):
        unit = features[index] / np.linalg.norm(features[index], axis=1, keepdims=True)
        values, vectors = reference_spectrum(unit @ unit.T, 6)
        np.testing.assert_allclose(spectrum.values[index], values, atol=1e-4)
        assert agreement(spectrum.vectors[index].astype(np.float64), vectors, values).min() >= 0.99
        np.testing.assert_allclose(spectrum.degree[index], np.clip(unit @ unit.T, 0, None).sum(axis=1), rtol=1e-4)


def exact_spectrum(features):
    """float64 numpy eigh of L_sym for the thresholded cosine affinity: all values ascending, vectors, degrees."""
    unit = features.astype(np.float64) / np.linalg.norm(features.astype(np.float64), axis=1, keepdims=True)
    weights = np.clip(unit @ unit.T, 0, None)
    degree = weights.sum(axis=1)
    values, vectors = np.linalg.eigh(weights / np.sqrt(degree)[:, None] / np.sqrt(degree)[None, :])
    return 1 - values[::-1], vectors[:, ::-1], degree


@pytest.mark.parametrize("precision,orthonormalization",
                         [("float32", "householder"), ("bfloat16", "householder"), ("float32", "cholesky")])
def test_feature_space_krylov_matches_exact_eigenvectors(precision, orthonormalization):
    # D = 192 > 2 × the 32-column Krylov basis, so this runs the block Krylov branch, not the small-D exact one.
    features = np.stack([clustered_features(500, 192, 9, 20.0, seed) for seed in (10, 11)])
    settings = LowRankSettings(precision=precision, chunk=1, orthonormalization=orthonormalization)
    spectrum = feature_laplacian_spectrum(features, 9, device="cpu", low_rank_solver=settings)
    assert spectrum.low_rank.all()
    for index in range(2):
        values, vectors, degree = exact_spectrum(features[index])
        assert values[9] - values[8] > 0.02 and np.diff(values[:9]).min() > 1e-3  # nine distinct, then a gap
        cosines = np.abs(np.sum(spectrum.vectors[index].astype(np.float64) * vectors[:, :9], axis=0))
        assert cosines.min() >= 0.99
        np.testing.assert_allclose(spectrum.values[index], values[:9], atol=2e-4 if precision == "bfloat16" else 1e-5)
        np.testing.assert_allclose(spectrum.degree[index], degree, rtol=1e-4)


def test_feature_space_path_takes_float16_and_mixed_batches():
    inside = clustered_features(300, 160, 6, 20.0, 12)  # every cosine >= 0: feature space
    outside = clustered_features(300, 160, 6, 0.0, 13)  # negative cosines: dense path
    spectrum = feature_laplacian_spectrum(np.stack([inside, outside]), 6, device="cpu")
    assert spectrum.low_rank.tolist() == [True, False]
    for index, features in enumerate((inside, outside)):
        values, vectors = reference_spectrum(np.clip(cosine_of(features), 0, None), 6)
        np.testing.assert_allclose(spectrum.values[index], values, atol=2e-3)
        assert agreement(spectrum.vectors[index].astype(np.float64), vectors, values).min() >= 0.99
    halves = feature_laplacian_spectrum(inside.astype(np.float16), 6, device="cpu")
    again = feature_laplacian_spectrum(inside.astype(np.float16).astype(np.float32), 6, device="cpu")
    np.testing.assert_array_equal(halves.vectors, again.vectors)  # float16 is read as the same float32 values
    with pytest.raises(ValueError, match="precision"):
        pass_dtype("float8", torch.device("cpu"))
    with pytest.raises(ValueError, match="steps"):
        feature_laplacian_spectrum(inside, 6, device="cpu", low_rank_solver=LowRankSettings(steps=0))


def test_cholesky_qrorthonormalizes_an_ill_conditioned_block_like_householder():
    generator = torch.Generator().manual_seed(16)
    basis = torch.linalg.qr(torch.randn(3, 120, 4, generator=generator)).Q
    # ten nearly parallel columns: XᵀX has condition ~1e9, where unshifted Cholesky-QR breaks down in float32
    block = torch.randn(3, 120, 1, generator=generator) + 1e-4 * torch.randn(3, 120, 10, generator=generator)
    ours = orthonormalize(block, basis, "cholesky")
    householder = orthonormalize(block, basis, "householder")
    identity = torch.eye(10)
    assert float((ours.transpose(1, 2) @ ours - identity).abs().max()) < 1e-5
    assert float((basis.transpose(1, 2) @ ours).abs().max()) < 1e-3
    # same nested spans: Q = X R⁻¹ with R upper triangular in both, so the columns agree up to sign
    assert torch.allclose((ours * householder).sum(dim=1).abs(), torch.ones(3, 10), atol=1e-3)
    positive = np.abs(block[0].numpy()) + 1  # every cosine > 0: the feature-space path
    with pytest.raises(ValueError, match="orthonormalization"):
        feature_laplacian_spectrum(positive, 3, device="cpu",
                                   low_rank_solver=LowRankSettings(orthonormalization="gram-schmidt"))
    # "auto" is Householder on the CPU (Cholesky-QR on CUDA, where batched Householder QR loops over images);
    # D = 192 keeps the solve on the Krylov branch, which orthonormalises
    features = clustered_features(300, 192, 9, 20.0, 17)
    default, householder = (feature_laplacian_spectrum(features, 9, device="cpu", low_rank_solver=settings)
                            for settings in (LowRankSettings(), LowRankSettings(orthonormalization="householder")))
    assert default.low_rank.all()
    np.testing.assert_array_equal(default.vectors, householder.vectors)


def test_feature_degrees_batched_and_per_image_agree():
    features = torch.tensor(np.stack([clustered_features(90, 12, 3, 5.0, seed) for seed in (14, 15)]))
    per_image, batched = feature_degrees(features, per_image=True), feature_degrees(features, per_image=False)
    for ours, theirs in zip(per_image, batched):  # the CUDA default is the batched form
        torch.testing.assert_close(ours, theirs)
    unit = features.double() / features.double().norm(dim=-1, keepdim=True)
    torch.testing.assert_close(batched[2].double(), (unit @ unit.transpose(1, 2)).sum(-1), rtol=1e-5, atol=1e-5)


def cosine_of(features):
    unit = features.astype(np.float64) / np.linalg.norm(features.astype(np.float64), axis=1, keepdims=True)
    return unit @ unit.T


def test_degenerate_eigenvalues_agree_as_subspaces():
    # Three identical, disconnected blocks: eigenvalue 0 three times, and every other eigenvalue thrice too.
    rng = np.random.default_rng(5)
    block = np.abs(rng.standard_normal((20, 20)))
    block = block + block.T
    affinity = np.kron(np.eye(3), block)
    values, vectors = reference_spectrum(affinity, 6)
    spectrum = normalized_laplacian_spectrum(affinity, 6, device="cpu")
    np.testing.assert_allclose(spectrum.values[0], values, atol=1e-5)
    assert agreement(spectrum.vectors[0].astype(np.float64), vectors, values).min() >= 0.99
    assert not spectrum.low_rank


def test_block_krylov_finds_largest_eigenpairs_of_an_operator():
    rng = np.random.default_rng(6)
    basis, _ = np.linalg.qr(rng.standard_normal((200, 200)))
    true_values = np.concatenate([[5.0, 4.0, 3.5, 3.0], rng.uniform(0, 2, 196)])
    matrix = torch.tensor((basis * true_values) @ basis.T, dtype=torch.float32)[None]
    values, vectors, residual = block_krylov_largest(lambda x: matrix @ x, torch.randn(1, 200, 8), 4)
    np.testing.assert_allclose(values[0].numpy(), [5.0, 4.0, 3.5, 3.0], atol=1e-4)
    cosines = np.abs(np.sum(vectors[0].numpy() * basis[:, :4], axis=0))
    assert cosines.min() > 0.999 and float(residual.max()) <= 1e-4


def test_positive_cone_check_is_sound():
    rng = np.random.default_rng(7)
    claims = []
    for common in (0.0, 1.0, 3.0, 10.0):
        shift = np.zeros(8)
        shift[0] = common
        unit = torch.nn.functional.normalize(torch.tensor(rng.standard_normal((1, 50, 8)) + shift,
                                                          dtype=torch.float32), dim=-1)
        claims.append(bool(features_in_positive_cone(unit)[0]))
        if claims[-1]:
            assert float((unit[0] @ unit[0].T).min()) >= 0  # never claims a cone that is not one
    assert claims == [False, False, False, True]
    assert bool(features_in_positive_cone(torch.ones(1, 4, 3))[0])
    assert not bool(features_in_positive_cone(torch.tensor([[[1.0, 0.0], [-1.0, 0.1]]]))[0])


def test_grid_spectra_batches_by_token_count_and_keeps_order():
    grids = [clustered_features(n, 8, 2, 5.0, seed).reshape(h, w, 8)
             for seed, (n, h, w) in enumerate([(16, 4, 4), (12, 3, 4), (16, 4, 4)])]
    spectra = grid_spectra(grids, 3, batch_size=1, device="cpu")
    assert [vectors.shape for vectors, _ in spectra] == [(16, 3), (12, 3), (16, 3)]
    single = feature_laplacian_spectrum(grids[1].reshape(12, 8), 3, device="cpu")
    np.testing.assert_allclose(np.abs(spectra[1][0]), np.abs(single.vectors[0]), atol=1e-4)


def test_mask_coherence_is_mean_pairwise_cosine():
    unit = np.random.default_rng(8).standard_normal((9, 5))
    unit /= np.linalg.norm(unit, axis=1, keepdims=True)
    mask = np.array([1, 0, 1, 1, 0, 0, 1, 0, 0], dtype=bool)
    assert mask_coherence(unit, mask) == pytest.approx(float((unit[mask] @ unit[mask].T).mean()), abs=1e-9)


def centre_object_grid(seed=4):
    grid = np.zeros((10, 10, 16), dtype=np.float32)
    grid[..., 0] = 1.0
    centre = np.zeros((10, 10), dtype=bool)
    centre[3:7, 2:8] = True
    grid[centre] = 0.0
    grid[centre, 1] = 1.0
    return grid + 0.02 * np.random.default_rng(seed).standard_normal(grid.shape).astype(np.float32), centre


def test_deep_spectral_border_touching_region_is_background():
    grid, centre = centre_object_grid()
    masks = deep_spectral_masks(grid, ks=(2,), num_eigenvectors=2, eigen_masks=1)
    eigen = [m for m in masks if m.eigen_index == 1]
    assert len(eigen) == 1 and np.array_equal(eigen[0].mask, centre) and eigen[0].k == 2
    segments = [m for m in masks if m.eigen_index == -1]
    assert len(segments) == 1 and np.array_equal(segments[0].mask, centre)  # the border segment was dropped
    kept_all = deep_spectral_masks(grid, ks=(2,), num_eigenvectors=2, eigen_masks=0, drop_background=False)
    assert sorted(m.mask.sum() for m in kept_all) == [24, 76]


def test_deep_spectral_two_flat_regions_and_two_blobs():
    grid = np.zeros((8, 8, 16), dtype=np.float32)
    grid[:, :4, 0] = 1.0
    grid[:, 4:, 1] = 1.0
    grid += 0.05 * np.random.default_rng(0).standard_normal(grid.shape).astype(np.float32)
    masks = deep_spectral_masks(grid, ks=(2,), num_eigenvectors=2, eigen_masks=0, drop_background=False)
    assert sorted(tuple(np.flatnonzero(m.mask.any(axis=0))) for m in masks) == [(0, 1, 2, 3), (4, 5, 6, 7)]
    blobs = np.zeros((8, 8, 16), dtype=np.float32)
    blobs[..., 0] = 1.0
    blob = np.zeros((8, 8), dtype=bool)
    blob[1:3, 1:3] = blob[5:7, 5:7] = True
    blobs[blob] = 0.0
    blobs[blob, 1] = 1.0
    blobs += 0.02 * np.random.default_rng(3).standard_normal(blobs.shape).astype(np.float32)
    masks = deep_spectral_masks(blobs, ks=(2,), num_eigenvectors=2, eigen_masks=1)
    for index in (1, -1):
        parts = [m for m in masks if m.eigen_index == index]
        assert {tuple(np.argwhere(m.mask)[0]) for m in parts} == {(1, 1), (5, 5)}
        assert sorted(m.component for m in parts) == [0, 1]


def test_color_knn_affinity_links_nearest_colours():
    image = np.zeros((4, 4, 3), dtype=np.uint8)
    image[:, 2:] = 255
    affinity = color_knn_affinity(image, neighbors=(4,), spatial_weights=(0.0,))
    np.testing.assert_array_equal(affinity, affinity.T)
    same = (image[..., 0].reshape(-1)[:, None] == image[..., 0].reshape(-1)[None, :])
    assert affinity[~same].sum() == 0  # with 8 pixels per colour, the 4 nearest are all of the same colour
    assert affinity.sum() == 2 * 16 * 4  # every pixel has 4 links, counted in both directions
