"""The pseudolabels stage: mask features, k-means labels, painting, registered methods and the runner."""

from pathlib import Path

import numpy as np
import pytest

from unseg.config.registry import register
from unseg.config.schema import validate_config
from unseg.core.io import decode_rle, read_json, read_label_png, write_json, write_label_png
from unseg.features.store import FeatureStore
from unseg.stages.pseudolabels import PseudoLabels, mask_feature, paint_label_map, run_pseudolabels

from helpers import SCHEMA, box, det


def test_mask_feature_is_coverage_weighted_unit_mean():
    features = np.zeros((2, 2, 3), dtype=np.float32)
    features[0, 0] = [1, 0, 0]
    features[0, 1] = [0, 1, 0]
    coverage = np.array([[1.0, 0.5], [0.0, 0.0]])
    expected = np.array([1.0, 0.5, 0.0]) / np.linalg.norm([1.0, 0.5, 0.0])
    np.testing.assert_allclose(mask_feature(features, coverage), expected, atol=1e-6)
    assert not mask_feature(features, np.zeros((2, 2))).any()


def test_paint_label_map_most_confident_on_top():
    low = box((4, 4), 0, 0, 4, 4)
    high = box((4, 4), 0, 0, 2, 2)
    label_map = paint_label_map([high, low], [0.9, 0.1], [2, 1], (4, 4))
    assert label_map[0, 0] == 2 and label_map[3, 3] == 1
    label_map = paint_label_map([high, low], [0.05, 0.1], [2, 1], (4, 4))
    assert (label_map == 1).all()


def test_assign_background_clusters_maps_nearest_to_zero():
    from unseg.stages.pseudolabels import assign_background_clusters

    centroids = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.7, 0.7, 0.0], [0.0, 0.0, 1.0]])
    background = np.array([0.0, 2.0, 0.1])  # nearest: cluster 1, then cluster 2
    assert assign_background_clusters(centroids, background, 1).tolist() == [1, 0, 2, 3]
    assert assign_background_clusters(centroids, background, 2).tolist() == [1, 0, 0, 2]
    assert assign_background_clusters(centroids, background, 0).tolist() == [1, 2, 3, 4]


@register("pseudolabels", "test_one_class_per_image", schema={"label": {"type": "integer", "minimum": 1, "default": 1}})
def one_class_per_image(inputs, *, label):
    """A throw-away method: every proposal of an image gets ``label``, painted over a background of 0."""
    maps, detections = {}, []
    for image_id, name in inputs.names_by_id.items():
        label_map = np.zeros(inputs.store.geometry(name).original_size, dtype=np.uint8)
        for proposal in inputs.proposals:
            if proposal["image_id"] == image_id:
                label_map[decode_rle(proposal["segmentation"])] = label
                detections.append({**proposal, "category_id": label})
        maps[name] = label_map
    return PseudoLabels(maps, detections, {"num_proposals": len(inputs.proposals)})


def test_a_method_registered_outside_the_project_runs_from_a_config_alone(tiny_store, tmp_path, monkeypatch):
    import unseg.core.io

    # The label PNGs go into the folder's own temporary: no per-file temporary, whose leftover scan lists the
    # folder once per image (quadratic: 10k images took 20x as long per image as 1k, benchmarks/bench_scale.py).
    scanned = []
    real_scan = unseg.core.io.stale_temporaries
    monkeypatch.setattr(unseg.core.io, "stale_temporaries", lambda path: scanned.append(Path(path)) or real_scan(path))
    store_path, _ = tiny_store
    store = FeatureStore(store_path)
    names_by_id = {store.image_id(name): name for name in store.names}
    square = box((64, 64), 10, 10, 30, 40)
    write_json(tmp_path / "proposals.json", [det(square, 0.9)])  # image 1 only
    config = {"dataset": {"name": "d", "root": "."},
              "pseudolabels": {"one": {"method": "test_one_class_per_image", "proposals": "p", "features": "f",
                                       "clusters": 2, "label": 2}}}
    validate_config(config, SCHEMA)
    summary = run_pseudolabels(tmp_path / "proposals.json", store_path, tmp_path, names_by_id, tmp_path / "labels",
                               config["pseudolabels"]["one"], progress=False)
    assert summary == {"num_proposals": 1}
    first = read_label_png(tmp_path / "labels" / f"{names_by_id[1]}.png")
    np.testing.assert_array_equal(first, np.where(square, 2, 0))
    assert not read_label_png(tmp_path / "labels" / f"{names_by_id[2]}.png").any()
    assert read_json(tmp_path / "labels" / "pseudolabels.json")[0]["category_id"] == 2
    assert tmp_path / "labels" in scanned and not [path for path in scanned if path.suffix == ".png"]


