"""The instances stage (issue 15): targets from RLE, the ViT feature pyramid, DropLoss, copy-paste, round merging,
resume, and a model that learns planted objects."""

from __future__ import annotations

import json
from collections import OrderedDict

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from torchvision.models.detection.roi_heads import maskrcnn_loss
from torchvision.ops import roi_align

import unseg.stages.instances.training as instance_training
from unseg.core.geometry import boxes_to_frame, boxes_to_original, mask_in_frame, resize_geometry
from unseg.core.io import decode_rle, encode_rle, write_json
from unseg.features.extract import extract_features
from unseg.features.store import FeatureStore, write_derived_store
from unseg.stages.instances.data import InstanceDataset
from unseg.stages.instances.detect import crf_window, paste_detections, refine_detections, rescore_by_coherence
from unseg.stages.instances.model import (
    FRAME_STRIDE,
    DropLossRoIHeads,
    SimpleFeaturePyramid,
    build_mask_rcnn,
    cells_in_boxes,
    colour_mask_loss,
    colour_similarities,
    drop_loss,
    pairwise_colour_loss,
    rgb_to_lab,
)
from unseg.stages.instances.report import write_rounds_report
from unseg.stages.instances.stage import run_instances_predict, run_instances_train
from unseg.stages.instances.targets import (
    boxes_of_masks,
    copy_paste,
    frame_targets,
    masks_in_frame,
    merge_round_targets,
)
from unseg.stages.instances.training import build_instance_model

from helpers import variant


def rle(mask: np.ndarray) -> dict:
    return encode_rle(mask)


def coco_box(mask: np.ndarray) -> np.ndarray:
    """pycocotools' [x, y, w, h] of a mask as x1, y1, x2, y2."""
    encoded = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    x, y, w, h = mask_utils.toBbox(encoded)
    return np.array([x, y, x + w, y + h])


# ---------------------------------------------------------------------------------------------------- targets


def test_rle_targets_match_pycocotools_in_an_identity_frame():
    # patch 16 and no resize: the model frame is the image itself
    geometry = resize_geometry((64, 96), 64, 16)
    assert geometry.grid_size == (4, 6) and geometry.resized_size == (64, 96)
    masks = np.zeros((2, 64, 96), dtype=bool)
    masks[0, 5:20, 7:40] = True
    masks[1, 30:64, 60:61] = True  # one pixel wide, touching the bottom
    detections = [{"segmentation": rle(mask), "score": 1.0} for mask in masks]
    frame = masks_in_frame(detections, geometry, 16, FRAME_STRIDE)
    targets = frame_targets(frame)
    for index, det in enumerate(detections):
        compressed = {"size": det["segmentation"]["size"], "counts": det["segmentation"]["counts"].encode()}
        assert np.array_equal(targets["masks"][index].numpy(), mask_utils.decode(compressed))
        assert np.array_equal(targets["boxes"][index].numpy(), coco_box(masks[index]))
    assert targets["labels"].tolist() == [1, 1] and targets["masks"].dtype == torch.uint8


def test_targets_in_a_resized_frame_follow_the_geometry():
    # DINOv2's 14-px patches on a 300 x 200 photo at 224 px: the frame is 16 px per token, not 14
    geometry = resize_geometry((200, 300), 224, 14)
    mask = np.zeros((200, 300), dtype=bool)
    mask[40:120, 100:250] = True
    frame = mask_in_frame(mask, geometry, 14, FRAME_STRIDE)
    assert frame.shape == (geometry.grid_size[0] * 16, geometry.grid_size[1] * 16)
    box = boxes_of_masks(torch.from_numpy(frame)[None])[0].numpy()
    mapped = boxes_to_frame(coco_box(mask)[None].astype(float), geometry, 14, FRAME_STRIDE)[0]
    assert np.abs(box - mapped).max() <= 1.0  # nearest sampling moves an edge by at most one frame pixel
    back = boxes_to_original(mapped[None], geometry, 14, FRAME_STRIDE)[0]
    assert np.allclose(back, coco_box(mask))
    as_tensor = boxes_to_frame(torch.tensor(coco_box(mask)[None], dtype=torch.float64), geometry, 14, FRAME_STRIDE)
    assert np.allclose(as_tensor.numpy(), mapped[None])


