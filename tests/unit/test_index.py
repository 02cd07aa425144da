"""The image index: layouts, splits, verification errors, CSV round trip, COCO ground truth."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from unseg.core.io import ImageReadError, decode_rle, read_label_png
from unseg.data.formats import read_layout
from unseg.data.index import (
    INDEX_COLUMNS,
    build_index,
    collect_instances,
    index_split,
    names_by_id,
    read_index,
    write_index,
)
from unseg.data.synthetic import generate_synthetic_dataset

VOC_CROPS = Path(__file__).resolve().parents[3] / "shared/data/voc2012-val-crops"


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    generate_synthetic_dataset(root, num_images=6, image_size=80, num_classes=3, seed=3)
    return root


def _write_image(path: Path, size: tuple[int, int], fmt: str, colour: tuple[int, int, int] = (90, 120, 30)) -> None:
    Image.new("RGB", size, colour).save(path, format=fmt)


def test_voc_layout_columns_ids_hashes_and_splits(synthetic_root: Path) -> None:
    df = build_index(synthetic_root)
    assert list(df.columns) == list(INDEX_COLUMNS)
    names = sorted(path.stem for path in (synthetic_root / "JPEGImages").glob("*.jpg"))
    assert df["name"].tolist() == names
    assert df["image_id"].tolist() == list(range(1, len(names) + 1))
    assert (df["width"] == 80).all() and (df["height"] == 80).all()

    first = df.iloc[0]
    assert Path(first["path"]).is_absolute()
    assert Path(first["path"]) == (synthetic_root / "JPEGImages" / f"{first['name']}.jpg").absolute()
    assert first["sha256"] == hashlib.sha256(Path(first["path"]).read_bytes()).hexdigest()
    assert Path(first["gt_semantic"]) == (synthetic_root / "SegmentationClass" / f"{first['name']}.png").absolute()
    assert Path(first["gt_instance"]) == (synthetic_root / "SegmentationObject" / f"{first['name']}.png").absolute()

    split_folder = synthetic_root / "ImageSets" / "Segmentation"
    for split in ("train", "val"):
        listed = (split_folder / f"{split}.txt").read_text().split()
        assert df.loc[df["split"] == split, "name"].tolist() == listed
        assert index_split(df, split)["name"].tolist() == listed
    assert len(index_split(df, "all")) == len(df)
    assert names_by_id(df) == {image_id: name for image_id, name in zip(range(1, len(names) + 1), names)}
    with pytest.raises(ValueError, match="no image in split 'test'"):
        index_split(df, "test")

    val_only = build_index(synthetic_root, splits=["val"])
    assert val_only["name"].tolist() == (split_folder / "val.txt").read_text().split()
    assert val_only["image_id"].tolist() == list(range(1, len(val_only) + 1))


def test_loose_images_get_split_all_and_survive_csv_round_trip(tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    _write_image(folder / "0001.png", (40, 30), "PNG")
    _write_image(folder / "b.JPG", (33, 20), "JPEG")
    _write_image(folder / "c.webp", (16, 16), "WEBP")
    (folder / "notes.txt").write_text("not an image")
    _write_image(folder / ".hidden.jpg", (8, 8), "JPEG")

    df = build_index(folder)
    assert df["name"].tolist() == ["0001", "b", "c"]
    assert df["split"].tolist() == ["all", "all", "all"]
    assert df[["width", "height"]].values.tolist() == [[40, 30], [33, 20], [16, 16]]
    assert (df["gt_semantic"] == "").all() and (df["gt_instance"] == "").all()
    assert collect_instances(df, read_layout(folder)) is None

    csv_path = tmp_path / "index" / "images.csv"
    write_index(df, csv_path)
    restored = read_index(csv_path)
    pd.testing.assert_frame_equal(restored, df)
    assert restored.loc[0, "name"] == "0001"


def test_image_dir_and_bare_split_file(tmp_path: Path) -> None:
    images = tmp_path / "pictures"
    images.mkdir()
    for name in ("a", "b", "c"):
        _write_image(images / f"{name}.jpg", (24, 24), "JPEG")
    (tmp_path / "val.txt").write_text("a\nc\n")
    df = build_index(tmp_path, image_dir="pictures")
    assert df["split"].tolist() == ["val", "unassigned", "val"]
    only_val = build_index(tmp_path, image_dir=images, splits=["val"])
    assert only_val["name"].tolist() == ["a", "c"]
    with pytest.raises(ValueError, match="train"):
        build_index(tmp_path, image_dir=images, splits=["train"])


def test_corrupt_and_truncated_images_raise_image_read_error(tmp_path: Path) -> None:
    _write_image(tmp_path / "good.jpg", (32, 32), "JPEG")
    (tmp_path / "x.jpg").write_bytes(b"this is not a jpeg at all" * 10)
    with pytest.raises(ImageReadError, match="x.jpg"):
        build_index(tmp_path)

    truncated_folder = tmp_path / "truncated"
    truncated_folder.mkdir()
    noise = np.random.default_rng(0).integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(truncated_folder / "half.jpg", format="JPEG", quality=95)
    data = (truncated_folder / "half.jpg").read_bytes()
    (truncated_folder / "half.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match="half.jpg"):
        build_index(truncated_folder)


def test_missing_root_and_empty_folder(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match="nowhere"):
        build_index(missing)
    empty = tmp_path / "empty_folder"
    empty.mkdir()
    (empty / "readme.md").write_text("no images here")
    with pytest.raises(ValueError, match="empty_folder"):
        build_index(empty)


def test_coco_ground_truth_from_json_is_rekeyed_to_the_index(synthetic_root: Path) -> None:
    df = build_index(synthetic_root, splits=["val"])
    coco = collect_instances(df, read_layout(synthetic_root))
    assert coco is not None
    assert [image["id"] for image in coco["images"]] == df["image_id"].tolist()
    assert [Path(image["file_name"]).stem for image in coco["images"]] == df["name"].tolist()
    assert [category["name"] for category in coco["categories"]] == ["disc", "square", "triangle"]
    name_of = dict(zip(df["image_id"], df["name"]))
    assert coco["annotations"]
    for annotation in coco["annotations"]:
        instance_map = read_label_png(synthetic_root / "SegmentationObject" / f"{name_of[annotation['image_id']]}.png")
        mask = decode_rle(annotation["segmentation"])
        assert len(np.unique(instance_map[mask])) == 1 and instance_map[mask][0] not in (0, 255)
        assert np.array_equal(mask, instance_map == instance_map[mask][0])


def test_coco_ground_truth_from_pngs_matches_json(synthetic_root: Path, tmp_path: Path) -> None:
    png_only = tmp_path / "png_only"
    shutil.copytree(synthetic_root, png_only, ignore=shutil.ignore_patterns("annotations"))
    from_json = collect_instances(build_index(synthetic_root), read_layout(synthetic_root))
    from_pngs = collect_instances(build_index(png_only), read_layout(png_only))
    assert from_json is not None and from_pngs is not None
    assert [image["id"] for image in from_pngs["images"]] == [image["id"] for image in from_json["images"]]
    assert [image["file_name"] for image in from_pngs["images"]] == [
        image["file_name"] for image in from_json["images"]
    ]
    assert len(from_pngs["annotations"]) == len(from_json["annotations"])
    for derived, stored in zip(from_pngs["annotations"], from_json["annotations"]):
        assert derived["image_id"] == stored["image_id"]
        assert derived["category_id"] == stored["category_id"]
        assert derived["area"] == stored["area"] and derived["bbox"] == stored["bbox"]
        assert np.array_equal(decode_rle(derived["segmentation"]), decode_rle(stored["segmentation"]))
    max_category = max(annotation["category_id"] for annotation in from_json["annotations"])
    assert [category["id"] for category in from_pngs["categories"]] == list(range(1, max_category + 1))
    assert from_pngs["categories"][0]["name"] == "class_1"


def test_voc2012_val_crops() -> None:
    if not (VOC_CROPS / "JPEGImages").is_dir():
        pytest.skip(f"shared data not present: {VOC_CROPS}")
    df = build_index(VOC_CROPS)
    assert len(df) == 14
    assert (df["split"] == "val").all()
    assert (df["gt_semantic"] != "").all() and all(Path(path).is_file() for path in df["gt_semantic"])
    assert (df["gt_instance"] == "").all()
    assert df["name"].tolist() == sorted((VOC_CROPS / "val.txt").read_text().split())
    assert collect_instances(df, read_layout(VOC_CROPS)) is None


def test_a_support_root_joins_the_index_as_its_own_split_without_ground_truth(synthetic_root: Path,
                                                                               tmp_path: Path) -> None:
    from unseg.data.index import run_index, split_names

    support = tmp_path / "extra"
    support.mkdir()
    for stem in ("zebra", "yak"):
        _write_image(support / f"{stem}.jpg", (40, 30), "JPEG")
    (support / "SegmentationClass").mkdir()  # ground truth in a support root is never used
    Image.new("L", (40, 30), 1).save(support / "SegmentationClass" / "yak.png")
    settings = {"unreadable": "error", "support_root": str(support)}
    df = run_index(synthetic_root, tmp_path / "images.csv", tmp_path / "skipped.csv", settings)
    alone = build_index(synthetic_root)
    pd.testing.assert_frame_equal(df.iloc[: len(alone)].reset_index(drop=True), alone)  # the dataset unchanged
    added = df.iloc[len(alone):]
    assert added["name"].tolist() == ["yak", "zebra"] and (added["split"] == "support").all()
    assert added["image_id"].tolist() == [len(alone) + 1, len(alone) + 2]
    assert (added["gt_semantic"] == "").all() and (added["gt_instance"] == "").all()
    assert split_names(read_index(tmp_path / "images.csv"), "support") == {"yak", "zebra"}
    first = next(synthetic_root.glob("JPEGImages/*"))
    shutil.copy(first, support / first.name)
    with pytest.raises(ValueError, match="share a name with a dataset image"):
        run_index(synthetic_root, tmp_path / "images.csv", tmp_path / "skipped.csv", settings)


def _index_settings(**given) -> dict:
    return {"format": "auto", "unreadable": "error", "min_side": 16, **given}


def _photo_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    _write_image(folder / "a.jpg", (40, 32), "JPEG")
    return folder


def test_tiff_gif_and_a_pil_readable_extension_are_indexed_other_files_listed_as_passed_over(tmp_path: Path) -> None:
    from unseg.data.index import run_index

    folder = _photo_folder(tmp_path)
    _write_image(folder / "b.tif", (40, 32), "TIFF", (200, 10, 10))
    frames = [Image.new("RGB", (40, 32), colour) for colour in ((10, 200, 10), (0, 0, 0))]
    frames[0].save(folder / "c.gif", save_all=True, append_images=frames[1:])
    _write_image(folder / "d.ppmfile", (40, 32), "PPM")  # no image extension: PIL identifies it
    (folder / "notes.txt").write_text("not an image")
    df = run_index(folder, tmp_path / "images.csv", tmp_path / "skipped.csv", _index_settings())
    assert df["name"].tolist() == ["a", "b", "c", "d"]
    from unseg.core.io import read_image

    assert tuple(read_image(df.loc[df["name"] == "c", "path"].item())[0, 0]) == (10, 200, 10)  # the GIF's 1st frame
    skipped = pd.read_csv(tmp_path / "skipped.csv")
    assert skipped["path"].tolist() == [str(folder / "notes.txt")]
    assert "not an image" in skipped["reason"].item()


@pytest.mark.parametrize("unreadable", ["error", "skip"])
def test_broken_links_loops_and_tiny_images_are_an_error_or_a_skip_row_naming_the_file(tmp_path: Path,
                                                                                      unreadable: str) -> None:
    from unseg.data.index import run_index

    folder = _photo_folder(tmp_path)
    (folder / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    (folder / "loop1.jpg").symlink_to(folder / "loop2.jpg")
    (folder / "loop2.jpg").symlink_to(folder / "loop1.jpg")
    _write_image(folder / "dot.png", (1, 1), "PNG")
    settings = _index_settings(unreadable=unreadable)
    if unreadable == "error":
        with pytest.raises(ValueError, match="gone.jpg: a broken symbolic link"):
            run_index(folder, tmp_path / "images.csv", tmp_path / "skipped.csv", settings)
        (folder / "gone.jpg").unlink()
        (folder / "loop1.jpg").unlink()
        (folder / "loop2.jpg").unlink()
        with pytest.raises(ImageReadError, match=r"dot.png.* is 1x1 px, smaller than dataset.min_side 16"):
            run_index(folder, tmp_path / "images.csv", tmp_path / "skipped.csv", settings)
        return
    df = run_index(folder, tmp_path / "images.csv", tmp_path / "skipped.csv", settings)
    assert df["name"].tolist() == ["a"]
    reasons = dict(pd.read_csv(tmp_path / "skipped.csv").itertuples(index=False))
    assert sorted(Path(path).name for path in reasons) == ["dot.png", "gone.jpg", "loop1.jpg", "loop2.jpg"]
    assert "broken symbolic link" in reasons[str(folder / "loop1.jpg")]
    assert "smaller than dataset.min_side" in reasons[str((folder / "dot.png").absolute())]


def test_a_label_outside_num_classes_stops_the_index_of_a_voc_like_folder(tmp_path: Path) -> None:
    from unseg.core.io import write_label_png
    from unseg.data.index import run_index

    root = tmp_path / "voc"
    (root / "JPEGImages").mkdir(parents=True)
    (root / "SegmentationClass").mkdir()
    _write_image(root / "JPEGImages" / "a.jpg", (40, 32), "JPEG")
    labels = np.zeros((32, 40), np.uint8)
    labels[:4] = 255  # void is allowed
    labels[10:20, 10:20] = 3
    write_label_png(root / "SegmentationClass" / "a.png", labels)
    run_index(root, tmp_path / "ok.csv", tmp_path / "skipped.csv", _index_settings(num_classes=3),
              truth_dir=tmp_path / "truth")
    labels[0, 0] = 7
    write_label_png(root / "SegmentationClass" / "a.png", labels)
    with pytest.raises(ValueError, match=r"a.png.* holds ids \[7\] outside the class range 0..3"):
        run_index(root, tmp_path / "bad.csv", tmp_path / "skipped.csv", _index_settings(num_classes=3),
                  truth_dir=tmp_path / "truth")
    run_index(root, tmp_path / "unknown.csv", tmp_path / "skipped.csv", _index_settings(),  # no class count: no check
              truth_dir=tmp_path / "truth")
