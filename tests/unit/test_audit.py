"""Audit pages: galleries of the intermediate masks."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from unseg.core.io import encode_rle, write_json

from helpers import BROWSER, load_in_browser, screenshot


def test_audit_masks_shows_panels_per_k_and_per_eigenvector(tmp_path):
    from unseg.reports.audit import audit_masks

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


def saliency_page(tmp_path):
    """The saliency page of three 10 x 10 images whose maps have foreground IoU 100, 26/49 and 0 (void left out)."""
    from unseg.core.io import write_label_png
    from unseg.reports.audit import audit_saliency

    (tmp_path / "saliency" / "extras" / "teacher").mkdir(parents=True)
    truth = np.zeros((10, 10), dtype=np.uint8)
    truth[:, :5] = 1  # 50 foreground pixels
    truth[0, 0] = 255  # void: left out
    # predicted foreground: "good" = the truth (49 valid pixels), "half" = 26 of them (columns 0-2, rows 0-8, not the
    # void corner), "bad" = the other side
    half = (truth == 1) & (np.arange(10)[None, :] < 3) & (np.arange(10)[:, None] < 9)
    predictions = {"good": truth == 1, "half": half,
                   "bad": truth == 0}
    images, ground_truth = [], {}
    for image_id, (name, mask) in enumerate(predictions.items(), 1):
        Image.fromarray(np.full((10, 10, 3), 90, dtype=np.uint8)).save(tmp_path / f"{name}.png")
        Image.fromarray(np.where(mask, 230, 20).astype(np.uint8), mode="L").save(tmp_path / "saliency" / f"{name}.png")
        write_label_png(tmp_path / f"{name}-gt.png", truth)
        images.append((image_id, name, str(tmp_path / f"{name}.png")))
        ground_truth[name] = str(tmp_path / f"{name}-gt.png")
    Image.fromarray(np.full((10, 10), 255, np.uint8), mode="L").save(tmp_path / "saliency/extras/teacher/bad.png")
    return audit_saliency(images, tmp_path / "saliency", tmp_path / "audit", ground_truth, max_images=2)


def test_the_saliency_page_scores_every_image_and_shows_the_worst_first(tmp_path):
    import re

    text = saliency_page(tmp_path).read_text()
    table = dict(re.findall(r"<tr><td>(?:<a href='#\w+'>)?(\w+)(?:</a>)?</td><td data-value='([0-9.e+-]+)'", text))
    assert {name: round(float(value), 4) for name, value in table.items()} == {
        "bad": 0.0, "half": round(100 * 26 / 49, 4), "good": 100.0}
    assert list(table) == ["bad", "half", "good"]  # worst first
    assert re.findall(r'<section id="(\w+)">', text) == ["bad", "half"]  # the gallery: the two worst
    assert "href='#good'" not in text and "href='#bad'" in text
    assert text.count("teacher (&gt; 0.5)") == 1 and "<script>" in text


@pytest.mark.skipif(BROWSER is None, reason="no headless Chromium (apt-get install chromium-headless-shell)")
def test_in_a_browser_the_saliency_table_sorts_and_every_image_decodes(tmp_path):
    import re

    page = saliency_page(tmp_path)
    order = {}
    for fragment in ("", "#sort=-1", "#sort=1", "#sort=-2"):
        dom, console = load_in_browser(page.resolve().as_uri() + fragment)
        assert console == [], console  # no script error, no failed load reported by the page
        order[fragment] = re.findall(r"<tr><td>(?:<a href=\"#\w+\">)?(\w+)", dom)
        for source in re.findall(r'<img src="([^"]+)"', dom):
            with Image.open(page.parent / source) as image:
                image.load()  # decodes
    assert order[""] == order["#sort=1"] == ["bad", "half", "good"]  # by IoU, worst first
    assert order["#sort=-1"] == ["good", "half", "bad"]
    assert order["#sort=-2"][0] == "bad"  # the largest foreground: the other side of the image


@pytest.mark.skipif(BROWSER is None, reason="no headless Chromium (apt-get install chromium-headless-shell)")
def test_the_saliency_page_looks_as_it_did(tmp_path):
    """The rendered page against tests/data/audit-saliency.png (UNSEG_UPDATE_SCREENSHOTS=1 rewrites it): at most
    2 % of the pixels may differ by more than 32 grey levels (font hinting differs between Chromium builds)."""
    import os
    import shutil

    reference = Path(__file__).parents[1] / "data" / "audit-saliency.png"
    shot = screenshot(saliency_page(tmp_path).resolve().as_uri(), tmp_path / "shot.png")
    if os.environ.get("UNSEG_UPDATE_SCREENSHOTS") or not reference.exists():
        reference.parent.mkdir(exist_ok=True)
        shutil.copy(shot, reference)
        pytest.skip(f"wrote the reference {reference}")
    now = np.asarray(Image.open(shot).convert("L"), dtype=np.int16)
    then = np.asarray(Image.open(reference).convert("L"), dtype=np.int16)
    assert now.shape == then.shape
    assert (np.abs(now - then) > 32).mean() < 0.02


def test_proposals_are_scored_against_the_instances_and_paged_worst_first(tmp_path):
    """Two images, each with two ground-truth instances: image "one" has a proposal on one of them (recall 50 %,
    best-overlap IoU 50 %), image "both" covers both exactly (100 %); one image per page, the worse first."""
    import re

    from unseg.reports.audit import audit_proposals

    left, right = np.zeros((12, 12), dtype=bool), np.zeros((12, 12), dtype=bool)
    left[2:6, 1:5] = True
    right[2:6, 7:11] = True
    (tmp_path / "saliency").mkdir()
    proposals, annotations, images = [], [], []
    for image_id, name in ((1, "both"), (2, "one")):
        Image.fromarray(np.full((12, 12, 3), 90, dtype=np.uint8)).save(tmp_path / f"{name}.png")
        Image.fromarray(np.full((12, 12), 200, np.uint8), mode="L").save(tmp_path / "saliency" / f"{name}.png")
        images.append((image_id, name, str(tmp_path / f"{name}.png")))
        for mask in (left, right):
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": 1, "iscrowd": 0,
                                "segmentation": encode_rle(mask)})
        for mask in ((left, right) if name == "both" else (left,)):
            proposals.append({"image_id": image_id, "segmentation": encode_rle(mask), "score": 0.9, "k": 2})
    # a saliency component (no k: it is no spectral mask) on "one"'s left instance, which it already covers
    proposals.append({"image_id": 2, "segmentation": encode_rle(left), "score": 0.4, "component": 1,
                      "source": "saliency_component"})
    # and a voted mask (no k either: it merges masks of several variants)
    proposals.append({"image_id": 2, "segmentation": encode_rle(left), "score": 0.3, "votes": 3,
                      "vote_variants": {"multik": 2, "multik-672": 1}, "source": "vote"})
    write_json(tmp_path / "proposals.json", proposals)
    page = audit_proposals(images, tmp_path / "proposals.json", tmp_path / "saliency", tmp_path / "audit",
                           ground_truth={"annotations": annotations}, page_size=1)
    text = page.read_text()
    rows = re.findall(r"<tr><td><a href='([^']*)'>(\w+)</a></td><td data-value='([0-9.e+-]+)'>"
                      r"[^<]*</td><td data-value='([0-9.e+-]+)'", text)
    assert [(href, name, float(recall), float(best)) for href, name, recall, best in rows] == [
        ("#one", "one", 50.0, 50.0), ("page-2.html#both", "both", 100.0, 100.0)]
    assert re.findall(r'<section id="(\w+)">', text) == ["one"]
    assert "score 0.40 (saliency component 1, salient 0.00)" in text
    assert "score 0.30 (3 votes: multik ×2, multik-672 ×1, salient 0.00)" in text
    second = (tmp_path / "audit" / "page-2.html").read_text()
    assert re.findall(r'<section id="(\w+)">', second) == ["both"] and "<b>2</b>" in second


def test_per_image_miou_is_under_the_matching_of_all_the_images(tmp_path):
    """Cluster 1 is class 2 and cluster 2 is class 1 everywhere: image a is then perfect (100) although its ids
    differ; image b paints half of its class-1 object with cluster 1 (class 2's): IoU class 1 = 1/2, class 2 = 0
    (predicted, absent), background 1 → mIoU 50."""
    from unseg.core.io import write_label_png
    from unseg.reports.audit import per_image_miou

    truth_a = np.zeros((4, 8), np.uint8)
    truth_a[:, 2:4], truth_a[:, 4:6] = 1, 2
    prediction_a = np.where(truth_a == 1, 2, np.where(truth_a == 2, 1, 0)).astype(np.uint8)
    truth_b = np.zeros((4, 8), np.uint8)
    truth_b[:, 4:8] = 1
    prediction_b = np.zeros((4, 8), np.uint8)
    prediction_b[:, 4:6], prediction_b[:, 6:8] = 2, 1
    (tmp_path / "labels").mkdir()
    truth = {}
    for name, (labels, prediction) in {"a": (truth_a, prediction_a), "b": (truth_b, prediction_b)}.items():
        write_label_png(tmp_path / f"{name}-gt.png", labels)
        write_label_png(tmp_path / "labels" / f"{name}.png", prediction)
        truth[name] = str(tmp_path / f"{name}-gt.png")
    scores = per_image_miou(tmp_path / "labels", truth)
    assert scores == pytest.approx({"a": 100.0, "b": 50.0})


def test_two_saliency_variants_side_by_side_differ_most_first(tmp_path):
    """Variant "one" is the saliency fixture's maps (IoU good 100, half 26/49·100, bad 0); variant "two" swaps
    good and bad: Δ IoU = −100, 0, +100, so good and bad come before half."""
    import re
    import shutil

    from unseg.reports.audit import audit_side_by_side, saliency_view

    saliency_page(tmp_path)
    images = [(1, "good", str(tmp_path / "good.png")), (2, "half", str(tmp_path / "half.png")),
              (3, "bad", str(tmp_path / "bad.png"))]
    truth = {name: str(tmp_path / f"{name}-gt.png") for _, name, _ in images}
    shutil.copytree(tmp_path / "saliency", tmp_path / "two")
    shutil.copy(tmp_path / "saliency" / "bad.png", tmp_path / "two" / "good.png")
    shutil.copy(tmp_path / "saliency" / "good.png", tmp_path / "two" / "bad.png")
    views = [("one", saliency_view(images, tmp_path / "saliency", truth)),
             ("two", saliency_view(images, tmp_path / "two", truth))]
    page = audit_side_by_side(images, views, tmp_path / "side", "one vs two", page_size=2)
    text = page.read_text()
    header = re.findall(r"<th>([^<]+)</th>", text)
    assert header == ["image", "one: IoU", "one: foreground %", "two: IoU", "two: foreground %", "Δ IoU"]
    rows = re.findall(r"<tr><td><a href='[^']*'>(\w+)</a></td>((?:<td[^>]*>[^<]*</td>)+)</tr>", text)
    delta = {name: float(re.findall(r"data-value='([^']+)'", cells)[-1]) for name, cells in rows}
    assert delta == {"good": -100.0, "bad": 100.0, "half": 0.0}
    assert [name for name, _ in rows][2] == "half"  # the images where the variants differ most come first
    assert "one: soft map" in text and "two: soft map" in text
    assert re.findall(r'<section id="(\w+)">', (tmp_path / "side" / "page-2.html").read_text()) == ["half"]


def test_instance_overlaps_read_cocos_polygon_annotations():
    """COCO's own instances are polygons: drawn at the size of the image's masks (the audit of a COCO run failed)."""
    from pycocotools import mask as mask_utils

    from unseg.reports.audit import instance_overlaps

    square = np.zeros((20, 30), dtype=bool)
    square[4:12, 6:16] = True
    polygon = {"image_id": 1, "iscrowd": 0, "segmentation": [[6, 4, 16, 4, 16, 12, 6, 12]]}
    expected = mask_utils.iou([mask_utils.encode(np.asfortranarray(square.astype(np.uint8)))],
                              mask_utils.frPyObjects(polygon["segmentation"], 20, 30), [0])[0, 0]
    found = instance_overlaps([{"segmentation": encode_rle(square)}], [polygon])
    assert found == {"best-overlap IoU": pytest.approx(100 * expected), "recall@0.5": 100.0} and expected > 0.8
    assert instance_overlaps([{"segmentation": encode_rle(~square)}], [polygon])["recall@0.5"] == 0.0
    assert instance_overlaps([], [polygon]) == {"best-overlap IoU": 0.0, "recall@0.5": 0.0}