def test_an_empty_target_is_dropped():
    masks = torch.zeros((2, 32, 32), dtype=torch.bool)
    masks[1, 3:9, 4:6] = True
    targets = frame_targets(masks)
    assert len(targets["masks"]) == 1 and targets["boxes"].tolist() == [[4.0, 3.0, 6.0, 9.0]]


# ---------------------------------------------------------------------------------------------------- the model


def test_the_pyramid_has_vitdet_strides_and_shapes():
    pyramid = SimpleFeaturePyramid(embed_dim=32, channels=8)
    maps = pyramid(torch.randn(2, 32, 6, 10))
    assert list(maps) == ["0", "1", "2", "3", "pool"]
    assert [tuple(m.shape) for m in maps.values()] == [(2, 8, 24, 40), (2, 8, 12, 20), (2, 8, 6, 10), (2, 8, 3, 5),
                                                      (2, 8, 2, 3)]
    assert pyramid.strides == [4, 8, 16, 32, 64]
    # in the model frame (16 px per token) every level's scale is an exact power of two
    frame = (6 * FRAME_STRIDE, 10 * FRAME_STRIDE)
    assert [frame[0] / m.shape[-2] for m in list(maps.values())[:4]] == [4, 8, 16, 32]
    with pytest.raises(ValueError, match="decrease"):
        SimpleFeaturePyramid(32, 8, scales=(1, 2))


def test_drop_loss_zeroes_a_region_that_overlaps_no_target():
    # region 0 is background far from the target, region 1 background next to it, region 2 a positive
    logits = torch.tensor([[0.3, 1.2], [2.0, -1.0], [0.1, 0.4]], requires_grad=True)
    regression = torch.zeros(3, 8)
    labels = [torch.tensor([0, 0, 1])]
    targets = [torch.zeros(3, 4)]
    ce = torch.nn.functional.cross_entropy(logits, labels[0], reduction="none")
    kept = [torch.tensor([False, True, True])]
    classification, _ = drop_loss(logits, regression, labels, targets, kept)
    assert classification.item() == pytest.approx((ce[1] + ce[2]).item() / 3)
    classification.backward()
    assert torch.all(logits.grad[0] == 0) and torch.any(logits.grad[1] != 0)
    plain, _ = drop_loss(logits, regression, labels, targets, [torch.ones(3, dtype=torch.bool)])
    assert plain.item() == pytest.approx(torch.nn.functional.cross_entropy(logits, labels[0]).item())


def test_the_roi_heads_drop_regions_by_their_best_box_iou():
    torch.manual_seed(0)
    model = build_mask_rcnn(16, channels=8, scales=(1, 0.5), rois_per_image=16, drop_iou=0.01)
    heads: DropLossRoIHeads = model.roi_heads
    heads.train()
    features = OrderedDict((name, torch.randn(1, 8, size, size)) for name, size in (("0", 8), ("1", 4)))
    target = {"boxes": torch.tensor([[10.0, 10.0, 60.0, 60.0]]), "labels": torch.ones(1, dtype=torch.int64),
              "masks": torch.zeros(1, 128, 128, dtype=torch.uint8)}
    target["masks"][0, 10:60, 10:60] = 1
    # one proposal on the object, one touching it (IoU 100 / 2800 = 0.036), two far away (IoU 0)
    proposals = [torch.tensor([[12.0, 12.0, 58.0, 58.0], [50.0, 50.0, 70.0, 70.0], [90.0, 90.0, 120.0, 120.0],
                               [70.0, 0.0, 127.0, 40.0]])]
    losses = heads(features, proposals, [(128, 128)], [target])[1]
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_mask"}
    sampled = 5  # the four proposals and the target box itself (added by torchvision)
    assert heads.last_dropped == pytest.approx(2 / sampled)


