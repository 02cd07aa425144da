"""The pseudolabels stage: mask features, k-means labels, painting, registered methods and the runner."""

import numpy as np
from helpers import box

from unseg.pseudolabels import mask_feature, paint_label_map


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
