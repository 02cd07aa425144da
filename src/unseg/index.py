"""The image index: one verified row per input image, and the COCO ground truth that goes with it.

Layouts understood by :func:`build_index`:

* PASCAL VOC: ``root/JPEGImages/*.jpg``, optional ``root/SegmentationClass/{name}.png`` and
  ``root/SegmentationObject/{name}.png``, splits in ``root/ImageSets/Segmentation/{train,val}.txt``;
* a VOC-like folder with bare split files, e.g. ``root/val.txt`` next to ``root/JPEGImages``;
* a plain folder of images (``root`` itself, or ``image_dir``), no splits: every image gets split ``"all"``.

Very large images: with a pixel budget (``dataset.max_pixels``), an image of more pixels is downscaled once, here, to
the largest size within the budget that keeps its aspect ratio (:func:`working_size`); the copy (and its ground truth,
resampled nearest with the same pixel-centre mapping) is written under the index's ``resized/`` folder and every later
stage reads the copy. The row keeps the file it came from (``source_path``, ``source_width``, ``source_height``), so
a mask maps back onto the original exactly: x_source = (x + 0.5) · source_width / width − 0.5, likewise for y.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image
from pycocotools import mask as mask_utils

from unseg.io import (
    IGNORE_LABEL,
    ImageReadError,
    atomic_output,
    decode_rle,
    encode_rle,
    image_size,
    read_image,
    read_json,
    read_label_png,
    write_label_png,
)
from unseg.provenance import file_digest

INDEX_COLUMNS: tuple[str, ...] = (
    "image_id", "name", "path", "width", "height", "split", "sha256", "gt_semantic", "gt_instance",
    "source_path", "source_width", "source_height",
)
IMAGE_EXTENSIONS: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})
SPLIT_NAMES: tuple[str, ...] = ("train", "val")
ALL_SPLIT = "all"
UNASSIGNED_SPLIT = "unassigned"
SUPPORT_SPLIT = "support"

_COLUMN_DTYPES: dict[str, Any] = {
    "image_id": "int64", "name": str, "path": str, "width": "int64", "height": "int64", "split": str,
    "sha256": str, "gt_semantic": str, "gt_instance": str, "source_path": str, "source_width": "int64",
    "source_height": "int64",
}


def build_index(
    root: str | os.PathLike,
    image_dir: str | os.PathLike | None = None,
    splits: Iterable[str] | None = None,
    skipped: list[dict[str, str]] | None = None,
    max_pixels: int | None = None,
    resized_dir: str | os.PathLike | None = None,
    recursive: bool = False,
) -> pd.DataFrame:
    """Index and verify every image of a dataset.

    Images: ``image_dir`` when given (a relative ``image_dir`` is looked up under ``root`` first), else
    ``root/JPEGImages`` when it exists, else ``root`` itself; files ending in .jpg .jpeg .png .bmp .webp (any case),
    hidden files skipped; images in subfolders (VOC's label folders aside) are indexed with ``recursive``, else
    counted and reported on stderr. Every image is fully decoded once to prove it is readable.

    Splits: ``root/ImageSets/Segmentation/{train,val}.txt`` when any exists, else ``root/{train,val}.txt``; an
    image in none of them is ``"unassigned"``; without any split file every image is ``"all"``. ``splits`` keeps
    only the images of those splits (image ids are then numbered over the kept images).

    Sizes are those of the upright image (EXIF orientation applied, as :func:`unseg.io.read_image` reads it); a
    ground-truth PNG must have that size.

    Args:
        skipped: when given, an image that cannot be read (or whose ground truth does not match it) is left out and
            ``{"path", "reason"}`` appended here instead of raising; the others are numbered without gaps.
        max_pixels: the pixel budget; an image of more pixels is downscaled (LANCZOS) to :func:`working_size`, its
            copy written as ``resized_dir/{name}.png`` and its ground truth (nearest) as
            ``resized_dir/SegmentationClass/{name}.png`` / ``SegmentationObject/``; None: no budget.
        resized_dir: where the downscaled copies go (required with ``max_pixels``).
        recursive: also index the images of subfolders; their stems must be unique across all folders.

    Returns:
        DataFrame with columns :data:`INDEX_COLUMNS`: image_id (int, 1..N in name order), name (file stem),
        path (absolute; the downscaled copy for an image over the budget), width, height (ints, of ``path``),
        split, sha256 (hex of the source file's bytes), gt_semantic and gt_instance (absolute path of
        ``root/SegmentationClass/{name}.png`` / ``root/SegmentationObject/{name}.png`` or their downscaled copies,
        or ""), source_path, source_width, source_height (the file as found in the dataset, upright).

    Raises:
        FileNotFoundError: ``root`` (or ``image_dir``) does not exist.
        ValueError: no images in the folder, two images with the same stem (in nested folders too, naming both), an
            image in two splits, or no image left after the ``splits`` filter.
        ImageReadError: an image cannot be decoded, or its ground truth has another size; the message names the
            file (only without ``skipped``).
    """
    root = Path(root)
    if max_pixels is not None and resized_dir is None:
        raise ValueError("build_index: a pixel budget (max_pixels) needs a resized_dir for the downscaled copies")
    if not root.is_dir():
        raise FileNotFoundError(f"dataset root not found (or not a folder): {str(root)!r}")
    image_folder = _image_folder(root, image_dir)
    image_paths = _list_images(image_folder, recursive)

    split_of = _read_split_files(root)
    rows_split = {
        name: (split_of.get(name, UNASSIGNED_SPLIT) if split_of else ALL_SPLIT) for name in image_paths
    }
    names = sorted(image_paths)
    if splits is not None:
        wanted = [str(split) for split in ([splits] if isinstance(splits, str) else splits)]
        names = [name for name in names if rows_split[name] in wanted]
        if not names:
            available = sorted(set(rows_split.values()))
            raise ValueError(
                f"no image of {str(image_folder)!r} is in splits {wanted}; the splits present are {available}"
            )

    rows = []
    for name in names:
        path = image_paths[name]
        semantic_path = root / "SegmentationClass" / f"{name}.png"
        instance_path = root / "SegmentationObject" / f"{name}.png"
        try:
            pixels = _verified_pixels(path)
            height, width = pixels.shape[:2]
            for label_path in (semantic_path, instance_path):
                if label_path.is_file():
                    with _bomb_guard_lifted():
                        label_height, label_width = image_size(label_path)
                    if (label_height, label_width) != (height, width):
                        raise ImageReadError(
                            f"ground truth {str(label_path)!r} is {label_width}x{label_height}, its image "
                            f"{str(path)!r} is {width}x{height} (upright)"
                        )
        except ImageReadError as error:
            if skipped is None:
                raise
            skipped.append({"path": os.path.abspath(path), "reason": str(error)})
            continue
        row = {
            "image_id": len(rows) + 1,
            "name": name,
            "path": os.path.abspath(path),
            "width": width,
            "height": height,
            "split": rows_split[name],
            "sha256": file_digest(path),
            "gt_semantic": os.path.abspath(semantic_path) if semantic_path.is_file() else "",
            "gt_instance": os.path.abspath(instance_path) if instance_path.is_file() else "",
            "source_path": os.path.abspath(path),
            "source_width": width,
            "source_height": height,
        }
        if max_pixels is not None and height * width > max_pixels:
            row.update(_downscaled_copies(name, pixels, row, max_pixels, Path(resized_dir)))
        del pixels  # a large image's decoded pixels are not kept beyond its row
        rows.append(row)
    if not rows:
        raise ValueError(f"no readable image in {str(image_folder)!r}: all {len(names)} were skipped")
    return pd.DataFrame(rows, columns=list(INDEX_COLUMNS)).astype(_COLUMN_DTYPES)


def run_index(root: str | os.PathLike, out_csv: str | os.PathLike, out_skipped: str | os.PathLike,
              settings: dict[str, Any], resized_dir: str | os.PathLike | None = None) -> pd.DataFrame:
    """The index stage: :func:`build_index` of ``root`` (and of ``settings["support_root"]``) → ``out_csv``, and the
    images left out → ``out_skipped`` (CSV: path, reason; only a header when none was).

    With ``settings["max_pixels"]``, images over that many pixels are downscaled into ``resized_dir`` (created,
    possibly empty; support images under ``resized_dir/support``).

    Args:
        settings: the config's ``dataset`` section; ``unreadable: skip`` leaves unreadable images out (each listed in
            ``out_skipped`` and on stderr), ``error`` stops at the first one. ``support_root``: a second dataset
            root whose images join the index as split ``"support"`` (ids after the dataset's own, ground truth
            dropped), for MaskDistill's support set (``pseudolabels.*.support_split: support``).
    """
    skipped: list[dict[str, str]] | None = [] if settings["unreadable"] == "skip" else None
    budget = {"max_pixels": settings.get("max_pixels"), "resized_dir": resized_dir,
              "recursive": bool(settings.get("recursive"))}
    df = build_index(root, skipped=skipped, **budget)
    if settings.get("support_root"):
        support_dir = None if resized_dir is None else Path(resized_dir) / SUPPORT_SPLIT
        df = with_support_images(df, build_index(settings["support_root"], skipped=skipped,
                                                 **{**budget, "resized_dir": support_dir}))
    for row in skipped or []:
        print(f"index: skipped {row['path']}: {row['reason']}", file=sys.stderr)
    if resized_dir is not None:
        Path(resized_dir).mkdir(parents=True, exist_ok=True)
    write_index(df, out_csv)
    with atomic_output(out_skipped) as tmp:
        pd.DataFrame(skipped or [], columns=["path", "reason"]).to_csv(tmp, index=False)
    support = int((df["split"] == SUPPORT_SPLIT).sum()) if settings.get("support_root") else 0
    downscaled = int((df["path"] != df["source_path"]).sum())
    print(f"index: {len(df) - support} images" + (f" + {support} support images" if support else "")
          + f", {len(skipped or [])} skipped"
          + (f", {downscaled} downscaled to at most {settings['max_pixels']} pixels" if downscaled else ""),
          file=sys.stderr)
    return df


def with_support_images(dataset: pd.DataFrame, support: pd.DataFrame) -> pd.DataFrame:
    """The dataset's index followed by the support root's images: split ``"support"``, ids continuing after the
    dataset's, no ground truth (a support image is clustered only, never trained on or scored).

    Raises:
        ValueError: a support image has the stem of a dataset image (names key every artifact), or the dataset
            itself has a split named ``"support"``.
    """
    if (dataset["split"] == SUPPORT_SPLIT).any():
        raise ValueError(f"dataset.support_root: the dataset already has a split named {SUPPORT_SPLIT!r}")
    paths = dict(zip(dataset["name"], dataset["path"]))
    clashes = [(paths[name], path) for name, path in zip(support["name"], support["path"]) if name in paths]
    if clashes:
        raise ValueError(f"dataset.support_root: {len(clashes)} support image(s) share a name with a dataset image, "
                         f"e.g. {clashes[0][1]!r} and {clashes[0][0]!r}; rename them (image names key every "
                         "artifact)")
    support = support.assign(image_id=support["image_id"] + int(dataset["image_id"].max()), split=SUPPORT_SPLIT,
                             gt_semantic="", gt_instance="")
    return pd.concat([dataset, support], ignore_index=True).astype(_COLUMN_DTYPES)


def write_index(df: pd.DataFrame, path: str | os.PathLike) -> None:
    """Write the index as CSV (columns :data:`INDEX_COLUMNS`, in order), atomically."""
    missing = [column for column in INDEX_COLUMNS if column not in df.columns]
    if missing:
        raise ValueError(f"index for {str(path)!r} lacks columns {missing}")
    with atomic_output(path) as tmp:
        df.loc[:, list(INDEX_COLUMNS)].to_csv(tmp, index=False)


def read_index(path: str | os.PathLike) -> pd.DataFrame:
    """Read an index CSV written by :func:`write_index`: names stay strings, empty gt paths stay ""."""
    df = pd.read_csv(path, dtype=_COLUMN_DTYPES, keep_default_na=False)
    missing = [column for column in INDEX_COLUMNS if column not in df.columns]
    if missing:
        raise ValueError(f"index {str(path)!r} lacks columns {missing}")
    return df.loc[:, list(INDEX_COLUMNS)]


def index_split(df: pd.DataFrame, split: str) -> pd.DataFrame:
    """Rows of ``split`` (``"all"``: every row), index reset.

    Raises:
        ValueError: no row has that split; the message lists the splits present.
    """
    rows = df if split == ALL_SPLIT else df[df["split"] == split]
    if rows.empty:
        raise ValueError(f"no image in split {split!r}; the splits present are {sorted(set(df['split']))}")
    return rows.reset_index(drop=True)


def names_by_id(df: pd.DataFrame) -> dict[int, str]:
    """image_id -> name for the rows of an index."""
    return {int(image_id): str(name) for image_id, name in zip(df["image_id"], df["name"])}


def image_paths(index_csv: str | os.PathLike) -> dict[str, str]:
    """image name -> image path, for every row of the index file."""
    df = read_index(index_csv)
    return {str(name): str(path) for name, path in zip(df["name"], df["path"])}


def split_names(df: pd.DataFrame, split: str | None) -> set[str]:
    """Names of the images of ``split`` (none when ``split`` is None; an unknown split raises, see
    :func:`index_split`)."""
    return set() if split is None else set(index_split(df, split)["name"])


def split_ground_truth(df: pd.DataFrame, split: str | None) -> dict[str, str]:
    """image name -> ground-truth semantic PNG of the images of ``split`` that have one; {} when ``split`` is None.

    Raises:
        ValueError: ``split`` names no split of the index (see :func:`index_split`).
    """
    if split is None:
        return {}
    rows = index_split(df, split)
    rows = rows[rows["gt_semantic"] != ""]
    return {str(name): str(path) for name, path in zip(rows["name"], rows["gt_semantic"])}


def coco_ground_truth(df: pd.DataFrame, root: str | os.PathLike) -> dict[str, Any] | None:
    """COCO instance ground truth for the images of ``df``, keyed by the index's image_id.

    * ``root/annotations/instances.json`` exists: its images are matched to the index by file stem, only images of
      ``df`` kept, image ids (and the annotations' image_id) replaced by the index's; categories as in the json.
    * else, rows having both a gt_instance and a gt_semantic PNG: each instance id of the SegmentationObject PNG
      (0 and 255 excluded) is one annotation (RLE of ``instance_map == id``), its category the majority
      SegmentationClass label inside it (0 and 255 ignored; ties go to the smaller label; an instance with no such
      label is skipped); categories 1..max label named ``"class_{i}"``; annotation ids count up from 1 in
      (image_id, instance id) order. Rows without both PNGs are left out.
    * else ``None``.

    Returns:
        ``{"images": [...], "annotations": [...], "categories": [...]}`` (plus ``info`` from the json), or None.
    """
    json_path = Path(root) / "annotations" / "instances.json"
    if json_path.is_file():
        return _coco_from_json(df, json_path)
    has_pngs = (df["gt_instance"] != "") & (df["gt_semantic"] != "")
    if not has_pngs.any():
        return None
    return _coco_from_pngs(df[has_pngs], Path(root))


# ---------------------------------------------------------------------------------------------------------------


def _image_folder(root: Path, image_dir: str | os.PathLike | None) -> Path:
    if image_dir is not None:
        candidate = Path(image_dir)
        if not candidate.is_absolute() and (root / candidate).is_dir():
            candidate = root / candidate
        if not candidate.is_dir():
            raise FileNotFoundError(f"image folder not found: {str(candidate)!r}")
        return candidate
    voc_folder = root / "JPEGImages"
    return voc_folder if voc_folder.is_dir() else root


# Folders of a VOC-layout root that hold label maps and metadata, never input images.
_NOT_IMAGE_FOLDERS = frozenset({"SegmentationClass", "SegmentationObject", "ImageSets", "annotations", "Annotations"})


def _is_image_file(path: Path) -> bool:
    return not path.name.startswith(".") and path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS


def _nested_images(folder: Path) -> list[Path]:
    """Image files in the subfolders of ``folder`` (hidden folders and VOC's label folders left out), sorted."""
    found = []
    for child in sorted(folder.iterdir()):
        if child.is_dir() and not child.name.startswith(".") and child.name not in _NOT_IMAGE_FOLDERS:
            found += [path for path in sorted(child.rglob("*")) if _is_image_file(path)
                      and not any(part.startswith(".") for part in path.relative_to(folder).parts)]
    return found


def _list_images(folder: Path, recursive: bool = False) -> dict[str, Path]:
    """Image file stem -> path, for the image files directly in ``folder`` (and, ``recursive``, in its subfolders).

    Raises:
        ValueError: two images with the same stem (names key every artifact), naming both files.
    """
    candidates = [path for path in sorted(folder.iterdir()) if _is_image_file(path)]
    nested = _nested_images(folder)
    if recursive:
        candidates += nested
    elif nested:
        print(f"index: {len(nested)} image(s) in subfolders of {str(folder)!r} are not indexed, e.g. "
              f"{str(nested[0].relative_to(folder))!r} (dataset.recursive: true indexes them)", file=sys.stderr)
    images: dict[str, Path] = {}
    for path in candidates:
        if path.stem in images:
            raise ValueError(
                f"two images named {path.stem!r} in {str(folder)!r}: {str(images[path.stem].relative_to(folder))!r} "
                f"and {str(path.relative_to(folder))!r}; rename one (image names key every artifact)"
            )
        images[path.stem] = path
    if not images:
        extensions = " ".join(sorted(IMAGE_EXTENSIONS))
        raise ValueError(f"no images ({extensions}) in folder {str(folder)!r}")
    return images


def _read_split_files(root: Path) -> dict[str, str]:
    """Image name -> split from the split files (empty when there are none)."""
    folder = root / "ImageSets" / "Segmentation"
    if not any((folder / f"{split}.txt").is_file() for split in SPLIT_NAMES):
        folder = root
    split_of: dict[str, str] = {}
    for split in SPLIT_NAMES:
        split_file = folder / f"{split}.txt"
        if not split_file.is_file():
            continue
        for line in split_file.read_text().splitlines():
            name = line.strip()
            if not name:
                continue
            if split_of.get(name, split) != split:
                raise ValueError(
                    f"image {name!r} is listed in both {split_of[name]}.txt and {split}.txt in {str(folder)!r}"
                )
            split_of[name] = split
    return split_of


def _verified_pixels(path: Path) -> np.ndarray:
    """The upright (H, W, 3) uint8 image, decoded whole once to prove it is readable (ImageReadError if it fails).

    PIL's decompression-bomb guard is lifted for this read only: the pixel budget, not PIL's default, decides what
    happens to a very large photo (it is downscaled before any other stage reads it).
    """
    with _bomb_guard_lifted():
        height, width = image_size(path)
        pixels = read_image(path)
    if pixels.shape[:2] != (height, width):
        raise ImageReadError(
            f"image {str(path)!r} decodes to {pixels.shape[1]}x{pixels.shape[0]}, its header says {width}x{height}"
        )
    return pixels


@contextlib.contextmanager
def _bomb_guard_lifted() -> Iterator[None]:
    limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = limit


def working_size(height: int, width: int, max_pixels: int) -> tuple[int, int]:
    """The (height, width) an image is downscaled to under a budget of ``max_pixels``.

    Unchanged within the budget; else the largest size with height · width <= max_pixels whose aspect ratio is the
    source's to within one pixel: scale s = sqrt(max_pixels / (H · W)), sides floor(H · s), floor(W · s) (at least 1).
    """
    if height * width <= max_pixels:
        return int(height), int(width)
    scale = (max_pixels / (height * width)) ** 0.5
    resized = max(1, int(height * scale)), max(1, int(width * scale))
    while resized[0] * resized[1] > max_pixels:  # guards float rounding at the boundary
        resized = (max(1, resized[0] - 1), resized[1]) if resized[0] >= resized[1] else (resized[0], resized[1] - 1)
    return resized


def resample_labels(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """An (H, W) uint8 label map resampled nearest to ``size`` = (height, width), with PIL's pixel-centre mapping
    (the same as the image's LANCZOS resize), so that labels stay on the pixels they were drawn on."""
    picture = Image.fromarray(np.ascontiguousarray(labels, dtype=np.uint8))
    return np.asarray(picture.resize((size[1], size[0]), Image.Resampling.NEAREST))


def _downscaled_copies(name: str, pixels: np.ndarray, row: dict[str, Any], max_pixels: int,
                       resized_dir: Path) -> dict[str, Any]:
    """Write the image (and its ground truth) at :func:`working_size` under ``resized_dir``; the row's new path,
    size and ground-truth paths."""
    height, width = working_size(row["source_height"], row["source_width"], max_pixels)
    copy = resized_dir / f"{name}.png"
    resized = Image.fromarray(pixels).resize((width, height), Image.Resampling.LANCZOS)
    with atomic_output(copy) as tmp:
        resized.save(tmp, format="PNG")
    update: dict[str, Any] = {"path": os.path.abspath(copy), "width": width, "height": height}
    for column, folder in (("gt_semantic", "SegmentationClass"), ("gt_instance", "SegmentationObject")):
        if row[column]:
            label_copy = resized_dir / folder / f"{name}.png"
            with _bomb_guard_lifted():
                labels = read_label_png(row[column])
            write_label_png(label_copy, resample_labels(labels, (height, width)))
            update[column] = os.path.abspath(label_copy)
    return update


def _coco_from_json(df: pd.DataFrame, json_path: Path) -> dict[str, Any]:
    coco = read_json(json_path)
    rows_by_name = {row.name: row for row in df.itertuples(index=False)}
    new_image_id: dict[int, int] = {}
    images = []
    for image in coco.get("images", []):
        stem = Path(image["file_name"]).stem
        row = rows_by_name.get(stem)
        if row is None:
            continue
        if (int(image["width"]), int(image["height"])) != (row.source_width, row.source_height):
            raise ValueError(
                f"{str(json_path)!r} gives {image['width']}x{image['height']} for {stem!r}, "
                f"the image {row.source_path!r} is {row.source_width}x{row.source_height}"
            )
        new_image_id[image["id"]] = int(row.image_id)
        images.append({**image, "id": int(row.image_id), "width": int(row.width), "height": int(row.height)})
    rows_by_id = {int(row.image_id): row for row in df.itertuples(index=False)}
    annotations = []
    for annotation in coco.get("annotations", []):
        if annotation["image_id"] not in new_image_id:
            continue
        annotation = {**annotation, "image_id": new_image_id[annotation["image_id"]]}
        row = rows_by_id[annotation["image_id"]]
        if (row.width, row.height) != (row.source_width, row.source_height):
            annotation = _downscaled_annotation(annotation, row)
        annotations.append(annotation)
    result: dict[str, Any] = {
        "images": sorted(images, key=lambda image: image["id"]),
        "annotations": annotations,
        "categories": coco.get("categories", []),
    }
    if "info" in coco:
        result["info"] = coco["info"]
    return result


def _downscaled_annotation(annotation: dict[str, Any], row: Any) -> dict[str, Any]:
    """A COCO annotation drawn on the source image, moved onto the downscaled copy: its mask (polygons or RLE,
    decoded at the source size) resampled like the ground-truth PNGs, then RLE, area and bbox recomputed."""
    segmentation = annotation["segmentation"]
    height, width = int(row.source_height), int(row.source_width)
    if isinstance(segmentation, list):  # polygons
        mask = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width)))
    elif isinstance(segmentation["counts"], list):  # uncompressed RLE
        mask = mask_utils.decode(mask_utils.frPyObjects(segmentation, height, width))
    else:
        mask = decode_rle(segmentation)
    resized = resample_labels(mask, (int(row.height), int(row.width))).astype(bool)
    rle = encode_rle(resized)
    bbox = mask_utils.toBbox({"size": rle["size"], "counts": rle["counts"].encode("ascii")})
    return {**annotation, "segmentation": rle, "area": int(resized.sum()), "bbox": [float(v) for v in bbox]}