def test_copy_paste_keeps_masks_boxes_and_pixels_consistent():
    rng = np.random.default_rng(3)
    image = torch.zeros((3, 40, 60), dtype=torch.uint8)
    masks = torch.zeros((2, 40, 60), dtype=torch.bool)
    masks[0, 5:15, 5:15] = True
    masks[1, 0:40, 0:60] = True  # the whole image: always partly covered by whatever is pasted
    source = torch.full((3, 40, 60), 200, dtype=torch.uint8)
    source_masks = torch.zeros((2, 40, 60), dtype=torch.bool)
    source_masks[0, 10:30, 20:50] = True
    source_masks[1, 2:8, 2:8] = True
    for _ in range(10):
        pasted_image, pasted_masks = copy_paste(image, masks, source, source_masks, rng, (0.5, 1.0))
        covered = pasted_image[0] == 200
        assert covered.any() and torch.all(pasted_image[:, ~covered] == 0)
        # each mask is the image's own (never under a pasted pixel) or a pasted one (only pasted pixels), own first
        pasted = [bool((m & covered).any()) for m in pasted_masks]
        assert pasted == sorted(pasted) and all(not (m & ~covered).any() for m, p in zip(pasted_masks, pasted) if p)
        assert torch.equal(torch.stack([m for m, p in zip(pasted_masks, pasted) if p]).any(0), covered)
        boxes = frame_targets(pasted_masks)["boxes"]
        for mask, box in zip(pasted_masks, boxes):
            assert np.array_equal(box.numpy(), coco_box(mask.numpy()))


def test_copy_paste_drops_an_own_mask_mostly_covered():
    rng = np.random.default_rng(0)
    image = torch.zeros((3, 20, 20), dtype=torch.uint8)
    masks = torch.zeros((1, 20, 20), dtype=torch.bool)
    masks[0, 8:12, 8:12] = True
    source = torch.ones((3, 20, 20), dtype=torch.uint8)
    source_masks = torch.ones((1, 20, 20), dtype=torch.bool)  # pasted over everything at scale 1
    _, out = copy_paste(image, masks, source, source_masks, rng, (1.0, 1.0))
    assert len(out) == 1 and out[0].all()


# ---------------------------------------------------------------------------------------------------- rounds


# ---------------------------------------------------------------------------------------------------- weak mask loss


def test_rgb_to_lab_matches_the_cie_reference_values():
    # sRGB white, black, pure red and a mid grey under D65 (CIE L*a*b* reference values, e.g. Bruce Lindbloom's)
    pixels = torch.tensor([[255, 255, 255], [0, 0, 0], [255, 0, 0], [119, 119, 119]], dtype=torch.uint8)
    lab = rgb_to_lab(pixels.T[:, :, None])[:, :, 0].T
    expected = torch.tensor([[100.0, 0.0, 0.0], [0.0, 0.0, 0.0], [53.24, 80.09, 67.20], [50.03, 0.0, 0.0]])
    assert torch.allclose(lab, expected, atol=0.05)


def test_colour_similarities_are_exp_of_the_lab_distance_and_zero_off_the_grid():
    colours = torch.zeros(1, 3, 3, 3)
    colours[0, 0, :, 2] = 4.0  # the right column 4 L-units lighter
    similarity = colour_similarities(colours)
    # offsets (0, 1) is index 4: from the centre cell to its right neighbour exp(-4 / 2); from the left cell to the
    # centre 1; from the right column to beyond the grid 0
    assert similarity[0, 4, 1, 1].item() == pytest.approx(np.exp(-2.0))
    assert similarity[0, 4, 1, 0].item() == pytest.approx(1.0)
    assert similarity[0, 4, 1, 2].item() == 0.0
    assert similarity[0, 0, 0, 0].item() == 0.0 and similarity[0, 7, 1, 1].item() == pytest.approx(np.exp(-2.0))


def test_the_pairwise_loss_pulls_only_similar_neighbours_inside_the_box_together():
    size = 4
    split = torch.full((1, size, size), -30.0)
    split[0, :, :2] = 30.0  # the left half object, the right half background
    same_colour = colour_similarities(torch.zeros(1, 3, size, size))
    edge = torch.zeros(1, 3, size, size)
    edge[0, 0, :, 2:] = 50.0  # a strong colour edge exactly between the halves
    inside = torch.ones(1, size, size, dtype=torch.bool)
    # uniform colour: the edges crossing the split cost ~29.3 each; across a colour edge no pair is similar, so nothing
    # is lost
    crossing = pairwise_colour_loss(split, same_colour, inside).item()
    assert crossing > 1.0
    assert pairwise_colour_loss(split, colour_similarities(edge), inside).item() == pytest.approx(0.0, abs=1e-6)
    # p = 0.5 everywhere: P(same) = 1/2 for every edge, loss log 2
    assert pairwise_colour_loss(torch.zeros(1, size, size), same_colour, inside).item() == pytest.approx(np.log(2))
    # no cell inside the box: no edge counts
    assert pairwise_colour_loss(split, same_colour, torch.zeros_like(inside)).item() == 0.0
    # by brute force: the mean over the grid's directed 8-neighbour edges of -log P(same), P(same) = 2 σ(30) σ(-30)
    # across the split and 1 elsewhere
    weights, crossed = 0, 0
    for row in range(size):
        for col in range(size):
            for dy, dx in ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)):
                if 0 <= row + dy < size and 0 <= col + dx < size:
                    weights += 1
                    crossed += (col < 2) != (col + dx < 2)
    logsigmoid = torch.nn.functional.logsigmoid
    cost = -float(np.log(2) + logsigmoid(torch.tensor(30.0)) + logsigmoid(torch.tensor(-30.0)))
    assert (weights, crossed) == (84, 20)
    expected = crossed * cost / weights
    assert crossing == pytest.approx(expected, rel=1e-4)


