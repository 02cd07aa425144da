import numpy as np
import torch

from unseg.io import encode_rle
from unseg.proposals import filter_proposals, mask_nms
from unseg.pseudolabels import mask_feature, paint_label_map
from unseg.train import LinearHead, instances_from_probabilities


def box(shape, top, left, bottom, right):
    mask = np.zeros(shape, dtype=bool)
    mask[top:bottom, left:right] = True
    return mask


def det(mask, score, **extra):
    return {"image_id": 1, "category_id": 1, "segmentation": encode_rle(mask), "score": score, **extra}


def test_mask_nms_drops_overlapping_lower_score():
    a = box((10, 10), 0, 0, 5, 5)  # 25 px
    b = box((10, 10), 0, 0, 5, 4)  # 20 px, IoU with a = 20/25 = 0.8
    c = box((10, 10), 5, 5, 10, 10)  # disjoint
    kept = mask_nms([det(b, 0.9), det(a, 0.5), det(c, 0.1)], iou_threshold=0.5)
    assert [d["score"] for d in kept] == [0.9, 0.1]
    kept = mask_nms([det(b, 0.9), det(a, 0.5)], iou_threshold=0.85)  # 0.8 ≤ 0.85: both stay
    assert len(kept) == 2


def test_filter_proposals_keeps_salient_and_rescores():
    saliency = np.zeros((10, 10), dtype=np.float32)
    saliency[:, :5] = 1.0
    inside = box((10, 10), 0, 0, 4, 4)  # fully salient
    half = box((10, 10), 0, 3, 2, 7)  # 4 of 8 px salient: exactly 0.5 → kept at threshold 0.5
    outside = box((10, 10), 6, 6, 9, 9)  # not salient
    kept = filter_proposals([det(inside, 0.8), det(half, 0.6), det(outside, 0.9)], saliency, 0.5, nms_iou=1.0)
    assert [d["salient_fraction"] for d in kept] == [1.0, 0.5]
    assert [d["score"] for d in kept] == [0.8, 0.3]


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


def test_instances_from_probabilities_components_and_scores():
    probabilities = np.zeros((3, 6, 6), dtype=np.float32)
    probabilities[0] = 1.0
    for top, left, value in [(0, 0, 0.9), (4, 4, 0.7)]:
        probabilities[:, top : top + 2, left : left + 2] = 0
        probabilities[1, top : top + 2, left : left + 2] = value
        probabilities[0, top : top + 2, left : left + 2] = 1 - value
    instances = instances_from_probabilities(probabilities, min_area=2)
    assert [(m.sum(), c, round(s, 3)) for m, c, s in instances] == [(4, 1, 0.9), (4, 1, 0.7)]


def test_linear_head_standardises_then_classifies():
    head = LinearHead(embed_dim=2, num_classes=2)
    head.mean.copy_(torch.tensor([1.0, 2.0]))
    head.std.copy_(torch.tensor([2.0, 4.0]))
    with torch.no_grad():
        head.classifier.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]])[:, :, None, None])
        head.classifier.bias.zero_()
    tokens = torch.tensor([3.0, 6.0]).view(1, 2, 1, 1)
    np.testing.assert_allclose(head(tokens).detach().flatten().numpy(), [1.0, 1.0])


def test_assign_background_clusters_maps_nearest_to_zero():
    from unseg.pseudolabels import assign_background_clusters

    centroids = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.7, 0.7, 0.0], [0.0, 0.0, 1.0]])
    background = np.array([0.0, 2.0, 0.1])  # nearest: cluster 1, then cluster 2
    assert assign_background_clusters(centroids, background, 1).tolist() == [1, 0, 2, 3]
    assert assign_background_clusters(centroids, background, 2).tolist() == [1, 0, 0, 2]
    assert assign_background_clusters(centroids, background, 0).tolist() == [1, 2, 3, 4]