def _coco_from_pngs(df: pd.DataFrame, root: Path) -> dict[str, Any]:
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    max_label = 0
    for row in df.sort_values("image_id").itertuples(index=False):
        instance_map = read_label_png(row.gt_instance)  # (H, W) uint8
        semantic_map = read_label_png(row.gt_semantic)  # (H, W) uint8
        if instance_map.shape != semantic_map.shape or instance_map.shape != (row.height, row.width):
            raise ValueError(
                f"label maps of {row.name!r} disagree in size: image {row.width}x{row.height}, "
                f"{row.gt_instance!r} {instance_map.shape[1]}x{instance_map.shape[0]}, "
                f"{row.gt_semantic!r} {semantic_map.shape[1]}x{semantic_map.shape[0]}"
            )
        semantic_labels = np.unique(semantic_map)
        semantic_labels = semantic_labels[semantic_labels != IGNORE_LABEL]
        if semantic_labels.size:
            max_label = max(max_label, int(semantic_labels.max()))
        images.append(
            {"id": int(row.image_id), "file_name": _relative_or_absolute(row.source_path, root),
             "width": int(row.width), "height": int(row.height)}
        )
        for instance_id in np.unique(instance_map):
            if instance_id in (0, IGNORE_LABEL):
                continue
            instance_mask = instance_map == instance_id
            inside = semantic_map[instance_mask]
            inside = inside[(inside != 0) & (inside != IGNORE_LABEL)]
            if inside.size == 0:
                continue
            category_id = int(np.argmax(np.bincount(inside)))
            rle = encode_rle(instance_mask)
            bbox = mask_utils.toBbox({"size": rle["size"], "counts": rle["counts"].encode("ascii")})
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": int(row.image_id),
                    "category_id": category_id,
                    "segmentation": rle,
                    "area": int(instance_mask.sum()),
                    "bbox": [float(value) for value in bbox],
                    "iscrowd": 0,
                }
            )
    categories = [{"id": label, "name": f"class_{label}"} for label in range(1, max_label + 1)]
    return {"images": images, "annotations": annotations, "categories": categories}


def _relative_or_absolute(path: str, root: Path) -> str:
    absolute_root = os.path.abspath(root)
    if os.path.commonpath([absolute_root, path]) == absolute_root:
        return os.path.relpath(path, absolute_root)
    return path