def test_cells_in_boxes_tests_each_cell_centre():
    regions = torch.tensor([[0.0, 0.0, 4.0, 4.0], [0.0, 0.0, 8.0, 4.0]])
    boxes = torch.tensor([[1.0, 1.0, 3.0, 3.0], [4.0, 0.0, 8.0, 2.0]])
    cells = cells_in_boxes(regions, boxes, 4)
    assert cells[0].nonzero().tolist() == [[1, 1], [1, 2], [2, 1], [2, 2]]
    # region 2: cell centres x = 1, 3, 5, 7 and y = 0.5, 1.5, 2.5, 3.5
    assert cells[1].nonzero().tolist() == [[0, 2], [0, 3], [1, 2], [1, 3]]


def test_the_pairwise_mask_loss_adds_the_colour_term_to_mask_rcnns_in_each_region():
    torch.manual_seed(0)
    masks = torch.zeros(1, 32, 32, dtype=torch.uint8)
    masks[0, 8:24, 8:20] = 1
    colours = torch.randn(3, 32, 32) * 3
    target = {"masks": masks, "boxes": torch.tensor([[8.0, 8.0, 20.0, 24.0]]), "colours": colours}
    regions = [torch.tensor([[4.0, 4.0, 28.0, 28.0], [8.0, 8.0, 20.0, 24.0]])]
    logits = torch.randn(2, 2, 8, 8)
    loss = colour_mask_loss(logits, regions, [target], [torch.tensor([0, 0])], pairwise_weight=0.5)
    # the same by hand: Mask R-CNN's own loss of these regions, plus the pairwise term on the colours sampled in each
    # region by RoI-Align, the box's cells by centre
    plain = maskrcnn_loss(logits, regions, [masks], [torch.ones(1, dtype=torch.int64)], [torch.tensor([0, 0])])
    sampled = roi_align(colours[None], [regions[0]], (8, 8), 1.0)
    in_box = cells_in_boxes(regions[0], target["boxes"].expand(2, 4), 8)
    pairwise = pairwise_colour_loss(logits[:, 1], colour_similarities(sampled), in_box)
    assert in_box[1].all() and not in_box[0].all()
    assert pairwise.item() > 0
    assert loss.item() == pytest.approx((plain + 0.5 * pairwise).item(), rel=1e-5)


def test_the_roi_heads_train_the_mask_head_with_the_pairwise_loss():
    torch.manual_seed(0)
    model = build_mask_rcnn(16, channels=8, scales=(1, 0.5), rois_per_image=16, mask_loss="mask_pairwise")
    heads: DropLossRoIHeads = model.roi_heads
    heads.train()
    features = OrderedDict((name, torch.randn(1, 8, size, size)) for name, size in (("0", 8), ("1", 4)))
    target = {"boxes": torch.tensor([[10.0, 10.0, 60.0, 60.0]]), "labels": torch.ones(1, dtype=torch.int64),
              "masks": torch.zeros(1, 128, 128, dtype=torch.uint8), "colours": torch.zeros(3, 128, 128)}
    target["masks"][0, 10:60, 10:60] = 1
    proposals = [torch.tensor([[12.0, 12.0, 58.0, 58.0], [90.0, 90.0, 120.0, 120.0]])]
    loss = heads(features, proposals, [(128, 128)], [target])[1]["loss_mask"]
    loss.backward()
    assert loss.item() > 0 and heads.mask_predictor.mask_fcn_logits.weight.grad.abs().sum() > 0
    for removed in ("boxes", "projection"):
        with pytest.raises(ValueError, match="mask_loss"):
            build_mask_rcnn(16, channels=8, mask_loss=removed)


