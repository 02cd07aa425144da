"""Images as people save them: every format is read upright with the right values, and a file that cannot be read
stops the index naming it, or is skipped and listed when the config says so (issue 17, bad inputs)."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from unseg.features import extract_features
from unseg.index import build_index, run_index
from unseg.io import ImageReadError, image_size, read_image, write_label_png
from unseg.store import FeatureStore

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


def test_the_workflow_skips_and_lists_unreadable_files_when_configured(tmp_path):
    folder = photo_folder(tmp_path / "photos", {"empty.jpg": b""})
    config = yaml.safe_load(TINY.read_text())
    config["dataset"] = {"name": "photos", "root": str(folder), "unreadable": "skip"}
    snakemake(tmp_path, config, "results/photos/index/images.csv")
    assert len(pd.read_csv(tmp_path / "results/photos/index/images.csv")) == 2
    assert pd.read_csv(tmp_path / "results/photos/index/skipped.csv")["path"].str.endswith("empty.jpg").all()
    assert "skipped" in (tmp_path / "logs/photos/index.log").read_text()


def test_an_image_smaller_than_one_patch_still_gets_a_token_grid(tmp_path):
    Image.fromarray(marked_picture(3, 5)).save(tmp_path / "tiny.png")
    extract_features([str(tmp_path / "tiny.png")], ["tiny"], [1], tmp_path / "f.zarr", backbone="dino_vits16",
                     weights="random", resolution=32, facets=["keys"], progress=False, workers=0)
    store = FeatureStore(tmp_path / "f.zarr")
    geometry = store.geometry("tiny")
    assert geometry.original_size == (3, 5) and min(geometry.grid_size) >= 1
    assert store.facet("tiny", "keys").shape[:2] == geometry.grid_size


def test_a_pseudo_label_outside_the_class_range_is_refused_naming_the_file(tiny_store, tmp_path):
    from unseg.train import run_train

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
