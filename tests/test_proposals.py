"""Fast eigensolver, Deep Spectral Methods masks, and the proposals stage's runners and evaluation."""

import json

import numpy as np
import pytest
import scipy.sparse.linalg
import torch
from PIL import Image

from unseg.features import extract_features
from unseg.index import build_index, write_index
from unseg.io import encode_rle, read_json, read_saliency, write_json, write_label_png
from unseg.proposals import (
    evaluate_proposals,
    image_grid_masks,
    object_proposal_scores,
    run_masks,
    run_saliency,
    semantic_component_instances,
)
from unseg.spectral import (
    LowRankSettings,
    _orthonormalize,
    block_krylov_largest,
    color_knn_affinity,
    deep_spectral_masks,
    feature_degrees,
    feature_laplacian_spectrum,
    features_in_positive_cone,
    grid_spectra,
    mask_coherence,
    normalized_laplacian_spectrum,
    pass_dtype,
)


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


def test_cholesky_qr_orthonormalizes_an_ill_conditioned_block_like_householder():
    generator = torch.Generator().manual_seed(16)
    basis = torch.linalg.qr(torch.randn(3, 120, 4, generator=generator)).Q
    # ten nearly parallel columns: XᵀX has condition ~1e9, where unshifted Cholesky-QR breaks down in float32
    block = torch.randn(3, 120, 1, generator=generator) + 1e-4 * torch.randn(3, 120, 10, generator=generator)
    ours = _orthonormalize(block, basis, "cholesky")
    householder = _orthonormalize(block, basis, "householder")
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


def test_deep_spectral_colour_term_separates_flat_features_by_colour():
    grid = np.ones((12, 12, 8), dtype=np.float32)  # features carry no information
    grid += 1e-3 * np.random.default_rng(1).standard_normal(grid.shape).astype(np.float32)
    image = np.zeros((12, 12, 3), dtype=np.uint8)
    image[3:9, 4:10] = (255, 0, 0)
    [masks] = image_grid_masks([grid], "deep_spectral", ks=(2,), min_area_fraction=0, num_eigenvectors=2,
                               eigen_masks=1, color_weight=10.0, images=[image], device="cpu")
    object_mask = image[..., 0] > 0
    assert any(np.array_equal(m.mask, object_mask) and m.eigen_index == 1 for m in masks)
    with pytest.raises(ValueError, match="grid-sized image"):
        image_grid_masks([grid], "deep_spectral", color_weight=1.0)
    with pytest.raises(ValueError, match="method"):
        image_grid_masks([grid], "nope")


def test_semantic_component_instances_split_by_void_outline():
    semantic = np.zeros((12, 12), dtype=np.uint8)
    semantic[1:5, 1:11] = 1
    semantic[1:5, 6] = 255  # the void outline between two touching objects of class 1
    semantic[7:11, 2:6] = 2
    semantic[11, 11] = 1  # a speck below the minimum area
    instances = semantic_component_instances(semantic, min_area=4)
    assert [(category, int(mask.sum())) for category, mask in instances] == [(1, 20), (1, 16), (2, 16)]


def test_object_proposal_scores_hand_case():
    foreground = np.zeros((4, 4), dtype=bool)
    foreground[:2, :2] = True
    exact, half = foreground.copy(), np.zeros((4, 4), dtype=bool)
    half[:2, 0] = True
    proposals = [{"segmentation": encode_rle(half), "score": 0.9}, {"segmentation": encode_rle(exact), "score": 0.1}]
    saliency = np.where(foreground, 0.8, 0.2).astype(np.float32)
    scores = object_proposal_scores(proposals, saliency, foreground)
    assert scores == {"best_proposal_iou": 100.0, "top_proposal_iou": 50.0, "proposal_union_iou": 100.0,
                      "saliency_iou": 100.0}


def write_voc(root, semantic_maps):
    (root / "JPEGImages").mkdir(parents=True)
    (root / "SegmentationClass").mkdir()
    for name, semantic in semantic_maps.items():
        Image.fromarray(np.full(semantic.shape + (3,), 128, dtype=np.uint8)).save(root / "JPEGImages" / f"{name}.jpg")
        write_label_png(root / "SegmentationClass" / f"{name}.png", semantic)


