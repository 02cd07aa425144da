"""The synthetic VOC-layout dataset: files, determinism, label/annotation consistency, ignore band, splits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from unseg.core.io import IGNORE_LABEL, decode_rle, read_image, read_json, read_label_png
from unseg.data.synthetic import CATEGORY_NAMES, generate_synthetic_dataset

NUM_IMAGES = 6
IMAGE_SIZE = 96
NUM_CLASSES = 3


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("synthetic")
    summary = generate_synthetic_dataset(
        root, num_images=NUM_IMAGES, image_size=IMAGE_SIZE, num_classes=NUM_CLASSES, max_objects=4, seed=7
    )
    return root, summary


def _names(root: Path) -> list[str]:
    return sorted(path.stem for path in (root / "JPEGImages").glob("*.jpg"))


def _annotations_by_image(coco: dict) -> dict[int, list[dict]]:
    by_image: dict[int, list[dict]] = {image["id"]: [] for image in coco["images"]}
    for annotation in sorted(coco["annotations"], key=lambda annotation: annotation["id"]):
        by_image[annotation["image_id"]].append(annotation)
    return by_image


def test_layout_images_and_summary(dataset: tuple[Path, dict]) -> None:
    root, summary = dataset
    names = _names(root)
    assert names == [f"synth_{index:04d}" for index in range(NUM_IMAGES)]
    for name in names:
        with Image.open(root / "JPEGImages" / f"{name}.jpg") as image:
            assert image.format == "JPEG" and image.mode == "RGB" and image.size == (IMAGE_SIZE, IMAGE_SIZE)
        for folder in ("SegmentationClass", "SegmentationObject"):
            with Image.open(root / folder / f"{name}.png") as label_image:
                assert label_image.mode == "P" and label_image.size == (IMAGE_SIZE, IMAGE_SIZE)

    coco = read_json(root / "annotations" / "instances.json")
    assert [image["id"] for image in coco["images"]] == list(range(1, NUM_IMAGES + 1))
    assert [image["file_name"] for image in coco["images"]] == [f"JPEGImages/{name}.jpg" for name in names]
    assert coco["categories"] == [
        {"id": index + 1, "name": CATEGORY_NAMES[index], "supercategory": "shape"} for index in range(NUM_CLASSES)
    ]
    assert [annotation["id"] for annotation in coco["annotations"]] == list(range(1, len(coco["annotations"]) + 1))

    assert summary["num_images"] == NUM_IMAGES
    assert summary["num_instances"] == len(coco["annotations"])
    for index in range(NUM_CLASSES):
        expected = sum(annotation["category_id"] == index + 1 for annotation in coco["annotations"])
        assert summary["instances_per_class"][CATEGORY_NAMES[index]] == expected


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path) -> None:
    arguments = dict(num_images=3, image_size=64, num_classes=3)
    generate_synthetic_dataset(tmp_path / "a", seed=11, **arguments)
    generate_synthetic_dataset(tmp_path / "b", seed=11, **arguments)
    generate_synthetic_dataset(tmp_path / "c", seed=12, **arguments)
    relative_files = [
        f"{folder}/synth_{index:04d}.png"
        for folder in ("SegmentationClass", "SegmentationObject")
        for index in range(3)
    ] + ["annotations/instances.json", "ImageSets/Segmentation/val.txt"]
    for relative in relative_files:
        assert (tmp_path / "a" / relative).read_bytes() == (tmp_path / "b" / relative).read_bytes(), relative
    assert np.array_equal(
        read_image(tmp_path / "a/JPEGImages/synth_0000.jpg"), read_image(tmp_path / "b/JPEGImages/synth_0000.jpg")
    )
    differing = [
        relative for relative in relative_files[:6]
        if (tmp_path / "a" / relative).read_bytes() != (tmp_path / "c" / relative).read_bytes()
    ]
    assert differing, "a different seed must give different label maps"


def test_rle_equals_instance_png_and_class_matches(dataset: tuple[Path, dict]) -> None:
    root, _ = dataset
    coco = read_json(root / "annotations" / "instances.json")
    by_image = _annotations_by_image(coco)
    for image in coco["images"]:
        name = Path(image["file_name"]).stem
        instance_map = read_label_png(root / "SegmentationObject" / f"{name}.png")
        semantic_map = read_label_png(root / "SegmentationClass" / f"{name}.png")
        annotations = by_image[image["id"]]
        instance_ids = sorted(set(np.unique(instance_map).tolist()) - {0, IGNORE_LABEL})
        assert instance_ids == list(range(1, len(annotations) + 1))
        for instance_id, annotation in enumerate(annotations, start=1):
            mask = decode_rle(annotation["segmentation"])
            assert mask.shape == (IMAGE_SIZE, IMAGE_SIZE)
            assert np.array_equal(mask, instance_map == instance_id)
            assert annotation["area"] == int(mask.sum())
            assert annotation["area"] >= 0.01 * IMAGE_SIZE * IMAGE_SIZE
            assert annotation["iscrowd"] == 0
            ys, xs = np.nonzero(mask)
            assert annotation["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
            assert np.all(semantic_map[mask] == annotation["category_id"])
        # The two PNGs agree on background, objects and the ignore band.
        assert np.array_equal(semantic_map == 0, instance_map == 0)
        assert np.array_equal(semantic_map == IGNORE_LABEL, instance_map == IGNORE_LABEL)


def test_ignore_band_separates_labels_and_is_thin(dataset: tuple[Path, dict]) -> None:
    root, _ = dataset
    cross = ndimage.generate_binary_structure(2, 1)
    for name in _names(root):
        instance_map = read_label_png(root / "SegmentationObject" / f"{name}.png")
        band = instance_map == IGNORE_LABEL
        objects = (instance_map != 0) & ~band
        assert band.any() and objects.any()
        # No two 4-neighbours carry different non-ignore labels: background never touches an object, nor an
        # object another object, without the band in between.
        for shifted_a, shifted_b in (
            (instance_map[:, :-1], instance_map[:, 1:]),
            (instance_map[:-1, :], instance_map[1:, :]),
        ):
            differ = (shifted_a != shifted_b) & (shifted_a != IGNORE_LABEL) & (shifted_b != IGNORE_LABEL)
            assert not differ.any(), name
        # Thin: every band pixel lies within 2 px of a labelled object pixel (the band is 1 px wide below 192 px
        # images; where an occluded object meets its occluder and the background, the two bands add up).
        assert not (band & ~ndimage.binary_dilation(objects, structure=cross, iterations=2)).any(), name
        # So the band rings every object: no pixel just outside an object is background.
        outer_ring = ndimage.binary_dilation(objects, structure=cross) & (instance_map == 0)
        assert not outer_ring.any(), name


def test_objects_are_salient_against_background(dataset: tuple[Path, dict]) -> None:
    root, _ = dataset
    for name in _names(root):
        image = read_image(root / "JPEGImages" / f"{name}.jpg").astype(np.int16)
        semantic_map = read_label_png(root / "SegmentationClass" / f"{name}.png")
        chroma = image.max(axis=2) - image.min(axis=2)  # (H, W) int16
        background_chroma = chroma[semantic_map == 0].mean()
        object_chroma = chroma[(semantic_map != 0) & (semantic_map != IGNORE_LABEL)].mean()
        assert object_chroma > background_chroma + 40, name


def test_split_files_partition_the_names(dataset: tuple[Path, dict]) -> None:
    root, summary = dataset
    split_folder = root / "ImageSets" / "Segmentation"
    train = (split_folder / "train.txt").read_text().split()
    val = (split_folder / "val.txt").read_text().split()
    trainval = (split_folder / "trainval.txt").read_text().split()
    names = _names(root)
    assert trainval == names
    assert train == sorted(train) and val == sorted(val)
    assert not set(train) & set(val)
    assert sorted(train + val) == names
    assert len(val) == NUM_IMAGES // 2 == summary["num_val"]


def test_six_classes_and_argument_checks(tmp_path: Path) -> None:
    summary = generate_synthetic_dataset(tmp_path / "six", num_images=4, image_size=64, num_classes=6, seed=1)
    assert list(summary["instances_per_class"]) == list(CATEGORY_NAMES[:6])
    coco = read_json(tmp_path / "six" / "annotations" / "instances.json")
    assert {annotation["category_id"] for annotation in coco["annotations"]} <= set(range(1, 7))
    with pytest.raises(ValueError, match="num_classes"):
        generate_synthetic_dataset(tmp_path / "bad", num_images=1, num_classes=7)
