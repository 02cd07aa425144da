"""Images as people save them: every format is read upright with the right values, and a file that cannot be read
stops the index naming it, or is skipped and listed when the config says so (issue 17, bad inputs)."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from unseg.core.io import (
    ImageReadError,
    decode_rle,
    encode_rle,
    image_size,
    read_image,
    read_label_png,
    write_json,
    write_label_png,
)
from unseg.data.formats import read_layout
from unseg.data.index import build_index, collect_instances, resample_labels, run_index, working_size
from unseg.features.extract import extract_features
from unseg.features.store import FeatureStore

from workflow_helpers import TINY, snakemake


def marked_picture(height=20, width=30) -> np.ndarray:
    """(H, W, 3) uint8 with a distinct colour in each corner, so that any rotation or flip shows."""
    picture = np.full((height, width, 3), 90, dtype=np.uint8)
    picture[:4, :4] = (255, 0, 0)
    picture[:4, -4:] = (0, 255, 0)
    picture[-4:, :4] = (0, 0, 255)
    return picture


def save_with_orientation(path, picture: np.ndarray, orientation: int) -> None:
    """Save the *stored* pixels ``picture`` with an EXIF orientation tag (lossless PNG)."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(picture).save(path, exif=exif)


def test_16_bit_grayscale_png_is_scaled_not_saturated(tmp_path):
    values = np.array([[0, 257, 25700], [32896, 51400, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    pixels = read_image(tmp_path / "deep.png")
    assert pixels.shape == (2, 3, 3) and pixels.dtype == np.uint8
    np.testing.assert_array_equal(pixels[..., 0], [[0, 1, 100], [128, 200, 255]])
    assert (pixels[..., 0] == pixels[..., 2]).all()


@pytest.mark.parametrize("orientation,upright", [
    (1, lambda p: p),
    (3, lambda p: np.rot90(p, 2)),
    (6, lambda p: np.rot90(p, -1)),  # "rotate 90° clockwise to display": a phone held upright
    (8, lambda p: np.rot90(p, 1)),
    (2, lambda p: p[:, ::-1]),
])
def test_exif_oriented_photos_are_read_upright(tmp_path, orientation, upright):
    stored = marked_picture()
    save_with_orientation(tmp_path / "phone.png", stored, orientation)
    expected = upright(stored)
    np.testing.assert_array_equal(read_image(tmp_path / "phone.png"), expected)
    assert image_size(tmp_path / "phone.png") == expected.shape[:2]


def test_the_index_and_the_features_see_the_upright_photo(tmp_path):
    (tmp_path / "data").mkdir()
    save_with_orientation(tmp_path / "data" / "phone.png", marked_picture(32, 48), 6)  # displays 32 wide, 48 high
    labels = np.zeros((48, 32), dtype=np.uint8)  # ground truth drawn on the picture the user sees
    (tmp_path / "data" / "SegmentationClass").mkdir()
    write_label_png(tmp_path / "data" / "SegmentationClass" / "phone.png", labels)
    index = build_index(tmp_path / "data")
    assert (index.loc[0, "width"], index.loc[0, "height"]) == (32, 48)
    extract_features(index.path.tolist(), index.name.tolist(), index.image_id.tolist(), tmp_path / "f.zarr",
                     backbone="dino_vits16", weights="random", resolution=32, facets=["keys"], progress=False,
                     workers=0)
    assert FeatureStore(tmp_path / "f.zarr").geometry("phone").original_size == (48, 32)


def encoded(picture: np.ndarray, mode: str, fmt: str, **save) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(picture).convert(mode).save(buffer, format=fmt, **save)
    return buffer.getvalue()


@pytest.mark.parametrize("mode,fmt", [("L", "PNG"), ("LA", "PNG"), ("P", "PNG"), ("RGBA", "PNG"), ("CMYK", "JPEG"),
                                      ("I", "TIFF"), ("1", "PNG")])
def test_every_common_mode_reads_as_rgb_of_the_same_size(tmp_path, mode, fmt):
    picture = marked_picture()
    (tmp_path / f"x.{fmt.lower()}").write_bytes(encoded(picture, mode, fmt))
    pixels = read_image(tmp_path / f"x.{fmt.lower()}")
    assert pixels.shape == (20, 30, 3) and pixels.dtype == np.uint8
    reference = np.asarray(Image.fromarray(picture).convert(mode).convert("RGB"), dtype=np.int16)
    if mode in ("L", "LA", "I", "1"):  # gray values as PIL's own luminance
        assert np.abs(pixels.astype(np.int16) - reference).max() <= 1
    if mode in ("P", "RGBA"):  # colours kept, alpha dropped
        assert tuple(pixels[0, 0]) == (255, 0, 0) and tuple(pixels[0, -1]) == (0, 255, 0)
    if mode == "CMYK":  # lossy JPEG: colours close, corners still distinct
        assert pixels[1, 1, 0] > 200 and pixels[1, -2, 1] > 200 and pixels[-2, 1, 2] > 200


def test_palette_png_with_transparency_keeps_its_colours(tmp_path):
    image = Image.fromarray(marked_picture()).convert("P")
    image.info["transparency"] = 0
    image.save(tmp_path / "t.png", transparency=0)
    assert tuple(read_image(tmp_path / "t.png")[0, 0]) == (255, 0, 0)


BAD_FILES = {
    "empty.jpg": b"",
    "text.jpg": b"this is a note, not a photo\n",
    "truncated.jpg": encoded(marked_picture(64, 64), "RGB", "JPEG")[:300],
    "corrupt.png": encoded(marked_picture(), "RGB", "PNG")[:40] + b"\x00" * 200,
}


def photo_folder(folder, bad: dict[str, bytes]):
    folder.mkdir()
    for index in range(2):
        Image.fromarray(marked_picture()).save(folder / f"good{index}.png")
    for name, data in bad.items():
        (folder / name).write_bytes(data)
    return folder


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_an_unreadable_file_stops_the_index_naming_it(tmp_path, name):
    folder = photo_folder(tmp_path / "photos", {name: BAD_FILES[name]})
    with pytest.raises(ImageReadError, match=name):
        build_index(folder)


def test_skipping_unreadable_files_lists_each_and_indexes_the_rest(tmp_path):
    folder = photo_folder(tmp_path / "photos", BAD_FILES)
    df = run_index(folder, tmp_path / "images.csv", tmp_path / "skipped.csv", {"unreadable": "skip"})
    assert df["name"].tolist() == ["good0", "good1"] and df["image_id"].tolist() == [1, 2]
    skipped = pd.read_csv(tmp_path / "skipped.csv")
    assert sorted(skipped["path"].map(lambda p: p.rsplit("/", 1)[-1])) == sorted(BAD_FILES)
    assert all("cannot read image" in reason for reason in skipped["reason"])
    with pytest.raises(ImageReadError):
        run_index(folder, tmp_path / "x.csv", tmp_path / "y.csv", {"unreadable": "error"})
    assert not (tmp_path / "x.csv").exists()


def test_ground_truth_of_another_size_is_refused_or_skipped(tmp_path):
    folder = tmp_path / "voc"
    (folder / "JPEGImages").mkdir(parents=True)
    (folder / "SegmentationClass").mkdir()
    for name, size in (("fits", (20, 30)), ("wrong", (10, 30))):
        Image.fromarray(marked_picture()).save(folder / "JPEGImages" / f"{name}.png")
        write_label_png(folder / "SegmentationClass" / f"{name}.png", np.zeros(size, dtype=np.uint8))
    with pytest.raises(ImageReadError, match=r"SegmentationClass/wrong.png' is 30x10, its image .* is 30x20"):
        build_index(folder)
    skipped = []
    assert build_index(folder, skipped=skipped)["name"].tolist() == ["fits"]
    assert skipped[0]["path"].endswith("wrong.png")


def test_a_folder_with_nothing_readable_is_an_error_not_an_empty_index(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images"):
        build_index(tmp_path / "empty")
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(b"")
    with pytest.raises(ValueError, match="no readable image"):
        build_index(folder, skipped=[])


def test_the_workflow_skips_unreadable_files_and_downscales_large_ones_when_configured(tmp_path):
    folder = photo_folder(tmp_path / "photos", {"empty.jpg": b""})
    Image.fromarray(marked_picture(40, 60)).save(folder / "large.png")  # 2400 pixels, over a budget of 1024
    config = yaml.safe_load(TINY.read_text())
    config["dataset"] = {"name": "photos", "root": str(folder), "unreadable": "skip", "max_pixels": 1024}
    snakemake(tmp_path, config, "results/photos/index/images.csv")
    index = pd.read_csv(tmp_path / "results/photos/index/images.csv").set_index("name")
    assert len(index) == 3
    assert pd.read_csv(tmp_path / "results/photos/index/skipped.csv")["path"].str.endswith("empty.jpg").all()
    log = (tmp_path / "logs/photos/index.log").read_text()
    assert "1 skipped" in log and "1 downscaled to at most 1024 pixels" in log
    copy = tmp_path / "results/photos/index/resized/large.png"
    assert index.loc["large", "path"] == str(copy) and index.loc["large", "source_path"] == str(folder / "large.png")
    assert (index.loc["large", ["height", "width", "source_height", "source_width"]].tolist() == [26, 39, 40, 60])
    assert read_image(copy).shape == (26, 39, 3)
    assert (index.loc["good0", "path"] == index.loc["good0", "source_path"])  # within the budget: read in place


def test_working_size_is_the_largest_within_the_budget_at_the_same_aspect_ratio():
    assert working_size(3000, 4000, 1_000_000) == (866, 1154)  # s = sqrt(1e6 / 12e6) = 0.288675...
    assert working_size(300, 400, 30_000) == (150, 200)  # s = 1/2 exactly
    assert working_size(20, 30, 600) == (20, 30)  # within the budget: unchanged
    for height, width, budget in ((4001, 3, 1024), (7, 100_003, 5000), (6000, 8000, 16_777_216), (1, 9999, 1024)):
        resized = working_size(height, width, budget)
        assert resized[0] * resized[1] <= budget
        assert abs(resized[1] / resized[0] - width / height) <= width / height / min(resized) + 1e-12
        assert (resized[0] + 1) * (resized[1] + 1) > budget  # one more row and column would not fit


def boxed_photo(height: int, width: int, box: tuple[int, int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """A grey (H, W, 3) picture with a red box (top, left, bottom, right) and its (H, W) uint8 label map."""
    top, left, bottom, right = box
    picture = np.full((height, width, 3), 120, dtype=np.uint8)
    picture[top:bottom, left:right] = (230, 20, 20)
    labels = np.zeros((height, width), dtype=np.uint8)
    labels[top:bottom, left:right] = 1
    return picture, labels


@pytest.mark.parametrize("size,budget", [((300, 400), 30_000), ((301, 399), 20_000), ((97, 1003), 9_000)])
def test_a_large_photo_and_its_ground_truth_are_downscaled_onto_the_same_pixels(tmp_path, size, budget):
    height, width = size
    picture, labels = boxed_photo(height, width, (height // 5, width // 4, height * 3 // 5, width * 2 // 3))
    root = tmp_path / "voc"
    for folder in ("JPEGImages", "SegmentationClass", "SegmentationObject"):
        (root / folder).mkdir(parents=True)
    Image.fromarray(picture).save(root / "JPEGImages" / "big.png")
    Image.fromarray(picture[:10, :12]).save(root / "JPEGImages" / "small.png")
    write_label_png(root / "SegmentationClass" / "big.png", labels)
    write_label_png(root / "SegmentationObject" / "big.png", labels)
    df = build_index(root, max_pixels=budget, resized_dir=tmp_path / "resized").set_index("name")
    big = df.loc["big"]
    working = working_size(height, width, budget)
    assert (big.height, big.width) == working and (big.source_height, big.source_width) == size
    assert big.path == str(tmp_path / "resized" / "big.png") and big.source_path == str(root / "JPEGImages" / "big.png")
    assert big.gt_semantic == str(tmp_path / "resized" / "SegmentationClass" / "big.png")
    assert df.loc["small", "path"] == df.loc["small", "source_path"] and df.loc["small", "width"] == 12
    copy, truth = read_image(big.path), read_label_png(big.gt_semantic)
    assert copy.shape == (*working, 3) and truth.shape == working
    # the box in the copy (red pixels) is where the resampled ground truth says it is, to one boundary pixel
    red = (copy[..., 0] > 175) & (copy[..., 1] < 75)
    assert np.logical_xor(red, truth == 1).sum() <= 2 * (working[0] + working[1]) * 0.5
    assert (red & (truth == 1)).sum() / (red | (truth == 1)).sum() > 0.9
    # the ground truth equals the source's, sampled at the copy's pixel centres mapped back onto the source
    rows = np.minimum(((np.arange(working[0]) + 0.5) * height / working[0]).astype(int), height - 1)
    cols = np.minimum(((np.arange(working[1]) + 0.5) * width / working[1]).astype(int), width - 1)
    np.testing.assert_array_equal(truth, labels[np.ix_(rows, cols)])
    # the instance ground truth built from the PNGs is in the copy's coordinates
    coco = collect_instances(df.reset_index(), read_layout(root))
    image = next(item for item in coco["images"] if item["id"] == big.image_id)
    assert (image["height"], image["width"]) == working and image["file_name"] == "JPEGImages/big.png"
    assert coco["annotations"][0]["area"] == int((truth == 1).sum())


def test_instance_annotations_drawn_on_a_large_photo_move_onto_its_copy(tmp_path):
    picture, labels = boxed_photo(200, 300, (40, 60, 120, 210))
    root = tmp_path / "data"
    (root / "annotations").mkdir(parents=True)
    Image.fromarray(picture).save(root / "big.png")
    polygon = [60, 40, 210, 40, 210, 120, 60, 120]  # x, y corners of the box
    rle = encode_rle(labels == 1)
    write_json(root / "annotations" / "instances.json", {
        "images": [{"id": 7, "file_name": "big.png", "width": 300, "height": 200}],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 1, "segmentation": [polygon], "area": 12000, "iscrowd": 0,
             "bbox": [60, 40, 150, 80]},
            {"id": 2, "image_id": 7, "category_id": 1, "segmentation": rle, "area": 12000, "iscrowd": 0,
             "bbox": [60, 40, 150, 80]},
        ],
        "categories": [{"id": 1, "name": "box"}],
    })
    df = build_index(root, max_pixels=6_000, resized_dir=tmp_path / "resized")
    working = working_size(200, 300, 6_000)
    coco = collect_instances(df, read_layout(root))
    assert (coco["images"][0]["height"], coco["images"][0]["width"]) == working
    expected = resample_labels(labels, working) == 1
    for annotation in coco["annotations"]:
        mask = decode_rle(annotation["segmentation"])
        assert mask.shape == working
        assert np.logical_xor(mask, expected).sum() <= working[0] + working[1]  # a polygon's edge pixels may differ
        assert annotation["area"] == int(mask.sum())
    np.testing.assert_array_equal(decode_rle(coco["annotations"][1]["segmentation"]), expected)
    bbox = coco["annotations"][1]["bbox"]
    rows, cols = np.nonzero(expected)
    assert bbox == [float(cols.min()), float(rows.min()), float(cols.max() - cols.min() + 1),
                    float(rows.max() - rows.min() + 1)]


def test_a_photo_beyond_pil_s_bomb_limit_is_downscaled_not_refused(tmp_path, monkeypatch):
    Image.fromarray(marked_picture(120, 200)).save(tmp_path / "huge.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 5_000)  # PIL refuses images over twice this
    with pytest.raises(ImageReadError, match="huge.png"):
        read_image(tmp_path / "huge.png")  # what every stage after the index would meet
    df = build_index(tmp_path, max_pixels=4_000, resized_dir=tmp_path / "resized")
    assert (df.loc[0, "height"], df.loc[0, "width"]) == working_size(120, 200, 4_000)
    assert read_image(df.loc[0, "path"]).shape[:2] == working_size(120, 200, 4_000)
    assert Image.MAX_IMAGE_PIXELS == 5_000  # the guard is back for everyone else


def test_an_image_smaller_than_one_patch_still_gets_a_token_grid(tmp_path):
    Image.fromarray(marked_picture(3, 5)).save(tmp_path / "tiny.png")
    extract_features([str(tmp_path / "tiny.png")], ["tiny"], [1], tmp_path / "f.zarr", backbone="dino_vits16",
                     weights="random", resolution=32, facets=["keys"], progress=False, workers=0)
    store = FeatureStore(tmp_path / "f.zarr")
    geometry = store.geometry("tiny")
    assert geometry.original_size == (3, 5) and min(geometry.grid_size) >= 1
    assert store.facet("tiny", "keys").shape[:2] == geometry.grid_size


def test_a_pseudo_label_outside_the_class_range_is_refused_naming_the_file(tiny_store, tmp_path):
    from unseg.stages.train import run_train

    from helpers import variant

    store_path, _ = tiny_store
    store = FeatureStore(store_path)
    (tmp_path / "labels").mkdir()
    for name in store.names:
        labels = np.zeros(store.geometry(name).original_size, dtype=np.uint8)
        labels[0, 0] = 7 if name == store.names[1] else 1  # 7 >= 3 classes; 255 (ignore) would be fine
        labels[1, 1] = 255
        write_label_png(tmp_path / "labels" / f"{name}.png", labels)
    with pytest.raises(ValueError, match=rf"{store.names[1]}.png: label 7 ≥ num_classes=3"):
        run_train(store_path, tmp_path / "labels", store.names, tmp_path / "train", 3,
                  variant("train", epochs=1, facet="keys"), progress=False)
    assert not (tmp_path / "train" / "model.pt").exists()


def test_images_in_nested_folders_are_reported_or_indexed_and_duplicate_names_named(tmp_path, capsys):
    folder = tmp_path / "photos"
    for relative in ("top.png", "2023/a.png", "2023/deeper/b.png", ".hidden/c.png", "SegmentationClass/top.png"):
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(marked_picture()).save(folder / relative)
    assert build_index(folder)["name"].tolist() == ["top"]  # not recursive: the nested ones are reported
    assert "2 image(s) in subfolders" in capsys.readouterr().err
    df = build_index(folder, recursive=True)  # hidden and label folders stay out
    assert df["name"].tolist() == ["a", "b", "top"] and df.loc[0, "path"] == str(folder / "2023" / "a.png")
    Image.fromarray(marked_picture()).save(folder / "2023" / "deeper" / "a.png")
    with pytest.raises(ValueError, match=r"two images named 'a' in .*: '2023/a.png' and '2023/deeper/a.png'"):
        build_index(folder, recursive=True)
