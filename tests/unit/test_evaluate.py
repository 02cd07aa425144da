"""Tests for unseg.stages.evaluate: every expected number below is computed by hand in the comments."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest

from unseg.core.io import encode_rle, write_label_png
from unseg.evaluation.instance_metrics import (
    coco_mask_ap,
    recall_by_instance_count,
    single_and_multi_ap,
)
from unseg.evaluation.metrics import (
    confusion_matrix,
    evaluate_semantic,
    evaluate_semantic_arrays,
    hungarian_match,
    majority_match,
    object_segmentation_scores,
    segmentation_scores,
)
from unseg.reports.markdown import write_report

# ----------------------------------------------------------------------------------------------------------------
# confusion matrix and matching
# ----------------------------------------------------------------------------------------------------------------


def test_confusion_matrix_matches_python_loop():
    rng = np.random.default_rng(0)
    prediction = rng.integers(0, 5, size=(17, 23))
    target = rng.integers(0, 4, size=(17, 23)).astype(np.uint8)
    target[rng.random((17, 23)) < 0.2] = 255
    expected = np.zeros((5, 4), dtype=np.int64)
    for p, t in zip(prediction.ravel().tolist(), target.ravel().tolist()):
        if t != 255:
            expected[p, t] += 1
    result = confusion_matrix(prediction, target, num_predicted=5, num_classes=4)
    assert result.dtype == np.int64
    assert result.shape == (5, 4)
    np.testing.assert_array_equal(result, expected)
    assert result.sum() == int((target != 255).sum())


def test_confusion_matrix_rejects_out_of_range_and_shape_mismatch():
    with pytest.raises(ValueError, match="prediction values"):
        confusion_matrix(np.array([0, 3]), np.array([0, 1]), num_predicted=3, num_classes=2)
    with pytest.raises(ValueError, match="target values"):
        confusion_matrix(np.array([0, 1]), np.array([0, 2]), num_predicted=3, num_classes=2)
    with pytest.raises(ValueError, match="shape"):
        confusion_matrix(np.zeros((2, 2), int), np.zeros((2, 3), int), num_predicted=1, num_classes=1)


def test_hungarian_and_majority_match():
    confusion = np.array([[5, 1], [3, 2], [0, 0]])
    # One-to-one: 0->0 and 1->1 gives 5+2=7 (the alternative 0->1, 1->0 gives 1+3=4); cluster 2 is left over.
    np.testing.assert_array_equal(hungarian_match(confusion), [0, 1, -1])
    # Many-to-one: both clusters are mostly class 0; the empty cluster maps to nothing.
    np.testing.assert_array_equal(majority_match(confusion), [0, 0, -1])


# ----------------------------------------------------------------------------------------------------------------
# segmentation scores
# ----------------------------------------------------------------------------------------------------------------


def _scores(prediction, target, num_predicted, num_classes, mapping=None, class_names=None):
    confusion = confusion_matrix(np.asarray(prediction), np.asarray(target), num_predicted, num_classes)
    mapping = hungarian_match(confusion) if mapping is None else np.asarray(mapping)
    return segmentation_scores(confusion, mapping, class_names)


def test_perfect_prediction_scores_100():
    target = np.array([[0, 0, 1, 1], [2, 2, 1, 1], [2, 2, 0, 0], [255, 255, 0, 0]])
    prediction = np.where(target == 255, 0, target)
    scores = _scores(prediction, target, 3, 3)
    assert scores["miou"] == 100.0
    assert scores["pixel_accuracy"] == 100.0
    assert scores["per_class_iou"] == {"class_0": 100.0, "class_1": 100.0, "class_2": 100.0}


def test_permuted_labels_100_after_hungarian_and_exact_value_with_identity():
    # class 0: 8 pixels, class 1: 4 pixels, class 2: 4 pixels; the prediction swaps the ids 0 and 1.
    target = np.array([[0, 0, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1], [2, 2, 2, 2]])
    permutation = np.array([1, 0, 2])
    prediction = permutation[target]
    scores = _scores(prediction, target, 3, 3)
    assert scores["miou"] == 100.0 and scores["pixel_accuracy"] == 100.0
    # Identity mapping: class 0 has TP 0 -> IoU 0; class 1 TP 0 -> IoU 0; class 2 IoU 100.
    # mIoU = 100/3 = 33.33; accuracy = 4 correct (class 2) / 16 = 25.
    identity = _scores(prediction, target, 3, 3, mapping=[0, 1, 2])
    assert identity["miou"] == pytest.approx(100.0 / 3.0)
    assert identity["pixel_accuracy"] == pytest.approx(25.0)
    assert identity["per_class_iou"]["class_0"] == 0.0


def test_hand_computed_two_class_case():
    target = np.array([[0, 0, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1], [1, 1, 1, 1]])
    prediction = np.array([[0, 0, 0, 1], [0, 0, 0, 0], [0, 0, 1, 1], [1, 1, 1, 1]])
    # confusion (rows predicted, cols true): [[7, 2], [1, 6]]
    # class 0: TP 7, FP 2 (true-1 pixels predicted 0), FN 1 -> IoU 7/10 = 70.0
    # class 1: TP 6, FP 1, FN 2 -> IoU 6/9 = 66.67
    # mIoU = (70 + 66.67) / 2 = 68.33; accuracy = 13/16 = 81.25
    scores = _scores(prediction, target, 2, 2, class_names=["sky", "ground"])
    assert scores["confusion"] == [[7, 2], [1, 6]]
    assert scores["per_class_iou"]["sky"] == pytest.approx(70.0)
    assert scores["per_class_iou"]["ground"] == pytest.approx(600.0 / 9.0)
    assert scores["miou"] == pytest.approx((70.0 + 600.0 / 9.0) / 2.0)
    assert scores["pixel_accuracy"] == pytest.approx(81.25)


def test_class_never_predicted_has_iou_zero():
    # class 0: 3 pixels, class 1: 2 pixels, class 2: 1 pixel, predicted as cluster 0 (only 2 clusters).
    target = np.array([[0, 0, 0, 1, 1, 2]])
    prediction = np.array([[0, 0, 0, 1, 1, 0]])
    # Hungarian: cluster 0 -> class 0 (3 > 1), cluster 1 -> class 1; class 2 receives no cluster.
    # class 0: TP 3, FP 1 -> 75; class 1: 100; class 2: TP 0, FN 1 -> 0. mIoU = 175/3 = 58.33; accuracy 5/6.
    scores = _scores(prediction, target, 2, 3)
    assert scores["per_class_iou"]["class_2"] == 0.0
    assert scores["per_class_iou"]["class_0"] == pytest.approx(75.0)
    assert scores["miou"] == pytest.approx(175.0 / 3.0)
    assert scores["pixel_accuracy"] == pytest.approx(500.0 / 6.0)


def test_class_absent_from_gt_and_prediction_is_excluded():
    target = np.array([[0, 0, 1, 1]])
    prediction = np.array([[0, 0, 1, 0]])
    # class 0: TP 2, FP 1 -> 66.67; class 1: TP 1, FN 1 -> 50; class 2 absent -> None, excluded.
    scores = _scores(prediction, target, 3, 3, mapping=[0, 1, 2])
    assert scores["per_class_iou"]["class_2"] is None
    assert scores["miou"] == pytest.approx((200.0 / 3.0 + 50.0) / 2.0)


def test_more_clusters_than_classes_unmatched_pixels_are_false_negatives():
    target = np.array([[0, 0, 0, 0], [1, 1, 1, 1]])
    prediction = np.array([[0, 0, 0, 2], [1, 1, 1, 2]])
    # confusion: cluster 0 [3, 0], cluster 1 [0, 3], cluster 2 [1, 1] -> Hungarian 0->0, 1->1, 2 unmatched.
    # class 0: TP 3, FP 0, FN 1 -> 75; class 1: TP 3, FP 0, FN 1 -> 75; mIoU 75; accuracy 6/8 = 75.
    # (Dropping the unmatched pixels would give 100; counting them as FP of a class would change FP.)
    confusion = confusion_matrix(prediction, target, 3, 2)
    mapping = hungarian_match(confusion)
    np.testing.assert_array_equal(mapping, [0, 1, -1])
    scores = segmentation_scores(confusion, mapping)
    assert scores["per_class_iou"] == {"class_0": pytest.approx(75.0), "class_1": pytest.approx(75.0)}
    assert scores["miou"] == pytest.approx(75.0)
    assert scores["pixel_accuracy"] == pytest.approx(75.0)
    assert scores["confusion"] == [[3, 0], [0, 3]]
    assert scores["unmatched_pixels"] == [1, 1]


def test_segmentation_scores_rejects_bad_mapping_and_empty_confusion():
    with pytest.raises(ValueError):
        segmentation_scores(np.ones((2, 2)), [0, 2])
    with pytest.raises(ValueError):
        segmentation_scores(np.ones((2, 2)), [0])
    with pytest.raises(ValueError, match="no labelled pixel"):
        segmentation_scores(np.zeros((2, 2)), [0, 1])


# ----------------------------------------------------------------------------------------------------------------
# evaluate_semantic on PNG files
# ----------------------------------------------------------------------------------------------------------------


def _write_pair(tmp_path, name, prediction, target):
    pred_path, gt_path = tmp_path / f"pred_{name}.png", tmp_path / f"gt_{name}.png"
    write_label_png(pred_path, np.asarray(prediction, dtype=np.uint8))
    write_label_png(gt_path, np.asarray(target, dtype=np.uint8))
    return pred_path, gt_path


def test_evaluate_semantic_ignore_in_gt_and_abstention_in_prediction(tmp_path):
    target = [[0, 0, 1, 1], [0, 255, 1, 1]]
    prediction = [[0, 0, 1, 255], [1, 1, 1, 1]]
    # (1,1) is ignored in the GT (its prediction is irrelevant); (0,3) is a class-1 pixel the predictor left at 255.
    # confusion: cluster 0 [2, 0]; cluster 1 [1, 3]; no-prediction [0, 1]. Hungarian: 0->0, 1->1.
    # class 0: TP 2, FP 0, FN 1 -> 66.67; class 1: TP 3, FP 1, FN 1 (abstained) -> 60.
    # mIoU 63.33; accuracy 5 / 7 labelled = 71.43. (If 255 predictions were ignored: class 1 = 75, acc = 5/6.)
    pred_path, gt_path = _write_pair(tmp_path, "a", prediction, target)
    result = evaluate_semantic([pred_path], [gt_path], num_predicted=2, num_classes=2, class_names=["bg", "cat"])
    assert result["per_class_iou"] == {"bg": pytest.approx(200.0 / 3.0), "cat": pytest.approx(60.0)}
    assert result["miou"] == pytest.approx((200.0 / 3.0 + 60.0) / 2.0)
    assert result["pixel_accuracy"] == pytest.approx(500.0 / 7.0)
    assert result["mapping"] == [0, 1]
    assert result["matching"] == "hungarian"
    assert result["num_images"] == 1
    assert result["confusion"] == [[2, 0], [1, 3]]


def test_evaluate_semantic_accumulates_over_images_and_majority(tmp_path):
    # Image 1: clusters swapped relative to the classes; image 2 the same convention -> Hungarian gives 100.
    first = _write_pair(tmp_path, "1", [[1, 1, 0, 0]], [[0, 0, 1, 1]])
    second = _write_pair(tmp_path, "2", [[1, 0, 2, 2]], [[0, 1, 1, 1]])
    # Accumulated confusion: cluster 0 [0, 3]; cluster 1 [3, 0]; cluster 2 [0, 2].
    hungarian = evaluate_semantic([first[0], second[0]], [first[1], second[1]], 3, 2)
    assert hungarian["mapping"] == [1, 0, -1]
    # class 0: TP 3 -> 100; class 1: TP 3, FN 2 (cluster 2 unmatched) -> 60; accuracy 6/8 = 75.
    assert hungarian["miou"] == pytest.approx(80.0)
    assert hungarian["pixel_accuracy"] == pytest.approx(75.0)
    majority = evaluate_semantic([first[0], second[0]], [first[1], second[1]], 3, 2, matching="majority")
    assert majority["mapping"] == [1, 0, 1]
    assert majority["miou"] == 100.0 and majority["num_images"] == 2


def test_evaluate_semantic_errors_name_files(tmp_path):
    pred_path, _ = _write_pair(tmp_path, "a", [[0, 1]], [[0, 1]])
    _, gt_path = _write_pair(tmp_path, "b", [[0, 1, 1]], [[0, 1, 1]])
    with pytest.raises(ValueError) as error:
        evaluate_semantic([pred_path], [gt_path], 2, 2)
    assert str(pred_path) in str(error.value) and str(gt_path) in str(error.value)
    bad_pred, bad_gt = _write_pair(tmp_path, "c", [[0, 7]], [[0, 1]])
    with pytest.raises(ValueError, match="pred_c.png"):
        evaluate_semantic([bad_pred], [bad_gt], 2, 2)
    bad_pred, bad_gt = _write_pair(tmp_path, "d", [[0, 1]], [[0, 9]])
    with pytest.raises(ValueError, match="gt_d.png"):
        evaluate_semantic([bad_pred], [bad_gt], 2, 2)
    with pytest.raises(ValueError, match="matching"):
        evaluate_semantic([bad_pred], [bad_gt], 2, 2, matching="greedy")


# ----------------------------------------------------------------------------------------------------------------
# COCO mask AP
# ----------------------------------------------------------------------------------------------------------------

SIZE = 20


def _box(top, left, height, width):
    mask = np.zeros((SIZE, SIZE), dtype=bool)
    mask[top : top + height, left : left + width] = True
    return mask


MASK_A = _box(0, 0, 10, 10)  # top-left quadrant
MASK_B = _box(10, 10, 10, 10)  # bottom-right quadrant
MASK_C = _box(0, 10, 10, 10)  # top-right quadrant (disjoint from A and B)


def _gt(masks_per_image, categories_per_image=None):
    images, annotations = [], []
    for image_index, masks in enumerate(masks_per_image, start=1):
        images.append({"id": image_index, "height": SIZE, "width": SIZE, "file_name": f"{image_index}.jpg"})
        for mask_index, mask in enumerate(masks):
            category = categories_per_image[image_index - 1][mask_index] if categories_per_image else 1
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_index,
                    "category_id": category,
                    "segmentation": encode_rle(mask),
                    "iscrowd": 0,
                }
            )
    categories = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]
    return {"images": images, "annotations": annotations, "categories": categories}


def _det(image_id, mask, score, category_id=99):
    return {"image_id": image_id, "segmentation": encode_rle(mask), "score": score, "category_id": category_id}


def _ap_101(is_true_positive_ranked, num_gt):
    """Independent COCO-style AP: precision made monotone, sampled at 101 recall points."""
    flags = np.asarray(is_true_positive_ranked, dtype=float)
    tp = np.cumsum(flags)
    fp = np.cumsum(1 - flags)
    recall = tp / num_gt
    precision = tp / (tp + fp)
    total = 0.0
    for r in np.linspace(0, 1, 101):
        candidates = precision[recall >= r - 1e-12]
        total += candidates.max() if candidates.size else 0.0
    return 100.0 * total / 101


def test_coco_ap_exact_copies_score_100_class_agnostic():
    gt = _gt([[MASK_A, MASK_B]], categories_per_image=[[1, 2]])
    gt_before = copy.deepcopy(gt)
    detections = [_det(1, MASK_A, 0.9), _det(1, MASK_B, 0.8)]  # category 99: unknown, ignored class-agnostically
    detections_before = copy.deepcopy(detections)
    result = coco_mask_ap(gt, detections)
    assert result["AP"] == pytest.approx(100.0)
    assert result["AP50"] == pytest.approx(100.0)
    assert result["AP75"] == pytest.approx(100.0)
    assert result["AR100"] == pytest.approx(100.0)
    assert result["AR10"] == pytest.approx(100.0)
    assert result["AR1"] == pytest.approx(50.0)  # one detection per image recalls 1 of 2 instances
    assert result["num_detections"] == 2
    assert gt == gt_before and detections == detections_before  # inputs untouched


def test_coco_ap_wrong_detection_ranked_first():
    # One GT (A). Ranked detections: wrong (C, IoU 0, score 0.9), then exact (A, score 0.8).
    # Rank 1: FP -> recall 0, precision 0. Rank 2: TP -> recall 1, precision 1/2.
    # The interpolated precision max{p(r') : r' >= r} is 0.5 at all 101 recall points -> AP = 50 at every IoU
    # threshold, so AP = AP50 = AP75 = 50. AR@1 = 0 (only the wrong one kept), AR@10 = AR@100 = 100.
    gt = _gt([[MASK_A]])
    detections = [_det(1, MASK_C, 0.9), _det(1, MASK_A, 0.8)]
    result = coco_mask_ap(gt, detections)
    assert result["AP"] == pytest.approx(50.0)
    assert result["AP50"] == pytest.approx(50.0)
    assert result["AP75"] == pytest.approx(50.0)
    assert result["AP50"] == pytest.approx(_ap_101([0, 1], num_gt=1))
    assert result["AR1"] == pytest.approx(0.0)
    assert result["AR10"] == pytest.approx(100.0)
    assert result["AR100"] == pytest.approx(100.0)


def test_coco_ap_half_recall_uses_101_point_interpolation():
    # Two GTs (A, B). Ranked: exact A (TP, precision 1 at recall 0.5), wrong C (FP). B is never found.
    # Interpolated precision is 1 for the 51 recall points 0.00..0.50 and 0 for 0.51..1.00 -> AP = 51/101.
    gt = _gt([[MASK_A, MASK_B]])
    result = coco_mask_ap(gt, [_det(1, MASK_A, 0.9), _det(1, MASK_C, 0.8)])
    assert result["AP"] == pytest.approx(100.0 * 51 / 101)
    assert result["AP50"] == pytest.approx(_ap_101([1, 0], num_gt=2))
    assert result["AR100"] == pytest.approx(50.0)


def test_coco_ap_empty_detections_are_zeros():
    result = coco_mask_ap(_gt([[MASK_A]]), [])
    assert result == {"AP": 0.0, "AP50": 0.0, "AP75": 0.0, "AR1": 0.0, "AR10": 0.0, "AR100": 0.0, "APs": 0.0,
                      "ARs": 0.0, "APm": 0.0, "ARm": 0.0, "APl": 0.0, "ARl": 0.0, "num_detections": 0}


def test_coco_ap_by_object_size():
    # A 200 x 200 image: a small object (10 x 10 = 100 px < 32²), a medium one (40 x 40 = 1600 px) and a large one
    # (120 x 120 = 14400 px > 96²). Found exactly: the small and the large one; the medium one is missed, and a
    # wrong medium detection (disjoint, 1600 px) ranks first among the medium ones.
    def box(top, left, side):
        mask = np.zeros((200, 200), dtype=bool)
        mask[top : top + side, left : left + side] = True
        return mask

    small, medium, large, wrong = box(0, 0, 10), box(0, 150, 40), box(60, 0, 120), box(150, 150, 40)
    gt = {"images": [{"id": 1, "height": 200, "width": 200, "file_name": "1.jpg"}],
          "annotations": [{"id": i + 1, "image_id": 1, "category_id": 1, "segmentation": encode_rle(m), "iscrowd": 0}
                          for i, m in enumerate((small, medium, large))],
          "categories": [{"id": 1, "name": "a"}]}
    result = coco_mask_ap(gt, [_det(1, small, 0.9), _det(1, wrong, 0.8), _det(1, large, 0.7)])
    assert result["APs"] == pytest.approx(100.0) and result["ARs"] == pytest.approx(100.0)
    assert result["APl"] == pytest.approx(100.0) and result["ARl"] == pytest.approx(100.0)
    assert result["APm"] == pytest.approx(0.0) and result["ARm"] == pytest.approx(0.0)
    # over all sizes: ranked TP, FP, TP of 3 -> the independent 101-point AP
    assert result["AP50"] == pytest.approx(_ap_101([1, 0, 1], num_gt=3))


def test_coco_ap_prints_nothing(capsys):
    coco_mask_ap(_gt([[MASK_A]]), [_det(1, MASK_A, 0.5)])
    assert capsys.readouterr().out == ""


def test_coco_ap_rejects_detection_on_unknown_image():
    with pytest.raises(ValueError, match="absent"):
        coco_mask_ap(_gt([[MASK_A]]), [_det(5, MASK_A, 0.5)])


def test_single_and_multi_ap():
    # Image 1: GT A, B, both found exactly (0.9, 0.8). Image 2: GT A; exact A (0.6) and a wrong C (0.3).
    # Multi: ranked TP, TP, TP, FP -> recall reaches 1 at precision 1 -> AP 100.
    # Single keeps A (0.9) on image 1 and A (0.6) on image 2: 2 TPs of 3 GTs at precision 1 -> the 67 recall
    # points 0.00..0.66 have precision 1 -> AP = 67/101. (Keeping the least confident one would take C: FP.)
    gt = _gt([[MASK_A, MASK_B], [MASK_A]])
    detections = [_det(1, MASK_B, 0.8), _det(1, MASK_A, 0.9), _det(2, MASK_C, 0.3), _det(2, MASK_A, 0.6)]
    result = single_and_multi_ap(gt, detections)
    assert result["multi"]["AP"] == pytest.approx(100.0)
    assert result["single"]["AP"] == pytest.approx(100.0 * 67 / 101)
    assert result["single"]["AP50"] == pytest.approx(_ap_101([1, 1], num_gt=3))
    assert result["single"]["num_detections"] == 2
    assert result["multi"]["num_detections"] == 4


# ----------------------------------------------------------------------------------------------------------------
# recall by instance count
# ----------------------------------------------------------------------------------------------------------------


def test_recall_by_instance_count():
    six_small = [_box(0, 3 * index, 2, 2) for index in range(6)]
    partial_a = _box(0, 0, 7, 7)  # 49 pixels inside A (100): IoU 0.49 < 0.5, not a hit
    gt = _gt(
        [[MASK_A], [MASK_C, MASK_B], six_small],
        categories_per_image=[[1], [2, 2], [1] * 6],
    )
    detections = [
        _det(1, MASK_A, 0.9),  # image 1: its only instance (category 1, n=1) is recalled
        _det(1, MASK_C, 0.8),  # image 1: would recall image 2's C if images were mixed up
        _det(2, MASK_B, 0.7),  # image 2: one of two category-2 instances (n=2) recalled
        _det(3, partial_a, 0.6),  # image 3: misses all six instances (n=6 -> "6+")
    ]
    result = recall_by_instance_count(gt, detections)
    assert result["recall"] == {"1": 100.0, "2": 50.0, "3": None, "4": None, "5": None, "6+": 0.0}
    assert result["num_instances"] == {"1": 1, "2": 2, "3": 0, "4": 0, "5": 0, "6+": 6}
    # Lower threshold 0.08: on image 3 the partial detection (7x7 box) contains small instances 0 and 1 whole
    # (IoU 4/49 = 0.082 each) and touches instance 2 (IoU 2/51 = 0.039) -> 2 of 6 recalled.
    assert recall_by_instance_count(gt, detections, iou_threshold=0.08)["recall"]["6+"] == pytest.approx(200 / 6)


def test_recall_by_instance_count_threshold_boundary():
    partial_a = _box(0, 0, 5, 10)  # 50 of A's 100 pixels: IoU exactly 0.5 -> recalled at threshold 0.5
    gt = _gt([[MASK_A]])
    assert recall_by_instance_count(gt, [_det(1, partial_a, 1.0)])["recall"]["1"] == 100.0
    assert recall_by_instance_count(gt, [_det(1, partial_a, 1.0)], iou_threshold=0.51)["recall"]["1"] == 0.0


# ----------------------------------------------------------------------------------------------------------------
# object segmentation
# ----------------------------------------------------------------------------------------------------------------


def test_object_segmentation_hand_case():
    gt = np.zeros((4, 4), dtype=bool)
    gt[:2, :2] = True  # 4 pixels
    prediction = np.zeros((4, 4), dtype=bool)
    prediction[0, :] = True  # 4 pixels, 2 of them in gt
    # Image 1: intersection 2, union 6 -> IoU 1/3; wrong pixels: 2 FN + 2 FP -> accuracy 12/16 = 0.75.
    # Image 2: both empty -> IoU 1 by convention, accuracy 1.
    # mean IoU = (1/3 + 1)/2 = 66.67%; dataset IoU = (2+0)/(6+0) = 33.33%; accuracy = (0.75 + 1)/2 = 87.5%.
    empty = np.zeros((4, 4), dtype=bool)
    result = object_segmentation_scores([prediction, empty], [gt, empty])
    assert result["mean_iou"] == pytest.approx(200.0 / 3.0)
    assert result["dataset_iou"] == pytest.approx(100.0 / 3.0)
    assert result["pixel_accuracy"] == pytest.approx(87.5)
    assert result["num_images"] == 2
    assert "max_fbeta" not in result


def test_max_fbeta_perfect_soft_map_is_100_percent():
    gt = np.zeros((8, 8), dtype=bool)
    gt[2:6, 1:7] = True
    result = object_segmentation_scores([gt], [gt], soft=[gt.astype(np.float32)])
    assert result["max_fbeta"] == pytest.approx(100.0)  # percent


def test_max_fbeta_hand_case():
    gt = np.zeros((4, 4), dtype=bool)
    gt[0, :] = True  # 4 foreground pixels
    soft = np.zeros((4, 4))
    soft[0, :3] = 0.9
    soft[0, 3] = 0.2
    soft[2, 2] = 0.5  # one background pixel
    # beta^2 = 0.3, F = 1.3 P R / (0.3 P + R):
    #  t <= 0.2:       P = 4/5, R = 1    -> F = 1.04 / 1.24 = 0.8387
    #  0.2 < t <= 0.5: P = 3/4, R = 3/4  -> F = 0.75
    #  0.5 < t <= 0.9: P = 1,   R = 3/4  -> F = 0.975 / 1.05 = 0.92857   <- maximum
    #  t > 0.9:        nothing predicted -> F = 0
    result = object_segmentation_scores([soft > 0.5], [gt], soft=[soft])
    assert result["max_fbeta"] == pytest.approx(100.0 * 0.975 / 1.05)
    assert 0.5 < result["max_fbeta_threshold"] <= 0.9
    with pytest.raises(ValueError):
        object_segmentation_scores([gt], [gt], soft=[soft * 2])


# ----------------------------------------------------------------------------------------------------------------
# report
# ----------------------------------------------------------------------------------------------------------------


def test_write_report_contains_headline_numbers(tmp_path):
    semantic = segmentation_scores(np.array([[7, 2], [1, 6], [0, 3]]), [0, 1, -1], ["sky", "ground"])
    # class sky: 7/(7+2+1) = 70.0; ground: 6/(6+1+5) = 50.0; mIoU 60.0; accuracy 13/19 = 68.4
    metrics = {**semantic, "mapping": [0, 1, -1], "matching": "hungarian", "num_images": 3}
    metrics.update(coco_mask_ap(_gt([[MASK_A, MASK_B]]), [_det(1, MASK_A, 0.9), _det(1, MASK_C, 0.8)]))
    metrics["recall_by_instance_count"] = {
        "recall": {"1": 100.0, "2": 50.0, "6+": None},
        "num_instances": {"1": 1, "2": 2, "6+": 0},
        "iou_threshold": 0.5,
    }
    metrics["timing"] = {"seconds": 12.345}
    path = tmp_path / "report" / "metrics.md"
    write_report(metrics, path, title="VOC semantic")
    text = path.read_text()
    assert text.startswith("# VOC semantic")
    assert "| mIoU | 60.0 |" in text
    assert "| Pixel accuracy | 68.4 |" in text
    assert "| AP | 50.5 |" in text
    assert "| sky | 70.0 |" in text and "| ground | 50.0 |" in text
    assert "| 0 | sky |" in text and "| 2 | unmatched |" in text
    assert "| 2 | 50.0 | 2 |" in text and "| 6+ | n/a | 0 |" in text
    assert "timing" in text and "12.3" in text
    assert not [p for p in path.parent.iterdir() if p.name != "metrics.md"]  # no temporary left behind
    assert not math.isnan(metrics["miou"])


def test_evaluate_semantic_arrays_per_image_miou_under_the_dataset_mapping():
    # Image a: prediction == truth with clusters swapped (cluster 1 = class 0, cluster 0 = class 1).
    # Image b: cluster 1 on every pixel, truth [0, 0, 1, 1]. Dataset confusion (rows clusters, columns classes):
    # cluster 0: [0, 2]; cluster 1: [2 + 2, 2] → Hungarian 0→1, 1→0.
    # Image a under that mapping: perfect → 100. Image b: everything painted class 0; IoU_0 = 2/4, IoU_1 = 0/2 → 25.
    pairs = [
        ("a", np.array([1, 1, 0, 0]), np.array([0, 0, 1, 1])),
        ("b", np.array([1, 1, 1, 1]), np.array([0, 0, 1, 1])),
    ]
    result = evaluate_semantic_arrays(pairs, num_predicted=2, num_classes=2)
    assert result["mapping"] == [1, 0]
    assert result["per_image_miou"] == pytest.approx({"a": 100.0, "b": 25.0})
    # dataset: IoU_0 = 4 / (4 + 2) , IoU_1 = 2 / (2 + 2)
    assert result["miou"] == pytest.approx(100 * (4 / 6 + 2 / 4) / 2)


def test_evaluate_semantic_arrays_names_the_image_in_errors():
    with pytest.raises(ValueError, match="img7"):
        evaluate_semantic_arrays([("img7", np.zeros((2, 2), int), np.zeros((2, 3), int))], 1, 1)
    with pytest.raises(ValueError, match="no image"):
        evaluate_semantic_arrays([], 1, 1)


def test_write_report_collects_scalars_in_one_details_table(tmp_path):
    path = tmp_path / "r.md"
    write_report({"miou": 10.0, "split": "val", "seeds": [0, 1]}, path,
                 sections={"K-means": {"miou_mean": 12.5, "miou_std": 0.25, "num_clusters": 4}})
    text = path.read_text()
    assert "## Details" in text and "| split | val |" in text and "| seeds | 0, 1 |" in text
    assert "| mIoU (mean over seeds) | 12.5 |" in text and "| num_clusters | 4 |" in text
    assert "## split" not in text
