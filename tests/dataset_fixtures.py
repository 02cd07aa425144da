"""Tiny datasets in each benchmark's own layout, with the facts a reader of them must recover.

Each ``write_*`` function writes a few small images (a grey background with flat-coloured regions where the labels
are) and their ground truth exactly as the benchmark stores it, and returns what the index must find: image names
by split, the evaluated class ids per image after the format's mapping, instance counts and crowd flags.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from unseg.core.io import encode_rle, write_json, write_label_png

HEIGHT, WIDTH = 40, 56


def _image(path: Path, labels: np.ndarray) -> None:
    """An RGB picture whose colour follows the labels (so features differ where the ground truth does)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(int(labels.sum()) % 997)
    palette = rng.integers(0, 256, size=(256, 3), dtype=np.uint8)
    picture = palette[labels]
    picture = np.clip(picture.astype(int) + rng.integers(-8, 9, size=picture.shape), 0, 255).astype(np.uint8)
    Image.fromarray(picture).save(path)


def _grey_png(path: Path, labels: np.ndarray) -> None:
    """A label PNG as most benchmarks ship it: mode L, the stored ids as grey values."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(labels.astype(np.uint8), mode="L").save(path)


def _blocks(values: list[int], background: int = 0) -> np.ndarray:
    """An (H, W) map: ``background`` with one block per value, side by side."""
    labels = np.full((HEIGHT, WIDTH), background, dtype=np.uint8)
    for index, value in enumerate(values):
        labels[8:32, 4 + 12 * index: 14 + 12 * index] = value
    return labels


def write_voc(root: Path) -> dict[str, Any]:
    """``VOCdevkit/VOC2012`` below ``root``: train a, b; val c; train_aug a, b, d (d's labels only in
    SegmentationClassAug); one image of the detection set (e) in no segmentation split."""
    voc = root / "VOCdevkit" / "VOC2012"
    values = {"a": [15, 15], "b": [12], "c": [1, 20], "d": [7], "e": [3]}
    for name, blocks in values.items():
        labels = _blocks(blocks)
        if name == "a":
            labels[:, 0] = 255  # VOC's void border
        _image(voc / "JPEGImages" / f"{name}.jpg", labels)
        if name in ("a", "b", "c"):
            write_label_png(voc / "SegmentationClass" / f"{name}.png", labels)
            instances = _blocks(list(range(1, len(blocks) + 1)))
            instances[labels == 255] = 255
            write_label_png(voc / "SegmentationObject" / f"{name}.png", instances)
        if name in ("a", "b", "d"):
            _grey_png(voc / "SegmentationClassAug" / f"{name}.png", labels)
    sets = voc / "ImageSets" / "Segmentation"
    sets.mkdir(parents=True)
    (sets / "train.txt").write_text("a\nb\n")
    (sets / "val.txt").write_text("c\n")
    (voc / "ImageSets" / "SegmentationAug").mkdir()
    (voc / "ImageSets" / "SegmentationAug" / "train_aug.txt").write_text("a\nb\nd\n")
    return {"splits": {"train": ["a", "b"], "val": ["c"]}, "train_aug": ["a", "b", "d"],
            "classes": {"a": [0, 15, 255], "b": [0, 12], "c": [0, 1, 20], "d": [0, 7]},
            "instances": {"a": 2, "b": 1, "c": 2}}


def write_coco(root: Path) -> dict[str, Any]:
    """COCO 2017: val2017 with three images (ids 11, 12, 13; 13 without annotations), sparse category ids 1, 18 and
    90; image 11 has a person (polygon), a dog (RLE) and a crowd of people; a COCO20k-style id list keeping 11 and
    13; train2017 with one image."""
    categories = [{"id": 1, "name": "person", "supercategory": "person"},
                  {"id": 18, "name": "dog", "supercategory": "animal"},
                  {"id": 90, "name": "toothbrush", "supercategory": "indoor"}]
    person = np.zeros((HEIGHT, WIDTH), dtype=bool)
    person[5:25, 5:20] = True
    dog = np.zeros((HEIGHT, WIDTH), dtype=bool)
    dog[20:35, 30:50] = True
    crowd = np.zeros((HEIGHT, WIDTH), dtype=bool)
    crowd[0:4, :] = True
    brush = np.zeros((HEIGHT, WIDTH), dtype=bool)
    brush[10:14, 10:40] = True

    def polygon(mask: np.ndarray) -> list[list[float]]:
        rows, cols = np.nonzero(mask)
        top, bottom, left, right = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
        return [[float(left), float(top), float(right), float(top), float(right), float(bottom), float(left),
                 float(bottom)]]

    def annotation(number, image_id, category, mask, segmentation, crowd_flag=0):
        rows, cols = np.nonzero(mask)
        return {"id": number, "image_id": image_id, "category_id": category, "segmentation": segmentation,
                "area": float(mask.sum()), "iscrowd": crowd_flag,
                "bbox": [float(cols.min()), float(rows.min()), float(np.ptp(cols) + 1), float(np.ptp(rows) + 1)]}

    crowd_rle = encode_rle(crowd)
    crowd_rle = {"size": crowd_rle["size"], "counts": _uncompressed_counts(crowd)}
    val = {
        "images": [{"id": 11, "file_name": "000000000011.jpg", "width": WIDTH, "height": HEIGHT},
                   {"id": 12, "file_name": "000000000012.jpg", "width": WIDTH, "height": HEIGHT},
                   {"id": 13, "file_name": "000000000013.jpg", "width": WIDTH, "height": HEIGHT}],
        "annotations": [annotation(1, 11, 1, person, polygon(person)),
                        annotation(2, 11, 18, dog, encode_rle(dog)),
                        annotation(3, 11, 1, crowd, crowd_rle, crowd_flag=1),
                        annotation(4, 12, 90, brush, polygon(brush))],
        "categories": categories,
    }
    train = {"images": [{"id": 21, "file_name": "000000000021.jpg", "width": WIDTH, "height": HEIGHT}],
             "annotations": [annotation(5, 21, 18, dog, encode_rle(dog))], "categories": categories}
    pictures = {11: person * 1 + dog * 2 + crowd * 3, 12: brush * 4, 13: np.zeros((HEIGHT, WIDTH), int), 21: dog * 2}
    for split, coco in (("val2017", val), ("train2017", train)):
        write_json(root / "annotations" / f"instances_{split}.json", coco)
        for image in coco["images"]:
            _image(root / split / image["file_name"], pictures[image["id"]].astype(np.uint8))
    (root / "coco20k.txt").write_text("11\n000000000013.jpg\n")
    return {"names": ["000000000011", "000000000012", "000000000013"], "subset": ["000000000011", "000000000013"],
            "contiguous": {1: 1, 18: 2, 90: 3}, "crowd": [False, False, True, False],
            "semantic": {"000000000011": {"person": int(person.sum() - (person & crowd).sum()),
                                          "dog": int(dog.sum()), "void": int(crowd.sum())}}}


def _uncompressed_counts(mask: np.ndarray) -> list[int]:
    """COCO's uncompressed RLE counts (column-major runs, starting with zeros) of a boolean mask."""
    flat = mask.flatten(order="F").astype(np.int8)
    changes = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    runs = np.diff(bounds).tolist()
    return runs if flat[0] == 0 else [0, *runs]