def test_a_checkpoint_trained_with_a_removed_setting_is_refused_by_name():
    config = {"embed_dim": 16, "reads_images": False, "channels": 8, "scales": [1.0, 0.5], "rois_per_image": 16,
              "detections_per_image": 10, "min_score": 0.05, "drop_iou": 0.01, "mask_loss": "mask"}
    assert build_instance_model({**config, "detail_channels": 0, "mask_level": "by_size"}).roi_heads is not None
    for removed, pattern in (({"detail_channels": 8}, "detail_channels"), ({"mask_level": "finest"}, "mask_level"),
                             ({"mask_loss": "projection"}, "projection")):
        with pytest.raises(ValueError, match=pattern):
            build_instance_model({**config, **removed})


def square(size: int, top: int, left: int, side: int) -> np.ndarray:
    mask = np.zeros((size, size), dtype=bool)
    mask[top : top + side, left : left + side] = True
    return mask


def test_a_round_merges_confident_predictions_with_the_proposals_they_miss():
    proposals = [{"image_id": 1, "segmentation": rle(square(50, 0, 0, 20)), "score": 0.9},
                 {"image_id": 1, "segmentation": rle(square(50, 30, 30, 10)), "score": 0.5},
                 {"image_id": 2, "segmentation": rle(square(50, 5, 5, 10)), "score": 0.7}]
    predictions = [
        {"image_id": 1, "segmentation": rle(square(50, 0, 0, 18)), "score": 0.95},  # IoU 0.81 with proposal 0
        {"image_id": 1, "segmentation": rle(square(50, 30, 30, 6)), "score": 0.8},  # IoU 0.36 with proposal 1
        {"image_id": 1, "segmentation": rle(square(50, 40, 0, 8)), "score": 0.3},  # not confident
        {"image_id": 1, "segmentation": rle(square(50, 0, 0, 17)), "score": 0.9},  # a duplicate of the first
        {"image_id": 3, "segmentation": rle(square(50, 1, 1, 5)), "score": 0.99},  # an image without proposals
    ]
    merged = merge_round_targets(predictions, proposals, score_threshold=0.7, overlap_iou=0.5, keep_proposals=True)
    by_image = {}
    for det in merged:
        by_image.setdefault(det["image_id"], []).append((det["source"], det["score"]))
    assert by_image == {1: [("prediction", 0.95), ("prediction", 0.8), ("proposal", 0.5)],
                        2: [("proposal", 0.7)], 3: [("prediction", 0.99)]}
    alone = merge_round_targets(predictions, proposals, score_threshold=0.7, overlap_iou=0.5, keep_proposals=False)
    assert [(det["image_id"], det["score"]) for det in alone] == [(1, 0.95), (1, 0.8), (3, 0.99)]
    # the round's trainer keeps targets scoring >= 0.6 (min_target_score): the weaker proposal does not come back
    strong = merge_round_targets(predictions, proposals, score_threshold=0.7, overlap_iou=0.5, keep_proposals=True,
                                 min_proposal_score=0.6)
    assert [(det["image_id"], det["source"], det["score"]) for det in strong] == [
        (1, "prediction", 0.95), (1, "prediction", 0.8), (2, "proposal", 0.7), (3, "prediction", 0.99)]


def test_the_rounds_report_tabulates_each_round_against_the_proposals(tmp_path):
    rows = []
    for label, ar, ap50 in (("proposals", 20.0, 30.0), ("round 1", 30.0, 31.0), ("round 2", 35.0, 29.0)):
        path = tmp_path / f"{label}.json"
        write_json(path, {"AP": 10.0, "AP50": ap50, "AP75": 5.0, "AR1": 5.0, "AR10": 15.0, "AR100": ar,
                          "single": {"AP50": 12.0}, "num_detections": 7,
                          "recall_by_instance_count": {"recall": {"1": 50.0, "2+": None}}})
        rows.append((label, path))
    table = write_rounds_report(rows, tmp_path / "report.md", tmp_path / "rounds.json")
    text = (tmp_path / "report.md").read_text()
    assert "| round 2 | 10.0 | 29.0 | 5.0 | 5.0 | 15.0 | 35.0 | 1.75× | 12.0 | 50.0 | – |" in text
    assert table["round 1"]["AR100"] == 30.0 and json.loads((tmp_path / "rounds.json").read_text())["proposals"]


