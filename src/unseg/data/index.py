"""The image index: one verified row per input image, and the ground truth that goes with it.

Where the images, splits and ground truth of a dataset are is its format's business (:mod:`unseg.data.formats`:
``auto`` for a VOC-like or plain folder, ``voc``, ``coco``, ``cocostuff``, ``cityscapes``, ``lip``, ``folder``).
The index stage writes three things every later stage reads instead of the dataset's own layout:

* ``images.csv``: one verified row per image (:data:`INDEX_COLUMNS`), its ``gt_semantic`` a label PNG in evaluated
  class ids (the dataset's own when it stores those, else a converted copy under ``ground_truth/SegmentationClass``);
* ``ground_truth/classes.json``: the class names and whether class 0 is a background (:func:`class_table`);
* ``ground_truth/instances.json``: COCO instance ground truth keyed by the index's image ids, at the indexed sizes
  (:func:`collect_instances`), when the dataset has instances.

Very large images: with a pixel budget (``dataset.max_pixels``), an image of more pixels is downscaled once, here, to
the largest size within the budget that keeps its aspect ratio (:func:`working_size`); the copy (and its ground truth,
resampled nearest with the same pixel-centre mapping) is written under the index's ``resized/`` folder and every later
stage reads the copy. The row keeps the file it came from (``source_path``, ``source_width``, ``source_height``), so
a mask maps back onto the original exactly: x_source = (x + 0.5) · source_width / width − 0.5, likewise for y.

Why one module of ~600 lines: verifying an image, resizing it within the pixel budget, converting its ground truth
and writing the three outputs are one pass over the images with one error policy (``dataset.unreadable``).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image
from pycocotools import mask as mask_utils

from unseg.core.io import (
    IGNORE_LABEL,
    ImageReadError,
    atomic_output,
    encode_rle,
    image_size,
    read_image,
    read_json,
    read_label_png,
    segmentation_rle,
    write_json,
    write_label_png,
)
from unseg.core.provenance import file_digest
from unseg.data.formats import ALL_SPLIT, DatasetError, DatasetLayout, coco_category_map, read_layout

INDEX_COLUMNS: tuple[str, ...] = (
    "image_id", "name", "path", "width", "height", "split", "sha256", "gt_semantic", "gt_instance",
    "source_path", "source_width", "source_height",
)
SUPPORT_SPLIT = "support"
INSTANCES_FILE = "instances.json"
CLASSES_FILE = "classes.json"

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
    settings: Mapping[str, Any] | None = None,
    truth_dir: str | os.PathLike | None = None,
    layout: DatasetLayout | None = None,
    min_side: int | None = None,
) -> pd.DataFrame:
    """Index and verify every image of a dataset.

    The images, their splits and their ground truth come from the dataset's format (:mod:`unseg.data.formats`):
    ``settings`` is the config's ``dataset`` section (``format``, default ``auto``, and its settings; ``image_dir``,
    ``recursive`` and ``splits`` here are the ``auto`` format's and every format's settings, for calls from
    Python), or ``layout`` one already read. Every image is fully decoded once to prove it is readable, and every
    ground-truth map is checked against it (size, and the format's range of label ids).

    Sizes are those of the upright image (EXIF orientation applied, as :func:`unseg.core.io.read_image` reads it); a
    ground-truth PNG must have that size.

    Args:
        skipped: when given, an image that cannot be read (or whose ground truth does not match it, or that the
            format reports as a problem) is left out and ``{"path", "reason"}`` appended here instead of raising; the
            others are numbered without gaps.
        max_pixels: the pixel budget; an image of more pixels is downscaled (LANCZOS) to :func:`working_size`, its
            copy written as ``resized_dir/{name}.png`` and its ground truth (nearest) as
            ``resized_dir/SegmentationClass/{name}.png`` / ``SegmentationObject/``; None: no budget.
        resized_dir: where the downscaled copies go (required with ``max_pixels``).
        min_side: an image whose width or height is smaller is refused as unreadable (``dataset.min_side``: below
            a ViT patch, 14-16 px, it is no token); None: no minimum.
        truth_dir: where ground truth converted to the evaluated class ids goes (``truth_dir/SegmentationClass/``;
            required by a format whose stored ids are not the class ids, e.g. COCO-Stuff, Cityscapes, LIP, binary
            masks, or rasterised COCO instances).

    Returns:
        DataFrame with columns :data:`INDEX_COLUMNS`: image_id (int, 1..N in name order), name, path (absolute; the
        downscaled copy for an image over the budget), width, height (ints, of ``path``), split, sha256 (hex of the
        source file's bytes), gt_semantic (absolute path of a label PNG in evaluated class ids, 255 void: the
        dataset's own, or its converted or downscaled copy; "" without one), gt_instance (an instance-id PNG or
        ""), source_path, source_width, source_height (the file as found in the dataset, upright).

    Raises:
        FileNotFoundError: ``root`` (or ``image_dir``) does not exist.
        DatasetError (a ValueError): no images in the folder, two images with the same name (naming both), an image
            in two splits, a split without its split file, no image left after the ``splits`` filter, or (without
            ``skipped``) a problem the format reports.
        ImageReadError: an image cannot be decoded, or its ground truth has another size; the message names the
            file (only without ``skipped``).
    """
    root = Path(root)
    if max_pixels is not None and resized_dir is None:
        raise ValueError("build_index: a pixel budget (max_pixels) needs a resized_dir for the downscaled copies")
    if layout is None:
        options = {"format": "auto", **(settings or {})}
        if options["format"] == "auto":
            options.setdefault("image_dir", None if image_dir is None else str(image_dir))
            options.setdefault("recursive", recursive)
        if splits is not None:
            options["splits"] = [splits] if isinstance(splits, str) else list(splits)
        layout = read_layout(root, options)
    if layout.converts_labels and truth_dir is None:
        raise ValueError("build_index: this dataset's ground truth is converted to class ids; give a truth_dir")
    problems = list(layout.problems)
    if problems and skipped is None:
        raise DatasetError(f"{problems[0].path}: {problems[0].reason}"
                           + (f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else "")
                           + "; dataset.unreadable: skip leaves such items out and lists them in skipped.csv")
    left_out = {problem.path for problem in problems}
    if skipped is not None:
        skipped.extend({"path": problem.path, "reason": problem.reason} for problem in problems)

    rows = []
    names = sorted(name for name, path in layout.images.items() if str(path) not in left_out)
    for name in names:
        path = layout.images[name]
        instance_path = layout.instance_pngs.get(name)
        try:
            pixels = _verified_pixels(path)
            height, width = pixels.shape[:2]
            if min_side is not None and min(height, width) < min_side:
                raise ImageReadError(f"image {str(path)!r} is {width}x{height} px, smaller than dataset.min_side "
                                     f"{min_side} (a ViT patch is 14-16 px)")
            semantic_path = _checked_semantic(layout, name, (height, width), path, truth_dir)
            if instance_path is not None:
                _check_label_size(instance_path, (height, width), path)
        except (ImageReadError, DatasetError) as error:
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
            "split": layout.splits[name],
            "sha256": file_digest(path),
            "gt_semantic": "" if semantic_path is None else os.path.abspath(semantic_path),
            "gt_instance": "" if instance_path is None else os.path.abspath(instance_path),
            "source_path": os.path.abspath(path),
            "source_width": width,
            "source_height": height,
        }
        if max_pixels is not None and height * width > max_pixels:
            row.update(_downscaled_copies(name, pixels, row, max_pixels, Path(resized_dir)))
        del pixels  # a large image's decoded pixels are not kept beyond its row
        rows.append(row)
    if not rows:
        raise DatasetError(f"no readable image in {str(root)!r}: all {len(names)} were skipped")
    return pd.DataFrame(rows, columns=list(INDEX_COLUMNS)).astype(_COLUMN_DTYPES)


def _check_label_size(label_path: Path, size: tuple[int, int], image_path: Path) -> None:
    with _bomb_guard_lifted():
        label_height, label_width = image_size(label_path)
    if (label_height, label_width) != size:
        raise ImageReadError(
            f"ground truth {str(label_path)!r} is {label_width}x{label_height}, its image "
            f"{str(image_path)!r} is {size[1]}x{size[0]} (upright)"
        )


def _checked_semantic(layout: DatasetLayout, name: str, size: tuple[int, int], image_path: Path,
                      truth_dir: str | os.PathLike | None) -> Path | None:
    """The semantic ground truth of ``name`` in evaluated class ids, checked against its image: the dataset's own
    PNG, or its conversion written to ``truth_dir/SegmentationClass/{name}.png``; None without one."""
    source = layout.semantic.get(name)
    if source is None:
        return None
    if not callable(source):
        _check_label_size(source, size, image_path)
        if not layout.converts_labels and layout.stored_ids is None:
            return source
    with _bomb_guard_lifted():
        labels = layout.evaluated_labels(name)
    if labels.shape != size:
        raise ImageReadError(f"ground truth of {str(image_path)!r} is {labels.shape[1]}x{labels.shape[0]}, the image "
                             f"is {size[1]}x{size[0]}")
    if not layout.converts_labels:
        return source
    converted = Path(truth_dir) / "SegmentationClass" / f"{name}.png"
    write_label_png(converted, labels)
    return converted


def run_index(root: str | os.PathLike, out_csv: str | os.PathLike, out_skipped: str | os.PathLike,
              settings: dict[str, Any], resized_dir: str | os.PathLike | None = None,
              truth_dir: str | os.PathLike | None = None) -> pd.DataFrame:
    """The index stage: :func:`build_index` of ``root`` in the format of ``settings`` (and of
    ``settings["support_root"]``) → ``out_csv``; the images left out → ``out_skipped`` (CSV: path, reason; only a
    header when none was); the ground truth → ``truth_dir``: ``classes.json`` (:func:`class_table`),
    ``instances.json`` when the dataset has instances (:func:`collect_instances`) and converted label maps.

    With ``settings["max_pixels"]``, images over that many pixels are downscaled into ``resized_dir`` (created,
    possibly empty; support images under ``resized_dir/support``).

    Args:
        settings: the config's ``dataset`` section; ``unreadable: skip`` leaves unreadable images (and the
            problems the format reports) out, each listed in ``out_skipped`` and on stderr; ``error`` stops at the
            first one. ``support_root``: a second dataset root (``auto`` format) whose images join the index as
            split ``"support"`` (ids after the dataset's own, ground truth dropped), for MaskDistill's support set
            (``pseudolabels.*.support_split: support``).
    """
    skipped: list[dict[str, str]] | None = [] if settings["unreadable"] == "skip" else None
    truth_dir = Path(truth_dir) if truth_dir is not None else Path(out_csv).parent / "ground_truth"
    truth_dir.mkdir(parents=True, exist_ok=True)
    budget = {"max_pixels": settings.get("max_pixels"), "resized_dir": resized_dir}
    layout = with_class_range(read_layout(root, settings), settings)
    min_side = settings.get("min_side")
    df = build_index(root, skipped=skipped, layout=layout, truth_dir=truth_dir, min_side=min_side, **budget)
    passed_over = [{"path": os.path.abspath(item.path), "reason": item.reason} for item in layout.passed_over]
    if settings.get("support_root"):
        support_dir = None if resized_dir is None else Path(resized_dir) / SUPPORT_SPLIT
        support_layout = read_layout(settings["support_root"], {"format": "auto", "image_dir": None,
                                                                "recursive": bool(settings.get("recursive"))})
        passed_over += [{"path": os.path.abspath(item.path), "reason": item.reason}
                        for item in support_layout.passed_over]
        df = with_support_images(df, build_index(settings["support_root"], skipped=skipped, layout=support_layout,
                                                 min_side=min_side, **{**budget, "resized_dir": support_dir}))
    for row in skipped or []:
        print(f"index: skipped {row['path']}: {row['reason']}", file=sys.stderr)
    if passed_over:
        print(f"index: passed over {len(passed_over)} file(s) that are not images, e.g. {passed_over[0]['path']} "
              f"({passed_over[0]['reason']}); listed in {out_skipped}", file=sys.stderr)
    if resized_dir is not None:
        Path(resized_dir).mkdir(parents=True, exist_ok=True)
    instances = collect_instances(df[df["split"] != SUPPORT_SPLIT], layout)
    if instances is not None:
        write_json(truth_dir / INSTANCES_FILE, instances)
    else:  # an earlier index of this folder may have had instances: none may be read as this dataset's
        (truth_dir / INSTANCES_FILE).unlink(missing_ok=True)
    write_json(truth_dir / CLASSES_FILE, class_table(layout, settings))
    write_index(df, out_csv)
    with atomic_output(out_skipped) as tmp:
        pd.DataFrame([*(skipped or []), *passed_over], columns=["path", "reason"]).to_csv(tmp, index=False)
    support = int((df["split"] == SUPPORT_SPLIT).sum()) if settings.get("support_root") else 0
    downscaled = int((df["path"] != df["source_path"]).sum())
    labelled = int((df["gt_semantic"] != "").sum())
    print(f"index: {len(df) - support} images ({settings.get('format', 'auto')} format, {labelled} with semantic "
          f"ground truth" + (f", {len(instances['annotations'])} instances" if instances else "") + ")"
          + (f" + {support} support images" if support else "")
          + f", {len(skipped or [])} skipped"
          + (f", {downscaled} downscaled to at most {settings['max_pixels']} pixels" if downscaled else ""),
          file=sys.stderr)
    return df


def with_class_range(layout: DatasetLayout, settings: Mapping[str, Any]) -> DatasetLayout:
    """``layout`` with the range of its label ids set from the config when its format stores class ids without
    knowing how many there are (``auto``, ``folder`` with class masks): ``dataset.num_classes`` (or the number of
    ``class_names``) object classes plus the background, so that a label map holding another id stops the index
    (or is skipped) naming the file, not the evaluation later."""
    count = settings.get("num_classes") or len(settings.get("class_names") or [])
    if (layout.stored_ids is None and layout.label_map is None and not layout.binary_masks and not layout.rasterised
            and count):
        layout.stored_ids = count + 1
    return layout


def class_table(layout: DatasetLayout, settings: Mapping[str, Any]) -> dict[str, Any]:
    """What ``classes.json`` holds: ``names`` of the evaluated class ids 0..C-1 (the config's ``class_names``, with
    "background" before them, win over the format's; None when neither knows) and ``has_background`` (class 0 is
    a background, so foreground = label > 0)."""
    names = list(layout.class_names) if layout.class_names is not None else None
    if settings.get("class_names"):
        names = ["background", *settings["class_names"]]
    return {"format": settings.get("format", "auto"), "names": names, "has_background": layout.has_background}


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


def coco_ground_truth(df: pd.DataFrame, truth_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The index stage's COCO instance ground truth (``truth_dir/instances.json``) for the images of ``df``: only
    their images and annotations; None when the dataset has no instances."""
    path = Path(truth_dir) / INSTANCES_FILE
    if not path.is_file():
        return None
    coco = read_json(path)
    image_ids = {int(image_id) for image_id in df["image_id"]}
    return {**coco, "images": [image for image in coco["images"] if int(image["id"]) in image_ids],
            "annotations": [item for item in coco["annotations"] if int(item["image_id"]) in image_ids]}


def read_classes(truth_dir: str | os.PathLike) -> dict[str, Any]:
    """The index stage's ``classes.json`` (see :func:`class_table`); an older index without one: names unknown."""
    path = Path(truth_dir) / CLASSES_FILE
    return read_json(path) if path.is_file() else {"names": None, "has_background": True}


def collect_instances(df: pd.DataFrame, layout: DatasetLayout) -> dict[str, Any] | None:
    """COCO instance ground truth for the images of ``df``, keyed by the index's image_id, at the indexed sizes.

    * the layout's instances files: their images matched to the index by file stem, only images of ``df`` kept,
      image ids (and the annotations' image_id) replaced by the index's, categories kept, renumbered or merged as
      ``layout.categories`` says (:func:`unseg.data.formats.coco_category_map`); annotations renumbered 1.. when
      several files are merged; crowd flags kept;
    * else, rows having both a gt_instance and a gt_semantic PNG: each instance id of the SegmentationObject PNG
      (0 and 255 excluded) is one annotation (RLE of ``instance_map == id``), its category the majority
      semantic label inside it (0 and 255 ignored; ties go to the smaller label; an instance with no such
      label is skipped); categories 1..max label, named from ``layout.class_names`` or ``"class_{i}"``;
      annotation ids count up from 1 in (image_id, instance id) order. Rows without both PNGs are left out.
    * else ``None``.

    Returns:
        ``{"images": [...], "annotations": [...], "categories": [...]}`` (plus ``info`` from a json), or None.
    """
    if layout.instances_files:
        parts = [_coco_from_json(df, path, layout.categories) for path in layout.instances_files]
        if len(parts) == 1:
            return parts[0]
        annotations = [item for part in parts for item in part["annotations"]]
        return {"images": sorted((image for part in parts for image in part["images"]), key=lambda i: i["id"]),
                "annotations": [{**item, "id": number} for number, item in enumerate(annotations, start=1)],
                "categories": parts[0]["categories"]}
    has_pngs = (df["gt_instance"] != "") & (df["gt_semantic"] != "")
    if not has_pngs.any():
        return None
    return _coco_from_pngs(df[has_pngs], layout.class_names, layout.root)


# ---------------------------------------------------------------------------------------------------------------


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


def _coco_from_json(df: pd.DataFrame, json_path: Path, categories: str = "as_is") -> dict[str, Any]:
    coco = read_json(json_path)
    category_of, kept_categories = coco_category_map(coco.get("categories", []), categories)
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
        annotation = {**annotation, "image_id": new_image_id[annotation["image_id"]],
                      "category_id": category_of.get(int(annotation["category_id"]), annotation["category_id"])}
        row = rows_by_id[annotation["image_id"]]
        if (row.width, row.height) != (row.source_width, row.source_height):
            annotation = _downscaled_annotation(annotation, row)
        annotations.append(annotation)
    result: dict[str, Any] = {
        "images": sorted(images, key=lambda image: image["id"]),
        "annotations": annotations,
        "categories": kept_categories,
    }
    if "info" in coco:
        result["info"] = coco["info"]
    return result


def _downscaled_annotation(annotation: dict[str, Any], row: Any) -> dict[str, Any]:
    """A COCO annotation drawn on the source image, moved onto the downscaled copy: its mask (polygons or RLE,
    decoded at the source size) resampled like the ground-truth PNGs, then RLE, area and bbox recomputed."""
    segmentation = annotation["segmentation"]
    height, width = int(row.source_height), int(row.source_width)
    mask = mask_utils.decode(segmentation_rle(segmentation, height, width))
    resized = resample_labels(mask, (int(row.height), int(row.width))).astype(bool)
    rle = encode_rle(resized)
    bbox = mask_utils.toBbox({"size": rle["size"], "counts": rle["counts"].encode("ascii")})
    return {**annotation, "segmentation": rle, "area": int(resized.sum()), "bbox": [float(v) for v in bbox]}


def _coco_from_pngs(df: pd.DataFrame, class_names: Sequence[str] | None = None,
                    root: Path | None = None) -> dict[str, Any]:
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
    names = list(class_names or [])
    categories = [{"id": label, "name": names[label] if label < len(names) else f"class_{label}"}
                  for label in range(1, max_label + 1)]
    return {"images": images, "annotations": annotations, "categories": categories}


def _relative_or_absolute(path: str, root: Path | None) -> str:
    if root is None:
        return path
    absolute_root = os.path.abspath(root)
    if os.path.commonpath([absolute_root, path]) == absolute_root:
        return os.path.relpath(path, absolute_root)
    return path