def write_cocostuff(root: Path) -> dict[str, Any]:
    """COCO-Stuff 164k: two val2017 images whose stuffthingmaps hold person (0), dog (17), banner (91), sky-other
    (156), wood (181) and 255."""
    stored = {"000000000101": _blocks([0, 17], background=156), "000000000102": _blocks([91, 181, 255], 156)}
    for name, labels in stored.items():
        _image(root / "images" / "val2017" / f"{name}.jpg", labels)
        _grey_png(root / "annotations" / "val2017" / f"{name}.png", labels)
    return {"stored": stored,
            # evaluated ids: 27 classes (person 9, animal 7, textile 17, sky 23, solid 24); 171 (person 0, dog 16,
            # banner 80, sky-other 145, wood 170); 80 (person 1, dog 17, stuff 0)
            "expected": {27: {0: 9, 17: 7, 91: 17, 156: 23, 181: 24, 255: 255},
                         171: {0: 0, 17: 16, 91: 80, 156: 145, 181: 170, 255: 255},
                         80: {0: 1, 17: 17, 91: 0, 156: 0, 181: 0, 255: 255}}}


def write_cityscapes(root: Path) -> dict[str, Any]:
    """Cityscapes: one train image (aachen) and one val image (frankfurt), labelIds 0 (unlabeled), 7 (road),
    26 (car), 33 (bicycle)."""
    stored = {("train", "aachen", "aachen_000000_000019"): _blocks([26, 33], background=7),
              ("val", "frankfurt", "frankfurt_000000_000294"): _blocks([0, 26], background=7)}
    for (split, city, name), labels in stored.items():
        _image(root / "leftImg8bit" / split / city / f"{name}_leftImg8bit.png", labels)
        _grey_png(root / "gtFine" / split / city / f"{name}_gtFine_labelIds.png", labels)
    return {"names": {"train": ["aachen_000000_000019"], "val": ["frankfurt_000000_000294"]},
            "expected": {0: 255, 7: 0, 26: 19, 33: 26}}


def write_lip(root: Path) -> dict[str, Any]:
    """LIP as its archives unpack: two val images with parts 0 (background), 2 (hair), 14, 15 (arms), 18 (left
    shoe)."""
    stored = {"100034_483681": _blocks([2, 14, 15]), "100142_449784": _blocks([18, 13])}
    for name, labels in stored.items():
        _image(root / "TrainVal_images" / "val_images" / f"{name}.jpg", labels)
        _grey_png(root / "TrainVal_parsing_annotations" / "val_segmentations" / f"{name}.png", labels)
    return {"stored": stored, "expected": {19: {0: 0, 2: 2, 13: 13, 14: 14, 15: 15, 18: 18},
                                           16: {0: 0, 2: 2, 13: 13, 14: 14, 15: 14, 18: 16},
                                           5: {0: 0, 2: 1, 13: 1, 14: 3, 15: 3, 18: 5}}}


def write_folder(root: Path) -> dict[str, Any]:
    """A user's photos: ``photos/`` with a nested ``trip/day1/`` folder, figure/ground masks (0 / 255) in
    ``masks/`` for two of the three images."""
    figure = _blocks([255])
    _image(root / "photos" / "cat.jpg", figure // 255)
    _image(root / "photos" / "trip" / "day1" / "dog.png", figure // 255)
    _image(root / "photos" / "trip" / "bird.jpeg", figure // 255)
    _grey_png(root / "masks" / "cat.png", figure)
    _grey_png(root / "masks" / "trip" / "day1" / "dog.png", figure)
    return {"names": ["cat", "trip__bird", "trip__day1__dog"], "with_masks": ["cat", "trip__day1__dog"],
            "foreground_pixels": int((figure > 0).sum())}


WRITERS = {"voc": write_voc, "coco": write_coco, "cocostuff": write_cocostuff, "cityscapes": write_cityscapes,
           "lip": write_lip, "folder": write_folder}
