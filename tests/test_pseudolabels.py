"""The pseudolabels stage: mask features, k-means labels, painting, registered methods and the runner."""

import numpy as np

from unseg.config import validate_config
from unseg.io import decode_rle, read_json, read_label_png, write_json
from unseg.pseudolabels import PseudoLabels, mask_feature, paint_label_map, run_pseudolabels
from unseg.registry import register
from unseg.store import FeatureStore

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
    from unseg.pseudolabels import assign_background_clusters

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


def test_a_method_registered_outside_the_project_runs_from_a_config_alone(tiny_store, tmp_path):
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
