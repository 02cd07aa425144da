"""The proposals stage: saliency filter, NMS, CRF refinement, and the proposals report."""

import json

import numpy as np
import pytest
from PIL import Image

from unseg.core.io import encode_rle, write_json, write_label_png
from unseg.data.index import build_index, write_index
from unseg.stages.proposals import (
    evaluate_proposals,
    filter_proposals,
    mask_nms,
    object_proposal_scores,
    semantic_component_instances,
)

from helpers import box, det


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
    metrics = evaluate_proposals(tmp_path / "images.csv", tmp_path / "no-instances", tmp_path / "proposals.json",
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


def test_crf_snaps_a_proposal_to_the_colour_edge():
    pytest.importorskip("pydensecrf.densecrf", reason="pydensecrf is not installed (pip install 'pydensecrf2==1.1')")
    from unseg.stages.proposals import refine_mask_with_crf

    image = np.zeros((64, 64, 3), dtype=np.uint8)
    image[:, 32:] = 255  # the object: the right half
    rough = np.zeros((64, 64), dtype=bool)
    rough[:, 26:] = True  # spills 6 columns into the black half
    refined = refine_mask_with_crf(image, rough)
    truth = np.zeros((64, 64), dtype=bool)
    truth[:, 32:] = True

    def iou(a, b):
        return (a & b).sum() / (a | b).sum()

    assert iou(rough, truth) < 0.85 and iou(refined, truth) > 0.97






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


def test_every_dropped_mask_is_kept_with_its_reason_and_numbers(tmp_path):
    from unseg.stages.proposals import filter_proposals_explained

    saliency = np.zeros((10, 10), dtype=np.float32)
    saliency[:, :5] = 1.0
    big = box((10, 10), 0, 0, 5, 5)  # 25 px, salient
    inner = box((10, 10), 0, 0, 5, 4)  # 20 px, IoU 0.8 with big, salient
    outside = box((10, 10), 6, 6, 9, 9)  # not salient
    masks = [det(big, 0.9, k=2, cluster=0), det(inner, 0.5, k=3, cluster=1), det(outside, 0.9, k=3, cluster=2)]
    kept, rejected = filter_proposals_explained(masks, saliency, 0.5, nms_iou=0.5)
    assert [d["k"] for d in kept] == [2]
    by_reason = {d["rejected"]: d for d in rejected}
    assert set(by_reason) == {"saliency", "nms"} and len(rejected) == 2
    assert by_reason["saliency"]["k"] == 3 and by_reason["saliency"]["salient_fraction"] == 0.0
    assert by_reason["saliency"]["reason"] == "salient fraction 0.00 < 0.5"
    assert by_reason["nms"]["suppressed_by"] == {"score": 0.9, "iou": 0.8, "k": 2, "cluster": 0}
    assert by_reason["nms"]["reason"].startswith("IoU 0.80 > 0.5 with a kept mask of score 0.90 (k 2, cluster 0)")
    # kept + rejected account for every mask exactly once
    assert len(kept) + len(rejected) == len(masks)
    assert filter_proposals(masks, saliency, 0.5, nms_iou=0.5) == kept


def test_unsalient_masks_can_be_kept_below_the_salient_ones_and_scored_by_area():
    saliency = np.zeros((10, 10), dtype=np.float32)
    saliency[:, :5] = 1.0
    inside = box((10, 10), 0, 0, 4, 4)  # 16 px, fully salient
    outside = box((10, 10), 6, 6, 9, 9)  # 9 px, not salient
    kept = filter_proposals([det(inside, 0.8), det(outside, 0.9)], saliency, 0.5, nms_iou=1.0, unsalient_weight=0.25)
    assert [(d["score"], d.get("salient", True)) for d in kept] == [(0.8, True), (0.225, False)]
    by_area = filter_proposals([det(inside, 0.8), det(outside, 0.9)], saliency, 0.5, nms_iou=1.0,
                               score="salient_area", unsalient_weight=0.5)
    assert [d["score"] for d in by_area] == [pytest.approx(1.0 * 16 / 100), pytest.approx(0.5 * 9 / 100)]
    assert len(filter_proposals([det(inside, 0.8), det(outside, 0.9)], saliency, 0.5, nms_iou=1.0)) == 1


def test_a_minimum_area_in_patches_is_the_same_at_every_resolution():
    from unseg.stages.masks import min_area_cells

    for side in (16, 32, 64):
        grid = np.zeros((side, side, 1))
        assert min_area_cells(0.015, grid, min_area_patches=4) == 4
        assert min_area_cells(0.015, grid) == int(np.ceil(0.015 * side * side))


def test_saliency_components_are_the_foregrounds_pieces_scored_by_their_mean_saliency():
    from unseg.core.io import decode_rle
    from unseg.stages.proposals import saliency_components

    saliency = np.zeros((20, 20), dtype=np.float32)
    saliency[2:8, 2:8] = 0.9  # 36 px
    saliency[2:8, 8] = 0.6  # 6 px more, touching: one piece of 42 px, mean (36*0.9 + 6*0.6) / 42 = 0.857
    saliency[12, 12] = 0.8  # 1 px (0.25 % of the image): under min_area_fraction 0.01
    saliency[15:18, 0:3] = 0.4  # not foreground
    saliency[14, 14], saliency[15, 15] = 0.7, 0.7  # diagonal neighbours: one 8-connected piece of 2 px (0.5 %)
    found = saliency_components(saliency, image_id=7, min_area_fraction=0.004, weight=0.5)
    assert [d["area"] for d in found] == [42, 2]
    first = decode_rle(found[0]["segmentation"])
    expected = np.zeros((20, 20), bool)
    expected[2:8, 2:9] = True
    assert (first == expected).all()
    assert found[0]["score"] == pytest.approx(0.5 * (36 * 0.9 + 6 * 0.6) / 42, abs=1e-6)
    assert found[1]["score"] == pytest.approx(0.35, abs=1e-6)
    assert all(d["image_id"] == 7 and d["source"] == "saliency_component" for d in found)
    assert [d["area"] for d in saliency_components(saliency, 7, min_area_fraction=0.01)] == [42]
    assert saliency_components(np.zeros((4, 4), np.float32), 1) == []


def test_saliency_components_join_the_kept_masks_beside_them(tmp_path):
    from unseg.core.io import read_json
    from unseg.stages.proposals import run_proposals

    semantic = np.zeros((32, 32), dtype=np.uint8)
    semantic[4:16, 4:16] = 1
    write_voc(tmp_path / "data", {"a": semantic})
    write_index(build_index(tmp_path / "data"), tmp_path / "images.csv")
    object_mask = semantic == 1
    masks = [det(object_mask, 0.9, k=2, cluster=1), det(box((32, 32), 4, 4, 10, 10), 0.8, k=3, cluster=0)]
    for mask in masks:
        mask["image_id"] = 1
    write_json(tmp_path / "masks.json", masks)
    for folder, value in (("filter", 255), ("sharp", 230)):
        (tmp_path / folder).mkdir()
        Image.fromarray(np.where(object_mask, value, 0).astype(np.uint8)).save(tmp_path / folder / "a.png")
    settings = {"min_salient_fraction": 0.5, "nms_iou": 0.5, "crf": False}
    run_proposals(tmp_path / "masks.json", tmp_path / "filter", tmp_path / "images.csv", tmp_path / "plain.json",
                  settings, progress=False)
    run_proposals(tmp_path / "masks.json", tmp_path / "filter", tmp_path / "images.csv", tmp_path / "with.json",
                  settings, progress=False, components_dir=tmp_path / "sharp")
    plain, joined = read_json(tmp_path / "plain.json"), read_json(tmp_path / "with.json")
    assert len(plain) == 2  # the masks overlap at IoU 0.25: both kept
    # the component equals the first mask (IoU 1) and is kept beside it, not suppressed, scored 0.5 x 230/255
    assert joined[:2] == plain and len(joined) == 3
    assert joined[2]["source"] == "saliency_component" and joined[2]["segmentation"] == plain[0]["segmentation"]
    assert joined[2]["score"] == pytest.approx(0.5 * 230 / 255, abs=1e-6)
    # components_only: the component alone is the proposal; both kept masks are rejected with that reason
    run_proposals(tmp_path / "masks.json", tmp_path / "filter", tmp_path / "images.csv", tmp_path / "only.json",
                  {**settings, "components_only": True}, progress=False, components_dir=tmp_path / "sharp",
                  out_rejected=tmp_path / "rejected.json")
    assert read_json(tmp_path / "only.json") == joined[2:]
    rejected = read_json(tmp_path / "rejected.json")
    assert [det["rejected"] for det in rejected] == ["components_only"] * 2
    assert [det["segmentation"] for det in rejected] == [det["segmentation"] for det in plain]
    with pytest.raises(ValueError, match="components_only"):
        run_proposals(tmp_path / "masks.json", tmp_path / "filter", tmp_path / "images.csv", tmp_path / "x.json",
                      {**settings, "components_only": True}, progress=False)


def test_masks_of_several_variants_are_voted_and_ranked_by_their_votes(tmp_path):
    from unseg.core.io import decode_rle, read_json
    from unseg.stages.proposals import run_proposals

    semantic = np.zeros((32, 32), dtype=np.uint8)
    semantic[4:16, 4:16] = 1
    write_voc(tmp_path / "data", {"a": semantic})
    write_index(build_index(tmp_path / "data"), tmp_path / "images.csv")
    # two feature sets cut the object (one 12 x 12, one a column short: IoU 132 / 144 = 0.92) and each a different
    # piece of the salient area; only the object gathers two votes
    obj, obj_short = box((32, 32), 4, 4, 16, 16), box((32, 32), 4, 4, 16, 15)
    piece, other_piece = box((32, 32), 20, 20, 30, 30), box((32, 32), 20, 0, 30, 8)
    for name, masks in (("coarse", [det(piece, 0.99, k=2), det(obj_short, 0.5, k=3)]),
                        ("fine", [det(obj, 0.4, k=2), det(other_piece, 0.3, k=4)])):
        write_json(tmp_path / f"{name}.json", masks)
    (tmp_path / "sal").mkdir()
    Image.fromarray(np.full((32, 32), 255, np.uint8)).save(tmp_path / "sal" / "a.png")
    settings = {"masks": "coarse", "min_salient_fraction": 0.5, "nms_iou": 0.5, "crf": False, "score": "salient_votes",
                "vote_iou": 0.6, "vote_agreement": 0.5}
    run_proposals(tmp_path / "coarse.json", tmp_path / "sal", tmp_path / "images.csv", tmp_path / "voted.json",
                  settings, progress=False, votes={"fine": tmp_path / "fine.json"})
    voted = read_json(tmp_path / "voted.json")
    assert [(d["votes"], d["vote_variants"]) for d in voted] == [
        (2, {"coarse": 1, "fine": 1}), (1, {"coarse": 1}), (1, {"fine": 1})]
    # the object: both hold its first 11 columns, one of two (not > 0.5) its last; score 1.0 x (2 + 132 / 1024)
    assert (decode_rle(voted[0]["segmentation"]) == obj_short).all()
    assert voted[0]["score"] == pytest.approx(2 + 132 / 1024, abs=1e-6)
    # single votes, ties by area: the coarse 10 x 10 piece before the fine 10 x 8 one
    assert [d["score"] for d in voted[1:]] == pytest.approx([1 + 100 / 1024, 1 + 80 / 1024], abs=1e-6)
    # without a vote the score has nothing to rank by
    with pytest.raises(ValueError, match="salient_votes ranks voted masks"):
        run_proposals(tmp_path / "coarse.json", tmp_path / "sal", tmp_path / "images.csv", tmp_path / "x.json",
                      settings, progress=False)
