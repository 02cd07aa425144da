"""Dataset formats: each benchmark's layout is indexed in place, its ground truth read back in evaluated class ids."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

import dataset_fixtures as fixtures
from unseg.config.schema import ConfigError, load_methods, validate_config
from unseg.core.io import decode_rle, read_json, read_label_png, write_json
from unseg.data.formats import DatasetError, read_layout
from unseg.data.index import coco_ground_truth, read_classes, run_index

from helpers import SCHEMA

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"


def index(root: Path, tmp_path: Path, **dataset):
    """Run the index stage on ``root`` with the ``dataset`` section given (schema defaults filled in)."""
    load_methods()
    config = validate_config({"dataset": {"name": "t", "root": str(root), **dataset}}, SCHEMA)
    out = tmp_path / "index"
    df = run_index(root, out / "images.csv", out / "skipped.csv", config["dataset"], resized_dir=out / "resized",
                   truth_dir=out / "ground_truth")
    return df.set_index("name"), out / "ground_truth"


def stored_to_evaluated(df, stored_maps, expected):
    """Every pixel of each indexed ground truth is the expected class of the stored id at that pixel."""
    for name, stored in stored_maps.items():
        evaluated = read_label_png(df.loc[name, "gt_semantic"])
        lookup = np.full(256, -1)
        for stored_id, class_id in expected.items():
            lookup[stored_id] = class_id
        np.testing.assert_array_equal(evaluated, lookup[stored], err_msg=name)


def test_voc_reads_the_split_files_and_builds_instances_from_segmentation_object(tmp_path):
    facts = fixtures.write_voc(tmp_path / "data")
    df, truth = index(tmp_path / "data", tmp_path, format="voc")
    assert sorted(df.index) == ["a", "b", "c"]  # e is in no segmentation split
    assert df["split"].to_dict() == {"a": "train", "b": "train", "c": "val"}
    for name, classes in facts["classes"].items():
        if name in df.index:
            assert sorted(np.unique(read_label_png(df.loc[name, "gt_semantic"])).tolist()) == classes
            assert df.loc[name, "gt_semantic"].endswith(f"SegmentationClass/{name}.png")  # VOC's own, not copied
    classes = read_classes(truth)
    assert classes["names"][0] == "background" and classes["names"][15] == "person" and len(classes["names"]) == 21
    coco = coco_ground_truth(df.reset_index(), truth)
    counts = {name: sum(a["image_id"] == df.loc[name, "image_id"] for a in coco["annotations"]) for name in df.index}
    assert counts == facts["instances"]
    assert {c["id"]: c["name"] for c in coco["categories"]}[15] == "person"
    assert sorted({a["category_id"] for a in coco["annotations"]}) == [1, 12, 15, 20]


def test_voc_train_aug_takes_the_augmented_labels_and_overlapping_splits_are_refused(tmp_path):
    facts = fixtures.write_voc(tmp_path / "data")
    df, _ = index(tmp_path / "data", tmp_path, format="voc", splits=["train_aug", "val"])
    assert sorted(df.index) == sorted([*facts["train_aug"], "c"])
    assert df.loc["d", "gt_semantic"].endswith("SegmentationClassAug/d.png")
    assert sorted(np.unique(read_label_png(df.loc["d", "gt_semantic"])).tolist()) == facts["classes"]["d"]
    with pytest.raises(DatasetError, match="listed in splits 'train' and 'train_aug'"):
        read_layout(tmp_path / "data", {"format": "voc", "splits": ["train", "train_aug"]})
    with pytest.raises(DatasetError, match="no split file for 'trainval'.*ImageSets/Segmentation/trainval.txt"):
        read_layout(tmp_path / "data", {"format": "voc", "splits": ["trainval"]})


def test_coco_keeps_crowd_flags_renumbers_categories_and_reads_a_subset(tmp_path):
    facts = fixtures.write_coco(tmp_path / "data")
    df, truth = index(tmp_path / "data", tmp_path, format="coco")
    assert sorted(df.index) == facts["names"] and set(df["split"]) == {"val2017"}
    coco = coco_ground_truth(df.reset_index(), truth)
    assert [a["iscrowd"] == 1 for a in coco["annotations"]] == facts["crowd"]
    assert [c["name"] for c in coco["categories"]] == ["person", "dog", "toothbrush"]
    assert [a["category_id"] for a in coco["annotations"]] == [facts["contiguous"][c] for c in (1, 18, 1, 90)]
    assert {image["id"] for image in coco["images"]} == set(df["image_id"])  # the index's ids, not COCO's
    assert read_classes(truth)["names"] == ["background", "person", "dog", "toothbrush"]
    assert (df["gt_semantic"] == "").all()  # no semantic maps unless asked for

    agnostic, truth = index(tmp_path / "data", tmp_path / "agnostic", format="coco", classes="agnostic",
                            subset="coco20k.txt")
    assert sorted(agnostic.index) == facts["subset"]
    coco = coco_ground_truth(agnostic.reset_index(), truth)
    assert coco["categories"] == [{"id": 1, "name": "object", "supercategory": "object"}]
    assert {a["category_id"] for a in coco["annotations"]} == {1} and len(coco["annotations"]) == 3


def test_coco_supercategories_number_the_supercategory_fields(tmp_path):
    fixtures.write_coco(tmp_path / "data")
    df, truth = index(tmp_path / "data", tmp_path, format="coco", classes="supercategories", semantic=True)
    coco = coco_ground_truth(df.reset_index(), truth)
    # person (id 1), dog (18) and toothbrush (90): supercategories person, animal, indoor in that order
    assert [(c["id"], c["name"]) for c in coco["categories"]] == [(1, "person"), (2, "animal"), (3, "indoor")]
    assert [a["category_id"] for a in coco["annotations"]] == [1, 2, 1, 3]
    assert read_classes(truth)["names"] == ["background", "person", "animal", "indoor"]
    labels = read_label_png(df.loc["000000000011", "gt_semantic"])
    assert set(np.unique(labels).tolist()) <= {0, 1, 2, 255} and (labels == 2).any()


def test_coco_supercategories_of_the_real_annotation_file():
    path = SHARED / "coco-val500" / "annotations" / "instances_val2017.json"
    if not path.is_file():
        pytest.skip("../shared/data/coco-val500 is absent")
    from unseg.data.formats import coco_category_map

    category_of, kept = coco_category_map(read_json(path)["categories"], "supercategories")
    # COCO 2017's 12 thing supercategories, in the order of their first category id, and how many categories each
    # holds (80 in all)
    sizes = {"person": 1, "vehicle": 8, "outdoor": 5, "animal": 10, "accessory": 5, "sports": 10, "kitchen": 7,
             "food": 10, "furniture": 6, "electronic": 6, "appliance": 5, "indoor": 7}
    assert [c["name"] for c in kept] == list(sizes) and [c["id"] for c in kept] == list(range(1, 13))
    assert [sum(1 for value in category_of.values() if value == c["id"]) for c in kept] == list(sizes.values())
    assert category_of[3] == 2 and category_of[18] == 4 and category_of[59] == 8 and category_of[90] == 12
    with pytest.raises(ValueError, match="no 'supercategory' field"):
        coco_category_map([{"id": 1, "name": "thing"}], "supercategories")


def test_coco_semantic_maps_are_rasterised_with_crowd_void(tmp_path):
    facts = fixtures.write_coco(tmp_path / "data")
    df, _ = index(tmp_path / "data", tmp_path, format="coco", semantic=True)
    labels = read_label_png(df.loc["000000000011", "gt_semantic"])
    counts = facts["semantic"]["000000000011"]
    assert (labels == 1).sum() == counts["person"] and (labels == 2).sum() == counts["dog"]
    assert (labels == 255).sum() == counts["void"]
    assert (read_label_png(df.loc["000000000013", "gt_semantic"]) == 0).all()  # an image without annotations


def test_coco_problems_are_errors_or_reported_skips(tmp_path):
    fixtures.write_coco(tmp_path / "data")
    (tmp_path / "data" / "val2017" / "000000000012.jpg").unlink()
    with pytest.raises(DatasetError, match="000000000012.jpg.*image is missing"):
        index(tmp_path / "data", tmp_path, format="coco")
    df, _ = index(tmp_path / "data", tmp_path, format="coco", unreadable="skip")
    assert "000000000012" not in df.index
    skipped = (tmp_path / "index" / "skipped.csv").read_text()
    assert "000000000012.jpg" in skipped and "image is missing" in skipped

    coco_file = tmp_path / "data" / "annotations" / "instances_val2017.json"
    coco = read_json(coco_file)
    coco["annotations"].append({**coco["annotations"][0], "id": 99, "image_id": 404})
    write_json(coco_file, coco)
    with pytest.raises(DatasetError, match="annotation 99 references image id 404"):
        index(tmp_path / "data", tmp_path, format="coco")
    coco["images"].append(dict(coco["images"][0]))
    write_json(coco_file, coco)
    with pytest.raises(DatasetError, match="lists image id 11 twice"):
        read_layout(tmp_path / "data", {"format": "coco"})


@pytest.mark.parametrize("classes", [27, 171, 80])
def test_cocostuff_maps_stored_ids_to_the_evaluated_classes(tmp_path, classes):
    facts = fixtures.write_cocostuff(tmp_path / "data")
    df, truth = index(tmp_path / "data", tmp_path, format="cocostuff", classes=classes)
    stored_to_evaluated(df, facts["stored"], facts["expected"][classes])
    names = read_classes(truth)
    assert len(names["names"]) == {27: 27, 171: 171, 80: 81}[classes]
    assert names["has_background"] is (classes == 80)
    assert names["names"][facts["expected"][classes][0]] == "person"  # stored id 0 is COCO's person


def test_cocostuff_refuses_an_id_outside_its_range(tmp_path):
    fixtures.write_cocostuff(tmp_path / "data")
    bad = np.full((fixtures.HEIGHT, fixtures.WIDTH), 200, dtype=np.uint8)
    Image.fromarray(bad, mode="L").save(tmp_path / "data" / "annotations" / "val2017" / "000000000101.png")
    with pytest.raises(DatasetError, match=r"000000000101.png.*ids \[200\] outside the class range 0..181"):
        index(tmp_path / "data", tmp_path, format="cocostuff")
    df, _ = index(tmp_path / "data", tmp_path, format="cocostuff", unreadable="skip")
    assert list(df.index) == ["000000000102"]


def test_cityscapes_removes_the_void_ids(tmp_path):
    facts = fixtures.write_cityscapes(tmp_path / "data")
    df, truth = index(tmp_path / "data", tmp_path, format="cityscapes")
    assert {split: sorted(df.index[df["split"] == split]) for split in ("train", "val")} == facts["names"]
    stored = {name: np.asarray(Image.open(next((tmp_path / "data" / "gtFine").rglob(f"{name}_gtFine_labelIds.png"))))
              for name in df.index}
    stored_to_evaluated(df, stored, facts["expected"])
    names = read_classes(truth)["names"]
    assert len(names) == 27 and names[0] == "road" and names[19] == "car" and names[26] == "bicycle"


@pytest.mark.parametrize("classes", [19, 16, 5])
def test_lip_merges_parts(tmp_path, classes):
    facts = fixtures.write_lip(tmp_path / "data")
    df, truth = index(tmp_path / "data", tmp_path, format="lip", classes=classes, splits=["val"])
    stored_to_evaluated(df, facts["stored"], facts["expected"][classes])
    assert len(read_classes(truth)["names"]) == classes + 1


def test_folder_is_recursive_with_names_by_relative_path_and_binary_masks(tmp_path):
    facts = fixtures.write_folder(tmp_path / "data")
    df, truth = index(tmp_path / "data", tmp_path, format="folder", images="photos", masks="masks")
    assert sorted(df.index) == facts["names"]
    assert sorted(df.index[df["gt_semantic"] != ""]) == facts["with_masks"]
    for name in facts["with_masks"]:
        labels = read_label_png(df.loc[name, "gt_semantic"])
        assert set(np.unique(labels)) == {0, 1} and (labels == 1).sum() == facts["foreground_pixels"]
    assert read_classes(truth)["names"] == ["background", "foreground"]
    assert not (truth / "instances.json").exists()


def test_folder_with_masks_inside_the_image_folder_does_not_index_the_masks(tmp_path):
    fixtures.write_folder(tmp_path / "data")
    shutil.move(tmp_path / "data" / "masks", tmp_path / "data" / "photos" / "masks")
    df, _ = index(tmp_path / "data" / "photos", tmp_path, format="folder", masks="masks")
    assert sorted(df.index) == ["cat", "trip__bird", "trip__day1__dog"]


def test_a_format_setting_is_checked_by_the_formats_own_schema_branch():
    load_methods()
    with pytest.raises(ConfigError, match=r"dataset.classes: 26 is not one of \[27, 171, 80\]"):
        validate_config({"dataset": {"name": "x", "root": ".", "format": "cocostuff", "classes": 26}}, SCHEMA)
    with pytest.raises(ConfigError, match=r"format 'voc' takes \[\]"):
        validate_config({"dataset": {"name": "x", "root": ".", "format": "voc", "classes": 27}}, SCHEMA)
    config = validate_config({"dataset": {"name": "x", "root": "."}}, SCHEMA)
    assert config["dataset"]["format"] == "auto" and config["dataset"]["recursive"] is False


def test_the_shared_horses_are_a_folder_with_binary_masks(tmp_path):
    horses = SHARED / "weizmann-horse"
    if not (horses / "images").is_dir():
        pytest.skip(f"shared data not present: {horses}")
    layout = read_layout(horses, {"format": "folder", "images": "images", "masks": "masks", "mask_kind": "binary"})
    assert len(layout.images) == 328 and len(layout.semantic) == 328
    stored = read_label_png(layout.semantic["horse001"])
    assert set(np.unique(stored)) <= {0, 255} and layout.evaluated_labels("horse001").max() == 1
    np.testing.assert_array_equal(layout.evaluated_labels("horse001"), (stored > 0).astype(np.uint8))


def test_the_shared_voc_crops_read_as_voc(tmp_path):
    crops = SHARED / "voc2012-val-crops"
    if not (crops / "JPEGImages").is_dir():
        pytest.skip(f"shared data not present: {crops}")
    layout = read_layout(crops, {"format": "voc", "splits": ["val"]})
    assert len(layout.images) == 14 and not layout.problems
    labels = [np.unique(read_label_png(path)) for path in layout.semantic.values()]
    assert all(set(values.tolist()) <= {*range(21), 255} for values in labels)


def test_rle_of_the_rasterised_dog_equals_pycocotools_decode(tmp_path):
    fixtures.write_coco(tmp_path / "data")
    df, truth = index(tmp_path / "data", tmp_path, format="coco", semantic=True)
    coco = coco_ground_truth(df.reset_index(), truth)
    dog = next(a for a in coco["annotations"] if a["category_id"] == 2)
    mask = decode_rle(dog["segmentation"])
    rle = {"size": dog["segmentation"]["size"], "counts": dog["segmentation"]["counts"].encode("ascii")}
    np.testing.assert_array_equal(mask, mask_utils.decode(rle).astype(bool))
    labels = read_label_png(df.loc["000000000011", "gt_semantic"])
    assert np.array_equal(labels == 2, mask)


def test_a_dataset_without_background_is_scored_with_its_own_class_names_and_no_foreground(tmp_path):
    """Cityscapes: evaluate names the 27 classes from classes.json; the proposals report has no object or
    connected-component scores, since every pixel is some class."""
    from unseg.config.schema import variant_settings
    from unseg.core.io import write_label_png
    from unseg.data.index import write_index
    from unseg.stages.evaluate import run_evaluation
    from unseg.stages.proposals import evaluate_proposals

    fixtures.write_cityscapes(tmp_path / "data")
    df, truth = index(tmp_path / "data", tmp_path, format="cityscapes")
    write_index(df.reset_index(), tmp_path / "images.csv")
    predictions, saliency = tmp_path / "predict", tmp_path / "saliency"
    saliency.mkdir()
    for name, path in df["gt_semantic"].items():
        labels = read_label_png(path)
        write_label_png(predictions / f"{name}.png", np.where(labels == 255, 0, labels))
        Image.fromarray(np.zeros(labels.shape, np.uint8)).save(saliency / f"{name}.png")
    write_json(tmp_path / "proposals.json", [])
    write_json(predictions / "instances.json", [])
    settings = variant_settings("evaluate", {"predictions": "x", "split": "all"}, SCHEMA)
    metrics = run_evaluation(tmp_path / "images.csv", truth, predictions, tmp_path / "proposals.json",
                             tmp_path / "metrics.json", tmp_path / "report.md", settings, saliency_dir=saliency)
    assert {"road", "car", "bicycle"} <= set(metrics["per_class_iou"]) and "background" not in metrics["per_class_iou"]
    assert metrics["per_class_iou"]["car"] == 100.0 and "object_segmentation" not in metrics
    report = evaluate_proposals(tmp_path / "images.csv", truth, tmp_path / "proposals.json", saliency,
                                tmp_path / "p.json", tmp_path / "p.md")
    assert "object_iou" not in report and "instance_ground_truth" not in report


def test_a_mask_of_another_size_stops_the_index_or_is_listed_as_skipped(tmp_path):
    fixtures.write_folder(tmp_path / "data")
    small = np.zeros((fixtures.HEIGHT // 2, fixtures.WIDTH), dtype=np.uint8)
    Image.fromarray(small, mode="L").save(tmp_path / "data" / "masks" / "cat.png")
    with pytest.raises(Exception, match=r"masks/cat.png' is 56x20, its image .*photos/cat.jpg' is 56x40"):
        index(tmp_path / "data", tmp_path, format="folder", images="photos", masks="masks")
    df, _ = index(tmp_path / "data", tmp_path, format="folder", images="photos", masks="masks", unreadable="skip")
    assert "cat" not in df.index and len(df) == 2
    skipped = (tmp_path / "index" / "skipped.csv").read_text()
    assert "photos/cat.jpg" in skipped and "56x20" in skipped