# ---------------------------------------------------------------------------------------------------- training


def planted_store(folder, count: int = 2):
    """``count`` 96 x 96 images with a 32 x 32 px square each (2 x 2 tokens at ViT-S/16): a store whose tokens are
    1 in channel 0 on the square's cells and small noise elsewhere, and the squares as proposals."""
    rng = np.random.default_rng(0)
    paths, masks = [], {}
    for index in range(count):
        picture = rng.integers(0, 40, (96, 96, 3), dtype=np.uint8)
        top, left = 16 + 32 * (index % 2), 16 + 16 * index
        picture[top : top + 32, left : left + 32] = 220
        paths.append(str(folder / f"img{index}.png"))
        Image.fromarray(picture).save(paths[-1])
        masks[f"img{index}"] = square(96, top, left, 32)
    names = list(masks)
    extract_features(paths, names, list(range(1, count + 1)), folder / "base.zarr", backbone="dino_vits16",
                     weights="random", resolution=96, facets=["tokens"], progress=False, workers=0)
    base = FeatureStore(folder / "base.zarr")

    def arrays_of(name):
        grid = rng.normal(0, 0.05, (6, 6, 8)).astype(np.float32)
        cells = masks[name].reshape(6, 16, 6, 16).mean(axis=(1, 3)) > 0.5
        grid[cells, 0] += 1.0
        return {"tokens": grid}

    write_derived_store(folder / "planted.zarr", base, {"facets": ["tokens"], "embed_dim": 8}, arrays_of,
                        progress=False)
    proposals = [{"image_id": index + 1, "segmentation": rle(masks[name]), "score": 1.0}
                 for index, name in enumerate(names)]
    write_json(folder / "proposals.json", proposals)
    return folder / "planted.zarr", dict(zip(names, paths)), masks


TINY_MODEL = {"channels": 16, "scales": [4, 2, 1], "rois_per_image": 64, "batch_size": 2, "lr": 0.002,
              "warmup_steps": 5, "weight_decay": 1e-4}


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    return planted_store(tmp_path_factory.mktemp("planted"))


def test_two_planted_objects_are_recovered(planted, tmp_path):
    store, paths, masks = planted
    settings = variant("instances", **TINY_MODEL, steps=120)
    names_by_id = {1: "img0", 2: "img1"}
    summary = run_instances_train(store, store.parent / "proposals.json", names_by_id, tmp_path, settings,
                                  progress=False)
    assert summary["steps"] == 120
    count = run_instances_predict(tmp_path / "model.pt", store, ["img0", "img1"], tmp_path / "instances.json",
                                  progress=False, rescore="none")
    detections = json.loads((tmp_path / "instances.json").read_text())
    assert count == len(detections) > 0
    for image_id, name in names_by_id.items():
        best = max((det for det in detections if det["image_id"] == image_id), key=lambda det: det["score"])
        found = decode_rle(best["segmentation"])
        iou = (found & masks[name]).sum() / (found | masks[name]).sum()
        assert iou >= 0.7, (name, iou)
        assert best["bbox"] == pytest.approx([float(v) for v in mask_utils.toBbox(
            {"size": best["segmentation"]["size"], "counts": best["segmentation"]["counts"].encode()})])
    log = (tmp_path / "log.csv").read_text().splitlines()
    assert log[0].startswith("step,loss,") and len(log) > 10


def assert_top_detections_recover(detections: list[dict], names_by_id: dict[int, str], masks: dict) -> None:
    """Each image's top-scored detection overlaps its planted object by IoU >= 0.7."""
    for image_id, name in names_by_id.items():
        best = max((det for det in detections if det["image_id"] == image_id), key=lambda det: det["score"])
        found = decode_rle(best["segmentation"])
        assert (found & masks[name]).sum() / (found | masks[name]).sum() >= 0.7, name