def test_torch_kmeans_matches_faiss_on_the_same_points():
    from unseg.ops.cluster import kmeans, kmeans_over_seeds, torch_kmeans

    rng = np.random.default_rng(0)
    centres = rng.normal(0, 1, (5, 8)) * 6
    points = (centres[rng.integers(0, 5, 400)] + rng.normal(0, 1, (400, 8))).astype(np.float32)
    faiss_labels, _, faiss_inertia = kmeans(points, 5, seed=0, num_restarts=5)
    torch_runs = [torch_kmeans(points, 5, seed=seed) for seed in range(5)]
    torch_labels, centroids, torch_inertia = min(torch_runs, key=lambda run: run[2])
    assert torch_inertia == pytest.approx(faiss_inertia, rel=1e-3)
    # the same partition up to the cluster numbering
    pairs = set(zip(faiss_labels.tolist(), torch_labels.tolist()))
    assert len(pairs) == 5
    # inertia is what it says: the squared distances to the assigned centroids
    assert torch_inertia == pytest.approx(float(((points - centroids[torch_labels]) ** 2).sum()), rel=1e-4)
    labels, _, inertias = kmeans_over_seeds(points, 5, [3, 4, 5])
    assert set(inertias) == {3, 4, 5} and len(set(zip(labels.tolist(), faiss_labels.tolist()))) == 5


def test_the_support_set_changes_the_clustering_but_never_the_painted_images(tiny_store, tmp_path):
    store_path, _ = tiny_store
    store = FeatureStore(store_path)
    names_by_id = {store.image_id(name): name for name in store.names}  # 1, 2, 3
    for name in store.names:  # an all-salient map: every proposal passes, the background prototype is defined
        write_label_png(tmp_path / f"{name}.png", np.full(store.geometry(name).original_size, 128, np.uint8))
    proposals = [det(box((64, 64), top, left, top + 20, left + 24), 0.9, image_id=image_id)
                 for image_id in (1, 2, 3) for top, left in ((4, 4), (30, 30), (10, 36))]
    write_json(tmp_path / "proposals.json", proposals)
    settings = {"method": "mask_kmeans", "facet": "keys", "clusters": 2, "background_clusters": 0, "min_score": 0.5,
                "seed": 0, "num_restarts": 3, "device": None}

    def run(out, names, support=()):
        summary = run_pseudolabels(tmp_path / "proposals.json", store_path, tmp_path, names, out, settings,
                                   progress=False, support_ids=set(support))
        return summary, sorted(path.stem for path in out.glob("*.png")), read_json(out / "pseudolabels.json")

    painted_only = {1: names_by_id[1], 2: names_by_id[2]}
    alone, alone_names, alone_detections = run(tmp_path / "alone", painted_only)
    helped, helped_names, helped_detections = run(tmp_path / "helped", names_by_id, support=[3])
    assert alone_names == helped_names == sorted(painted_only.values())  # image 3 is never painted
    assert {d["image_id"] for d in helped_detections} == {1, 2}
    assert (alone["num_clustered"], helped["num_clustered"]) == (6, 9)  # but its proposals were clustered
    assert helped["num_support_images"] == 1 and helped["inertia"] != alone["inertia"]
    with pytest.raises(ValueError, match="painted support-set images"):
        run_pseudolabels(tmp_path / "proposals.json", store_path, tmp_path, names_by_id, tmp_path / "bad",
                         {"method": "test_one_class_per_image", "facet": "keys", "clusters": 2, "label": 1},
                         progress=False, support_ids={3})


def test_masked_crop_is_a_square_around_the_mask_filled_outside_it():
    from unseg.stages.pseudolabels import masked_crop

    image = np.arange(10 * 12 * 3, dtype=np.uint8).reshape(10, 12, 3)
    mask = np.zeros((10, 12), dtype=bool)
    mask[2:5, 3:8] = True  # 3 × 5 box: a 5 × 5 square, rows 1..5, columns 3..7
    mask[3, 3] = False
    fill = np.array([1, 2, 3], dtype=np.uint8)
    crop = masked_crop(image, mask, 0.0, fill)
    expected = np.broadcast_to(fill, (5, 5, 3)).copy()
    window = mask[1:6, 3:8]
    expected[window] = image[1:6, 3:8][window]
    np.testing.assert_array_equal(crop, expected)
    corner = np.zeros((10, 12), dtype=bool)
    corner[0:4, 0:2] = True  # 4 tall: a 6-wide square (margin 0.5) reaching beyond the top-left corner
    crop = masked_crop(image, corner, 0.5, fill)
    assert crop.shape == (6, 6, 3)
    np.testing.assert_array_equal(crop[1:5, 2:4], image[0:4, 0:2])
    assert (crop[0] == fill).all() and (crop[:, :2] == fill).all()