def test_evaluate_proposals_scores_perfect_proposals_fully(tmp_path):
    first = np.zeros((32, 32), dtype=np.uint8)
    first[2:12, 2:12] = 1
    first[2:12, 20:30] = 1
    first[12, :] = 255
    second = np.zeros((32, 32), dtype=np.uint8)
    second[10:20, 10:20] = 3
    write_voc(tmp_path / "data", {"a": first, "b": second})
    index = build_index(tmp_path / "data")
    write_index(index, tmp_path / "images.csv")
    proposals, saliency_dir = [], tmp_path / "saliency"
    saliency_dir.mkdir()
    for image_id, name, semantic in [(1, "a", first), (2, "b", second)]:
        for category, mask in semantic_component_instances(semantic, 10):
            proposals.append({"image_id": image_id, "category_id": 1, "segmentation": encode_rle(mask), "score": 0.5})
        foreground = (semantic > 0) & (semantic < 255)
        Image.fromarray(np.where(foreground, 255, 0).astype(np.uint8)).save(saliency_dir / f"{name}.png")
    write_json(tmp_path / "proposals.json", proposals)
    metrics = evaluate_proposals(tmp_path / "images.csv", tmp_path / "data", tmp_path / "proposals.json",
                                 saliency_dir, tmp_path / "metrics.json", tmp_path / "report.md", min_instance_area=10)
    assert metrics["multi"]["AP"] == pytest.approx(100.0) and metrics["AR100"] == pytest.approx(100.0)
    assert metrics["recall_by_instance_count"]["num_instances"] == {"1": 1, "2": 2, "3": 0, "4": 0, "5": 0, "6+": 0}
    assert metrics["recall_by_instance_count"]["recall"]["2"] == 100.0
    assert "approximate" in metrics["instance_ground_truth"]["source"]
    assert metrics["object_iou"]["proposal_union_iou"] == pytest.approx(100.0)
    assert metrics["object_iou"]["saliency_iou"] == pytest.approx(100.0)
    assert json.loads((tmp_path / "metrics.json").read_text())["num_images"] == 2
    report = (tmp_path / "report.md").read_text()
    assert "Recall by number of instances" in report and "AR@100" in report


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory):
    folder = tmp_path_factory.mktemp("store")
    rng = np.random.default_rng(0)
    paths = []
    for index in range(3):
        picture = np.full((64, 64, 3), 40, dtype=np.uint8)
        picture[16:48, 16 + 4 * index : 40 + 4 * index] = (220, 30, 30)
        paths.append(str(folder / f"img{index}.png"))
        Image.fromarray(np.clip(picture + rng.integers(0, 20, picture.shape), 0, 255).astype(np.uint8)).save(paths[-1])
    extract_features(paths, ["a", "b", "c"], [1, 2, 3], folder / "f.zarr", backbone="dino_vits16", weights="random",
                     resolution=96, facets=["keys"], progress=False)
    return folder / "f.zarr", dict(zip(["a", "b", "c"], paths))


@pytest.mark.parametrize("method", ["spectral_multik", "deep_spectral"])
def test_run_masks_writes_coco_results_with_provenance_of_each_mask(tiny_store, tmp_path, method):
    store_path, paths = tiny_store
    count = run_masks(store_path, tmp_path / "masks.json", ks=(2, 3), method=method, batch_size=2,
                      color_weight=1.0 if method == "deep_spectral" else 0.0, image_paths=paths, progress=False)
    masks = read_json(tmp_path / "masks.json")
    assert count == len(masks) > 0 and {m["image_id"] for m in masks} <= {1, 2, 3}
    assert all(m["segmentation"]["size"] == [64, 64] and "k" in m for m in masks)
    assert ("eigen_index" in masks[0]) == (method == "deep_spectral")
    with pytest.raises(ValueError, match="image paths"):
        if method == "deep_spectral":
            run_masks(store_path, tmp_path / "x.json", method=method, color_weight=1.0, progress=False)
        else:
            raise ValueError("image paths")


def test_stage_runners_report_and_check_the_solver_precision(tiny_store, tmp_path, capsys):
    store_path, _ = tiny_store
    run_masks(store_path, tmp_path / "masks.json", ks=(2,), precision="float32", progress=False)
    run_saliency(store_path, tmp_path / "saliency", precision="float32", progress=False)
    assert capsys.readouterr().err.count("eigensolver passes in torch.float32 (solver_precision: float32)") == 2
    with pytest.raises(ValueError, match="precision"):
        run_masks(store_path, tmp_path / "x.json", precision="float16", progress=False)
    assert not (tmp_path / "x.json").exists()


def test_run_saliency_batches_give_the_same_maps(tiny_store, tmp_path):
    store_path, _ = tiny_store
    run_saliency(store_path, tmp_path / "one", batch_size=1, progress=False)
    run_saliency(store_path, tmp_path / "all", batch_size=3, progress=False)
    for name in ("a", "b", "c"):
        one, together = read_saliency(tmp_path / "one", name), read_saliency(tmp_path / "all", name)
        assert one.shape == (64, 64) and np.abs(one - together).max() <= 2 / 255


def test_audit_masks_shows_panels_per_k_and_per_eigenvector(tmp_path):
    from unseg.audit import audit_masks

    Image.fromarray(np.full((8, 8, 3), 90, dtype=np.uint8)).save(tmp_path / "a.png")
    square = np.zeros((8, 8), dtype=bool)
    square[2:5, 2:5] = True
    masks = [{"image_id": 1, "segmentation": encode_rle(square), "score": 1.0, "k": k, "eigen_index": index}
             for k, index in [(2, 1), (2, 1), (2, 2), (3, -1)]]
    write_json(tmp_path / "masks.json", masks)
    page = audit_masks([(1, "a", str(tmp_path / "a.png"))], tmp_path / "masks.json", tmp_path / "audit")
    text = page.read_text()
    assert "k=3: 1 masks" in text and "eigenvector 1: 2 masks" in text and "eigenvector 2: 1 masks" in text
    assert len(list((tmp_path / "audit").glob("*.png"))) == 4  # image + k=3 + two eigenvectors


def test_crf_snaps_a_proposal_to_the_colour_edge():
    pytest.importorskip("pydensecrf.densecrf", reason="pydensecrf is not installed (pip install 'pydensecrf2==1.1')")
    from unseg.proposals import refine_mask_with_crf

    image = np.zeros((64, 64, 3), dtype=np.uint8)
    image[:, 32:] = 255  # the object: the right half
    rough = np.zeros((64, 64), dtype=bool)
    rough[:, 26:] = True  # spills 6 columns into the black half
    refined = refine_mask_with_crf(image, rough)
    truth = np.zeros((64, 64), dtype=bool)
    truth[:, 32:] = True
    iou = lambda a, b: (a & b).sum() / (a | b).sum()
    assert iou(rough, truth) < 0.85 and iou(refined, truth) > 0.97