def test_the_pairwise_mask_loss_reads_the_images_colours_and_learns_the_planted_objects(planted, tmp_path):
    # mask_loss: mask_pairwise adds a term on the images' colours (the squares are bright on a dark background): the
    # loss needs the images, and the objects are recovered
    store, paths, masks = planted
    settings = variant("instances", **TINY_MODEL, steps=120, mask_loss="mask_pairwise")
    names_by_id = {1: "img0", 2: "img1"}
    with pytest.raises(ValueError, match="mask_loss other than 'mask' read"):
        run_instances_train(store, store.parent / "proposals.json", names_by_id, tmp_path, settings, progress=False)
    run_instances_train(store, store.parent / "proposals.json", names_by_id, tmp_path, settings, image_paths=paths,
                        progress=False)
    checkpoint = torch.load(tmp_path / "model.pt", weights_only=False)
    assert checkpoint["config"]["mask_loss"] == "mask_pairwise" and not checkpoint["config"]["reads_images"]
    run_instances_predict(tmp_path / "model.pt", store, ["img0", "img1"], tmp_path / "instances.json",
                          progress=False, rescore="none")
    assert_top_detections_recover(json.loads((tmp_path / "instances.json").read_text()), names_by_id, masks)
    dataset = InstanceDataset(store, "tokens", {name: [] for name in masks}, paths,
                                               reads_images=False, colours=True)
    tokens, targets = dataset[0]
    assert tokens.shape == (8, 6, 6) and targets["colours"].shape == (3, 96, 96)
    assert targets["colours"][0, 40, 40] > 80 > 20 > targets["colours"][0, 2, 2]  # L of the square, of the noise