def test_masked_crop_cls_clusters_the_candidates_by_their_own_pixels(tmp_path):
    """Red and blue squares at random places: the CLS of each masked crop sees only its square, so two clusters
    split them by colour; the encoder's rows are the backbone's CLS of the crops, computed here by hand."""
    import torch
    from PIL import Image

    from unseg.core.io import encode_rle
    from unseg.features.backbones import create_backbone
    from unseg.features.extract import extract_features
    from unseg.features.preprocess import normalize_batch
    from unseg.stages.pseudolabels import MaskedCropEncoder, masked_crop

    rng = np.random.default_rng(3)
    paths, proposals, colours = {}, [], {}
    (tmp_path / "saliency").mkdir()
    for image_id in (1, 2, 3, 4):
        picture = rng.integers(90, 140, (64, 80, 3)).astype(np.uint8)
        for colour in ((230, 30, 30), (30, 30, 230)):
            top, left = rng.integers(0, 40), rng.integers(0, 56)
            picture[top : top + 20, left : left + 20] = colour
            mask = box((64, 80), top, left, top + 20, left + 20)
            proposals.append({"image_id": image_id, "segmentation": encode_rle(mask), "score": 0.9})
            colours[len(proposals) - 1] = colour[0] > colour[2]
        name = f"img{image_id}"
        paths[name] = str(tmp_path / f"{name}.png")
        Image.fromarray(picture).save(paths[name])
        write_label_png(tmp_path / "saliency" / f"{name}.png", np.full((64, 80), 255, np.uint8))  # all salient
    store_path = tmp_path / "f.zarr"
    extract_features(list(paths.values()), list(paths), [1, 2, 3, 4], store_path, backbone="dino_vits16",
                     weights="random", resolution=64, facets=["tokens"], progress=False, workers=0)
    write_json(tmp_path / "proposals.json", proposals)
    settings = {"method": "mask_kmeans", "facet": "tokens", "clusters": 2, "background_clusters": 0,
                "min_score": 0.5, "candidate_feature": "masked_crop_cls", "crop_resolution": 64}
    names_by_id = {image_id: f"img{image_id}" for image_id in (1, 2, 3, 4)}
    summary = run_pseudolabels(tmp_path / "proposals.json", store_path, tmp_path / "saliency", names_by_id,
                               tmp_path / "out", settings, progress=False, image_paths=paths)
    assert summary["candidate_feature"] == "masked_crop_cls" and summary["num_clustered"] == 8
    labels = [d["category_id"] for d in read_json(tmp_path / "out" / "pseudolabels.json")]
    red = {label for position, label in enumerate(labels) if colours[position]}
    blue = {label for position, label in enumerate(labels) if not colours[position]}
    assert len(red) == len(blue) == 1 and red != blue

    encoder = MaskedCropEncoder(FeatureStore(store_path), 64, 0.1, 4, torch.device("cpu"))
    image = np.asarray(Image.open(paths["img1"]).convert("RGB"))
    crop = masked_crop(image, decode_rle(proposals[0]["segmentation"]), 0.1, encoder.fill)
    model, spec = create_backbone("dino_vits16", "random")
    resized = np.array(Image.fromarray(crop).resize((64, 64), Image.BICUBIC))
    pixels = normalize_batch(torch.from_numpy(resized).permute(2, 0, 1)[None], spec.mean, spec.std)
    with torch.no_grad():
        expected = torch.nn.functional.normalize(model.forward_features(pixels)[:, 0], dim=1)[0].numpy()
    np.testing.assert_allclose(encoder.encode([crop])[0], expected, atol=1e-5)
    with pytest.raises(ValueError, match="reads the images"):
        run_pseudolabels(tmp_path / "proposals.json", store_path, tmp_path / "saliency", names_by_id,
                         tmp_path / "none", settings, progress=False)


def test_unconfident_proposals_are_background_under_the_confident_ones(tiny_store, tmp_path):
    store_path, _ = tiny_store
    store = FeatureStore(store_path)
    names_by_id = {store.image_id(name): name for name in store.names}
    for name in store.names:
        write_label_png(tmp_path / f"{name}.png", np.full(store.geometry(name).original_size, 128, np.uint8))
    confident = [det(box((64, 64), top, left, top + 20, left + 24), 0.9, image_id=image_id)
                 for image_id in (1, 2, 3) for top, left in ((4, 4), (30, 30))]
    doubtful = det(box((64, 64), 0, 0, 40, 40), 0.3, image_id=1)  # overlaps image 1's first confident mask
    settings = {"method": "mask_kmeans", "facet": "keys", "clusters": 2, "background_clusters": 0, "min_score": 0.5}
    for folder, proposals in (("with", confident + [doubtful]), ("without", confident)):
        write_json(tmp_path / f"{folder}.json", proposals)
        run_pseudolabels(tmp_path / f"{folder}.json", store_path, tmp_path, names_by_id, tmp_path / folder, settings,
                         progress=False)
    labels = read_label_png(tmp_path / "with" / f"{names_by_id[1]}.png")
    only_doubtful = box((64, 64), 0, 0, 40, 40) & ~box((64, 64), 4, 4, 24, 28) & ~box((64, 64), 30, 30, 50, 54)
    assert (labels[only_doubtful] == 0).all()
    assert (labels[4:24, 4:28] > 0).all() and (labels[4:24, 4:28] != 255).all()  # the confident mask on top
    for name in store.names:  # the doubtful proposal is neither clustered nor painted
        assert np.array_equal(read_label_png(tmp_path / "with" / f"{name}.png"),
                              read_label_png(tmp_path / "without" / f"{name}.png"))