def test_an_interrupted_training_resumes_to_the_same_weights(planted, tmp_path, monkeypatch):
    store, _, _ = planted
    settings = variant("instances", **TINY_MODEL, steps=8, checkpoint_every=3)
    names_by_id = {1: "img0", 2: "img1"}
    run_instances_train(store, store.parent / "proposals.json", names_by_id, tmp_path / "whole", settings,
                        progress=False)
    real = instance_training.detection_losses
    calls = {"n": 0}

    def dies_at_step_five(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(instance_training, "detection_losses", dies_at_step_five)
    with pytest.raises(KeyboardInterrupt):
        run_instances_train(store, store.parent / "proposals.json", names_by_id, tmp_path / "killed", settings,
                            progress=False)
    # an engine epoch is a logging window, here of one step: last.pt was written after step 3
    assert torch.load(tmp_path / "killed/last.pt", weights_only=False)["epoch"] == 3
    monkeypatch.setattr(instance_training, "detection_losses", real)
    run_instances_train(store, store.parent / "proposals.json", names_by_id, tmp_path / "killed", settings,
                        progress=False)
    whole = torch.load(tmp_path / "whole/model.pt", weights_only=False)["state_dict"]
    resumed = torch.load(tmp_path / "killed/model.pt", weights_only=False)["state_dict"]
    assert all(torch.equal(whole[key], resumed[key]) for key in whole)
    # other targets: the old last.pt is not continued
    other = json.loads((store.parent / "proposals.json").read_text())[:1]
    write_json(tmp_path / "other.json", other)
    run_instances_train(store, tmp_path / "other.json", names_by_id, tmp_path / "killed", settings, progress=False)
    changed = torch.load(tmp_path / "killed/model.pt", weights_only=False)["state_dict"]
    assert not all(torch.equal(whole[key], changed[key]) for key in whole)


def test_detections_are_pasted_at_the_original_resolution():
    geometry = resize_geometry((100, 150), 64, 16)  # 4 x 6 tokens, resized 64 x 96
    boxes = boxes_to_frame(torch.tensor([[30.0, 20.0, 90.0, 80.0]]), geometry, 16, FRAME_STRIDE)
    masks = torch.ones((1, 1, 28, 28))
    found = paste_detections(boxes, torch.tensor([0.9]), masks, geometry, 16, image_id=7)
    assert len(found) == 1 and found[0]["image_id"] == 7 and found[0]["category_id"] == 1
    pixels = decode_rle(found[0]["segmentation"])
    assert pixels.shape == (100, 150)
    expected = np.zeros((100, 150), dtype=bool)
    expected[20:80, 30:90] = True
    # torchvision's paste pads the 28 x 28 mask by one cell before resizing it into the box: up to ~2 px beyond it
    assert not (expected & ~pixels).any() and (pixels & expected).sum() / (pixels | expected).sum() > 0.9
    rows, cols = np.nonzero(pixels)
    assert 17 <= rows.min() <= 20 and 80 <= rows.max() <= 82 and 27 <= cols.min() <= 30 and 90 <= cols.max() <= 92


def test_coherence_rescoring_ranks_a_merge_of_two_unlike_regions_below_a_single_one():
    geometry = resize_geometry((64, 64), 64, 16)  # 4 x 4 tokens, 16 px each
    unit = np.zeros((16, 2))
    unit[:, 0] = 1.0  # every token "a" ...
    unit[[2, 3, 6, 7], :] = [0.0, 1.0]  # ... but the top-right 2 x 2 block, "b"
    single = square(64, 0, 0, 32)  # the top-left block: all "a"
    merged = np.zeros((64, 64), dtype=bool)
    merged[0:32, 0:64] = True  # the top half: half "a", half "b"
    detections = [{"segmentation": rle(single), "score": 0.9}, {"segmentation": rle(merged), "score": 0.95}]
    rescored = rescore_by_coherence(detections, unit, geometry)
    # coherence = |mean unit vector|^2: 1 for the single block, (0.5^2 + 0.5^2) = 0.5 for the merge
    assert [det["coherence"] for det in rescored] == [1.0, 0.5]
    assert [det["score"] for det in rescored] == [0.9, 0.475]
    assert [det["detector_score"] for det in rescored] == [0.9, 0.95]


def test_the_crf_window_is_the_box_grown_within_the_image():
    mask = np.zeros((100, 200), dtype=bool)
    mask[40:60, 10:90] = True  # 20 x 80: grown by max(16, 0.25 x 80 = 20) px, clipped at the left edge
    assert crf_window(mask) == (slice(20, 80), slice(0, 110))
    small = np.zeros((100, 200), dtype=bool)
    small[50, 100] = True
    assert crf_window(small) == (slice(34, 67), slice(84, 117))


def test_crf_refinement_snaps_a_coarse_detection_to_the_object():
    pytest.importorskip("pydensecrf")
    image = np.full((64, 64, 3), 30, dtype=np.uint8)
    image[20:44, 16:40] = (230, 200, 40)
    truth = square(64, 20, 16, 24)
    coarse = np.zeros((64, 64), dtype=bool)
    coarse[14:50, 10:46] = True  # the object with a 6-px halo, as a token-level mask upsampled
    refined = refine_detections([{"segmentation": rle(coarse), "score": 0.8}], image)
    mask = decode_rle(refined[0]["segmentation"])

    def iou(a, b):
        return (a & b).sum() / (a | b).sum()

    assert iou(mask, truth) > 0.9 > iou(coarse, truth)
    assert refined[0]["crf"] and refined[0]["area"] == int(mask.sum()) and refined[0]["score"] == 0.8


def test_augmented_training_runs_the_vit_on_pasted_images_and_detects_from_the_store(planted, tmp_path):
    store, paths, masks = planted
    base = store.parent / "base.zarr"  # the random ViT's own tokens: what the ViT gives on the plain images
    settings = variant("instances", **TINY_MODEL, steps=2, copy_paste=1.0, hflip=0.5)
    run_instances_train(base, store.parent / "proposals.json", {1: "img0", 2: "img1"}, tmp_path, settings,
                        image_paths=paths, progress=False)
    checkpoint = torch.load(tmp_path / "model.pt", weights_only=False)
    assert checkpoint["config"]["reads_images"] and not any(
        key.startswith("backbone.backbone.") for key in checkpoint["state_dict"])  # the frozen ViT is not saved
    dataset = InstanceDataset(base, "tokens", {name: json.loads(
        (store.parent / "proposals.json").read_text())[index:index + 1] for index, name in enumerate(masks)}, paths,
        {"copy_paste": 1.0, "hflip": 0.0, "copy_paste_scale": [0.5, 0.5]})
    plain, plain_targets = dataset[0]
    pasted, pasted_targets = dataset[(0, 7)]
    assert plain.shape == pasted.shape == (3, 96, 96) and not torch.equal(plain, pasted)
    assert len(plain_targets["masks"]) == 1 and len(pasted_targets["masks"]) == 2
    assert pasted_targets["masks"].shape[-2:] == (96, 96)  # 6 x 6 tokens at 16 frame pixels each
    # detection reads the stored tokens: the frozen ViT's output on the plain image
    run_instances_predict(tmp_path / "model.pt", base, ["img0", "img1"], tmp_path / "instances.json",
                          progress=False, rescore="none")
    assert isinstance(json.loads((tmp_path / "instances.json").read_text()), list)
