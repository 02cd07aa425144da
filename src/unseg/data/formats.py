"""Dataset formats: where each benchmark keeps its images, splits and ground truth, read in its own layout.

A format is a registered function ``(root, *, splits, **settings) -> DatasetLayout`` (``dataset.format`` in the
config picks it; its settings sit in the ``dataset`` section, validated by the format's schema branch). The layout
says which images there are, their split, and where their ground truth is; :mod:`unseg.data.index` then verifies every
image, converts ground truth to the evaluated class ids where the format stores other ids, and writes the index
table, ``classes.json`` and the COCO instances the later stages score against.

Formats: ``auto`` (the VOC-like or plain folder of earlier versions, the default), ``voc`` (PASCAL VOC 2012,
``train_aug`` too), ``coco`` (instances JSON; class-agnostic or 80 classes; COCO20k by an id list), ``cocostuff``
(27, 171 or 80 classes), ``cityscapes`` (27 classes), ``lip`` (19, 16 or 5 parts) and ``folder`` (any folder of
photos, recursive, with an optional masks folder). Class tables and their sources: :mod:`unseg.data.label_maps`.

A problem with one image or annotation (a listed image that is missing, an annotation of an image the file does not
list, a label PNG missing for a benchmark image) is a :class:`DatasetProblem` in ``layout.problems``; the index
stops on the first or, with ``dataset.unreadable: skip``, leaves the item out and lists it in ``skipped.csv``. A
problem with the dataset as a whole (a split without its split file, a duplicated image id or name) raises
:class:`DatasetError` naming the file.

Why one module of ~600 lines: the seven formats are short readers (30-80 lines each) sharing the split-file, image
listing and problem-reporting helpers above them; side by side they read as one table of layouts.
"""

from __future__ import annotations

import os
import sys
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from unseg.config.registry import DATASET_FORMATS
from unseg.core.io import IGNORE_LABEL, read_json, segmentation_rle
from unseg.data import label_maps

# Read as images by their extension (a GIF: its first frame); a file of another extension is an image when PIL
# identifies it from its header (PPM, JPEG 2000, ...), else it is passed over and listed in skipped.csv.
IMAGE_EXTENSIONS: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"})
BROKEN_LINK = "a broken symbolic link (or a loop of links): nothing to read"
ALL_SPLIT = "all"
UNASSIGNED_SPLIT = "unassigned"
AUTO_SPLIT_NAMES: tuple[str, ...] = ("train", "val")

# DATASET_FORMATS: ``dataset.format`` name → the function reading that layout (declared in unseg.methods.formats).

# Folders of a VOC-layout root that hold label maps and metadata, never input images.
_NOT_IMAGE_FOLDERS = frozenset({"SegmentationClass", "SegmentationObject", "SegmentationClassAug", "ImageSets",
                                "annotations", "Annotations"})


class DatasetError(ValueError):
    """The dataset cannot be read as configured (missing split file, duplicated id or name); names the file."""


@dataclass(frozen=True)
class DatasetProblem:
    """One image or annotation that cannot be used: the file concerned and why."""

    path: str
    reason: str


@dataclass
class DatasetLayout:
    """What a format found under a dataset root.

    Attributes:
        images: image name (unique; keys every artifact) → image file.
        splits: image name → split (``"all"`` when the dataset has no splits).
        semantic: image name → its semantic ground truth: a label PNG, or a function returning the (H, W) uint8
            map at the image's size (rasterised from instances).
        label_map: (256,) uint8 table from stored ids to evaluated class ids (255 void), or None: stored ids are
            the class ids. ``binary_masks``: every non-zero stored value is class 1 (figure/ground masks).
            ``rasterised``: the semantic sources are functions (maps painted from instances), not PNGs.
        stored_ids: how many stored ids the format defines (0..stored_ids-1, and 255); a PNG holding another value
            is a problem. None: not checked.
        instance_pngs: image name → an instance-id PNG (VOC's SegmentationObject), scored with the semantic map.
        instances_files: COCO instances files (their images matched to the index by file stem).
        categories: how the instances files' categories are kept: ``as_is``, ``contiguous`` (sorted ids → 1..N) or
            ``agnostic`` (one category, 1 "object").
        class_names: names of the evaluated class ids 0..C-1 (class 0 the background when ``has_background``), or
            None when the format does not know them.
        problems: items left out or to stop on (see the module docstring).
        passed_over: files in the image folders that are not images (no image extension, and PIL cannot identify
            them): never an error, each listed in ``skipped.csv`` with its reason.
        root: the dataset root the layout was read from (COCO file names are written relative to it).
    """

    images: dict[str, Path]
    splits: dict[str, str]
    semantic: dict[str, Path | Callable[[], np.ndarray]] = field(default_factory=dict)
    label_map: np.ndarray | None = None
    binary_masks: bool = False
    rasterised: bool = False
    stored_ids: int | None = None
    instance_pngs: dict[str, Path] = field(default_factory=dict)
    instances_files: list[Path] = field(default_factory=list)
    categories: str = "as_is"
    class_names: Sequence[str] | None = None
    has_background: bool = True
    problems: list[DatasetProblem] = field(default_factory=list)
    passed_over: list[DatasetProblem] = field(default_factory=list)
    root: Path | None = None

    @property
    def converts_labels(self) -> bool:
        """True when stored label maps are not the evaluated ids and must be converted (and written) by the index."""
        return self.label_map is not None or self.binary_masks or self.rasterised

    def evaluated_labels(self, name: str) -> np.ndarray | None:
        """The (H, W) uint8 semantic ground truth of ``name`` in evaluated class ids (255 void), or None.

        Raises:
            DatasetError: the map holds a stored id outside the format's range (naming the file and the ids).
        """
        from unseg.core.io import read_label_png

        source = self.semantic.get(name)
        if source is None:
            return None
        stored = source() if callable(source) else read_label_png(source)
        if self.stored_ids is not None:
            bad = np.setdiff1d(np.unique(stored), [*range(self.stored_ids), IGNORE_LABEL])
            if bad.size:
                raise DatasetError(f"label map {str(source)!r} holds ids {bad.tolist()[:8]} outside the class range "
                                   f"0..{self.stored_ids - 1} (and {IGNORE_LABEL} void)")
        if self.binary_masks:
            return (stored > 0).astype(np.uint8)
        return stored if self.label_map is None else self.label_map[stored]


def read_layout(root: str | os.PathLike, settings: Mapping[str, Any] | None = None) -> DatasetLayout:
    """The layout of ``root`` in the format ``settings["format"]`` (default ``auto``), with that format's settings
    (schema defaults filled in) and ``settings["splits"]`` (None: every split the format has by default).

    Raises:
        FileNotFoundError: ``root`` is not a folder.
        DatasetError: see the formats.
    """
    settings = dict(settings or {})
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset root not found (or not a folder): {str(root)!r}")
    method = DATASET_FORMATS.get(settings.get("format", "auto"))
    splits = settings.get("splits")
    splits = None if splits is None else [splits] if isinstance(splits, str) else [str(split) for split in splits]
    layout = method.function(root, splits=splits, **method.settings(settings))
    layout.root = root
    return layout


# --- listing helpers ------------------------------------------------------------------------------------------


def is_image_file(path: Path) -> bool:
    return not path.name.startswith(".") and path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS


def _resolves(path: Path) -> bool:
    try:
        path.stat()
    except OSError:  # a broken link, a loop of links
        return False
    return True


def _pil_identifies(path: Path) -> bool:
    """Whether PIL recognises ``path`` as an image from its header (nothing decoded)."""
    try:
        with Image.open(path):
            return True
    except Exception:  # any failure to identify: not an image the index reads
        return False


@dataclass
class FolderFiles:
    """The files found in an image folder, accounted for: ``images``; ``problems`` (broken links and loops: an
    error, or a skip under ``dataset.unreadable: skip``); ``passed_over`` (files that are not images)."""

    images: list[Path] = field(default_factory=list)
    problems: list[DatasetProblem] = field(default_factory=list)
    passed_over: list[DatasetProblem] = field(default_factory=list)

    def add(self, paths: Iterable[Path]) -> list[Path]:
        """Sort ``paths`` (hidden ones and folders ignored) into the three lists; returns the images among them."""
        images = []
        for path in paths:
            if path.name.startswith("."):
                continue
            if path.is_symlink() and not _resolves(path):
                self.problems.append(DatasetProblem(str(path), BROKEN_LINK))
            elif path.is_dir():
                continue
            elif not path.is_file():
                self.passed_over.append(DatasetProblem(str(path), "not a regular file"))
            elif path.suffix.lower() in IMAGE_EXTENSIONS or _pil_identifies(path):
                images.append(path)
            else:
                self.passed_over.append(DatasetProblem(
                    str(path), f"not an image: no image extension ({' '.join(sorted(IMAGE_EXTENSIONS))}) and PIL "
                               "cannot identify it"))
        self.images += images
        return images


def _nested_files(folder: Path, excluded: Iterable[Path] = ()) -> list[Path]:
    """The files (and broken links) in the subfolders of ``folder`` (hidden folders, VOC's label folders and
    ``excluded`` left out), sorted; symbolic links to folders are not followed."""
    excluded = {path.resolve() for path in excluded}
    found = []
    for child in sorted(folder.iterdir()):
        if (child.is_dir() and not child.is_symlink() and not child.name.startswith(".")
                and child.name not in _NOT_IMAGE_FOLDERS and child.resolve() not in excluded):
            found += [path for path in sorted(child.rglob("*")) if not path.is_dir()
                      and not any(part.startswith(".") for part in path.relative_to(folder).parts)
                      and not (excluded and _inside_any(path, excluded))]
    return found


def _inside_any(path: Path, folders: set[Path]) -> bool:
    """Whether ``path`` lies below one of ``folders`` (resolved paths); one resolve per file."""
    return not folders.isdisjoint(path.resolve().parents)


def _unique_names(paths: Iterable[Path], folder: Path, name_of: Callable[[Path], str]) -> dict[str, Path]:
    images: dict[str, Path] = {}
    for path in paths:
        name = name_of(path)
        if name in images:
            raise DatasetError(
                f"two images named {name!r} in {str(folder)!r}: {str(images[name].relative_to(folder))!r} and "
                f"{str(path.relative_to(folder))!r}; rename one (image names key every artifact)")
        images[name] = path
    if not images:
        raise DatasetError(f"no images ({' '.join(sorted(IMAGE_EXTENSIONS))}) in folder {str(folder)!r}")
    return images


def list_images(folder: Path, recursive: bool = False, files: FolderFiles | None = None) -> dict[str, Path]:
    """Image file stem → path, for the images directly in ``folder`` (and, ``recursive``, in its subfolders); the
    other files (broken links, files that are not images) are accounted for in ``files``.

    Raises:
        DatasetError: two images with the same stem (naming both), or no image at all.
    """
    files = files if files is not None else FolderFiles()
    candidates = files.add(sorted(folder.iterdir()))
    nested_files = _nested_files(folder)
    nested = files.add(nested_files) if recursive else FolderFiles().add(nested_files)
    if recursive:
        candidates += nested
    elif nested:
        print(f"index: {len(nested)} image(s) in subfolders of {str(folder)!r} are not indexed, e.g. "
              f"{str(nested[0].relative_to(folder))!r} (dataset.recursive: true indexes them)", file=sys.stderr)
    return _unique_names(candidates, folder, lambda path: path.stem)


def _read_list(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def _first_existing(candidates: Iterable[Path]) -> Path | None:
    return next((path for path in candidates if path.exists()), None)


def _split_of(lists: Mapping[str, Sequence[str]], where: str) -> dict[str, str]:
    """name → split from each split's list of names; a name in two of them is an error."""
    split_of: dict[str, str] = {}
    for split, names in lists.items():
        for name in names:
            if split_of.get(name, split) != split:
                raise DatasetError(f"image {name!r} is listed in splits {split_of[name]!r} and {split!r} ({where}); "
                                   "an image belongs to one split: choose dataset.splits that do not overlap")
            split_of[name] = split
    return split_of


def _resolve(root: Path, path: str | None) -> Path | None:
    if path is None:
        return None
    candidate = Path(path)
    return candidate if candidate.is_absolute() else root / candidate


def _subset_names(root: Path, subset: str | None, ids_to_names: Mapping[int, str] | None = None) -> set[str] | None:
    """The names an image-list file keeps: one entry per line, a file name or path (its stem is compared) or, with
    ``ids_to_names``, an integer image id."""
    path = _resolve(root, subset)
    if path is None:
        return None
    if not path.is_file():
        raise DatasetError(f"dataset.subset: no image-list file {str(path)!r}")
    names = set()
    for entry in _read_list(path):
        if ids_to_names is not None and entry.isdigit() and int(entry) in ids_to_names:
            names.add(ids_to_names[int(entry)])
        else:
            names.add(Path(entry).stem)
    return names


def _images_of_split(folder: Path, split: str, where: str, name_of: Callable[[Path], str] = lambda p: p.stem,
                     recursive: bool = False) -> dict[str, Path]:
    if not folder.is_dir():
        raise DatasetError(f"split {split!r}: no image folder {str(folder)!r} ({where})")
    paths = sorted(folder.rglob("*") if recursive else folder.iterdir())
    return _unique_names([path for path in paths if is_image_file(path)], folder, name_of)


def _merge_splits(per_split: Mapping[str, Mapping[str, Path]]) -> tuple[dict[str, Path], dict[str, str]]:
    images: dict[str, Path] = {}
    splits: dict[str, str] = {}
    for split, found in per_split.items():
        for name, path in found.items():
            if name in images:
                raise DatasetError(f"image name {name!r} is in splits {splits[name]!r} ({str(images[name])!r}) and "
                                   f"{split!r} ({str(path)!r}); names key every artifact")
            images[name], splits[name] = path, split
    return images, splits


def _labels_for(images: Mapping[str, Path], label_path: Callable[[str, Path], Path],
                problems: list[DatasetProblem], required: bool) -> dict[str, Path]:
    """name → its label PNG where it exists; a missing one is a problem when ``required``."""
    labels = {}
    for name, image in images.items():
        path = label_path(name, image)
        if path.is_file():
            labels[name] = path
        elif required:
            problems.append(DatasetProblem(str(image), f"no ground-truth label map {str(path)!r} for this image"))
    return labels


# --- formats ---------------------------------------------------------------------------------------------------


def auto_format(root: Path, *, splits: Sequence[str] | None, image_dir: str | None, recursive: bool) -> DatasetLayout:
    """A VOC-like folder (``JPEGImages/``, optional ``SegmentationClass/``, ``SegmentationObject/``,
    ``annotations/instances.json``, split files ``ImageSets/Segmentation/{train,val}.txt`` or ``{train,val}.txt``)
    or a plain folder of images; images in no split file are ``"unassigned"``, every image is ``"all"`` without
    split files. Stored label ids are the class ids."""
    if image_dir is not None:
        folder = _resolve(root, image_dir)
        if not folder.is_dir() and Path(image_dir).is_dir():
            folder = Path(image_dir)
        if not folder.is_dir():
            raise FileNotFoundError(f"image folder not found: {str(folder)!r}")
    else:
        folder = root / "JPEGImages" if (root / "JPEGImages").is_dir() else root
    files = FolderFiles()
    images = list_images(folder, recursive, files)
    split_folder = root / "ImageSets" / "Segmentation"
    if not any((split_folder / f"{split}.txt").is_file() for split in AUTO_SPLIT_NAMES):
        split_folder = root
    lists = {split: _read_list(split_folder / f"{split}.txt") for split in AUTO_SPLIT_NAMES
             if (split_folder / f"{split}.txt").is_file()}
    split_of = _split_of(lists, str(split_folder))
    split_names = {name: (split_of.get(name, UNASSIGNED_SPLIT) if split_of else ALL_SPLIT) for name in images}
    json_path = root / "annotations" / "instances.json"
    layout = DatasetLayout(
        images=images, splits=split_names,
        semantic=_labels_for(images, lambda name, _: root / "SegmentationClass" / f"{name}.png", [], False),
        instance_pngs=_labels_for(images, lambda name, _: root / "SegmentationObject" / f"{name}.png", [], False),
        instances_files=[json_path] if json_path.is_file() else [], problems=files.problems,
        passed_over=files.passed_over)
    return _keep_splits(layout, splits, str(folder))


def _keep_splits(layout: DatasetLayout, splits: Sequence[str] | None, where: str) -> DatasetLayout:
    if splits is None:
        return layout
    kept = [name for name in layout.images if layout.splits[name] in splits]
    if not kept:
        raise DatasetError(f"no image of {where!r} is in splits {list(splits)}; the splits present are "
                           f"{sorted(set(layout.splits.values()))}")
    layout.images = {name: layout.images[name] for name in kept}
    return layout


def _voc_root(root: Path) -> Path:
    found = _first_existing(path for path in (root, root / "VOC2012", root / "VOCdevkit" / "VOC2012")
                            if (path / "JPEGImages").is_dir())
    if found is None:
        raise DatasetError(f"dataset.format voc: no JPEGImages/ in {str(root)!r} (nor in VOC2012/ or "
                           "VOCdevkit/VOC2012/ below it); point dataset.root at the VOC2012 folder")
    return found


def voc_format(root: Path, *, splits: Sequence[str] | None) -> DatasetLayout:
    """PASCAL VOC 2012 (``root`` = ``VOC2012/`` or a folder above it): the images of the split files
    ``ImageSets/Segmentation/{split}.txt`` (default splits train and val; ``train_aug`` is read from
    ``ImageSets/SegmentationAug/`` or ``ImageSets/Segmentation/``, its labels from ``SegmentationClassAug/``), 21
    classes with 255 void, instances from ``SegmentationObject/``."""
    root = _voc_root(root)
    splits = list(splits or ("train", "val"))
    lists = {}
    for split in splits:
        candidates = [root / "ImageSets" / folder / f"{split}.txt" for folder in ("Segmentation", "SegmentationAug")]
        candidates.append(root / f"{split}.txt")
        split_file = _first_existing(candidates)
        if split_file is None:
            raise DatasetError(f"dataset.splits: no split file for {split!r}; looked for "
                               f"{', '.join(repr(str(path)) for path in candidates)}")
        lists[split] = _read_list(split_file)
    split_of = _split_of(lists, str(root / "ImageSets"))
    problems: list[DatasetProblem] = []
    images = {}
    for name in split_of:
        path = root / "JPEGImages" / f"{name}.jpg"
        if path.is_file():
            images[name] = path
        else:
            problems.append(DatasetProblem(str(path), f"listed in {split_of[name]}.txt, but the image is missing"))

    def label_path(name: str, _: Path) -> Path:
        augmented = root / "SegmentationClassAug" / f"{name}.png"
        if split_of[name] == "train_aug" and augmented.is_file():
            return augmented
        return root / "SegmentationClass" / f"{name}.png"

    return DatasetLayout(
        images=images, splits=split_of, semantic=_labels_for(images, label_path, problems, required=True),
        stored_ids=len(label_maps.VOC_CLASSES),
        instance_pngs=_labels_for(images, lambda name, _: root / "SegmentationObject" / f"{name}.png", [], False),
        class_names=label_maps.VOC_CLASSES, problems=problems)


def _coco_images_folder(root: Path, split: str) -> Path:
    return _first_existing((root / split, root / "images" / split)) or root / split


def _check_coco_json(json_path: Path, coco: Mapping[str, Any], problems: list[DatasetProblem]) -> dict[int, dict]:
    """image id → image entry of one instances file; duplicated ids raise, annotations of unlisted images are
    problems."""
    images: dict[int, dict] = {}
    for image in coco.get("images", []):
        if image["id"] in images:
            raise DatasetError(f"{str(json_path)!r} lists image id {image['id']} twice "
                               f"({images[image['id']]['file_name']!r} and {image['file_name']!r})")
        images[image["id"]] = image
    for annotation in coco.get("annotations", []):
        if annotation["image_id"] not in images:
            problems.append(DatasetProblem(str(json_path), f"annotation {annotation.get('id')} references image id "
                                                           f"{annotation['image_id']}, which the file does not list"))
    return images


class _CocoRasteriser:
    """Semantic maps painted from COCO instances: background 0, each annotation its evaluated category (larger
    objects first, so a smaller one on top stays visible), crowd regions 255."""

    def __init__(self, annotations: Sequence[Mapping[str, Any]], category_of: Mapping[int, int], size: tuple[int, int]):
        self.annotations, self.category_of, self.size = annotations, category_of, size

    def __call__(self) -> np.ndarray:
        from pycocotools import mask as mask_utils

        height, width = self.size
        labels = np.zeros((height, width), dtype=np.uint8)
        crowd = np.zeros((height, width), dtype=bool)
        for annotation in sorted(self.annotations, key=lambda item: -float(item.get("area", 0))):
            segmentation = annotation["segmentation"]
            mask = mask_utils.decode(segmentation_rle(segmentation, height, width)).astype(bool)
            if annotation.get("iscrowd"):
                crowd |= mask
            else:
                labels[mask] = self.category_of[int(annotation["category_id"])]
        labels[crowd] = IGNORE_LABEL
        return labels


def coco_category_map(categories: Sequence[Mapping[str, Any]], mode: str) -> tuple[dict[int, int], list[dict]]:
    """A COCO file's category id → kept id, and the kept categories, for ``mode`` as_is | contiguous |
    supercategories | agnostic."""
    if mode == "supercategories":
        ordered = sorted(categories, key=lambda c: int(c["id"]))
        lacking = [c.get("name", c["id"]) for c in ordered if not c.get("supercategory")]
        if lacking:
            raise ValueError(f"dataset.classes: supercategories, but categories {lacking[:5]} have no "
                             f"'supercategory' field")
        names = list(dict.fromkeys(c["supercategory"] for c in ordered))  # in the order of their first category
        number = {name: index + 1 for index, name in enumerate(names)}
        return ({int(c["id"]): number[c["supercategory"]] for c in ordered},
                [{"id": number[name], "name": name, "supercategory": name} for name in names])
    if mode == "agnostic":
        return {int(c["id"]): 1 for c in categories}, [{"id": 1, "name": "object", "supercategory": "object"}]
    if mode == "contiguous":
        ordered = sorted(categories, key=lambda c: int(c["id"]))
        mapping = {int(c["id"]): index + 1 for index, c in enumerate(ordered)}
        return mapping, [{**c, "id": mapping[int(c["id"])]} for c in ordered]
    return {int(c["id"]): int(c["id"]) for c in categories}, [dict(c) for c in categories]


def coco_format(root: Path, *, splits: Sequence[str] | None, classes: str, subset: str | None,
                semantic: bool) -> DatasetLayout:
    """COCO 2017: images in ``root/{split}/`` (or ``root/images/{split}/``), instances in
    ``root/annotations/instances_{split}.json``; default split val2017. Crowd annotations stay marked (pycocotools
    ignores detections on them); images without annotations are kept."""
    splits = list(splits or ("val2017",))
    problems: list[DatasetProblem] = []
    per_split: dict[str, dict[str, Path]] = {}
    entries: dict[str, tuple[dict, list[dict]]] = {}
    all_categories: list[dict] = []
    json_paths = []
    for split in splits:
        json_path = root / "annotations" / f"instances_{split}.json"
        if not json_path.is_file():
            raise DatasetError(f"dataset.splits: no instances file for {split!r}: {str(json_path)!r}")
        json_paths.append(json_path)
        coco = read_json(json_path)
        listed = _check_coco_json(json_path, coco, problems)
        keep = _subset_names(root, subset, {image_id: Path(image["file_name"]).stem
                                            for image_id, image in listed.items()})
        by_image = defaultdict(list)
        for annotation in coco.get("annotations", []):
            by_image[annotation["image_id"]].append(annotation)
        folder = _coco_images_folder(root, split)
        found = {}
        for image_id, image in listed.items():
            name = Path(image["file_name"]).stem
            if keep is not None and name not in keep:
                continue
            path = folder / Path(image["file_name"]).name
            if not path.is_file():
                problems.append(DatasetProblem(str(path), f"listed in {json_path.name} (id {image_id}), but the "
                                                          "image is missing"))
                continue
            found[name] = path
            entries[name] = (image, by_image.get(image_id, []))
        per_split[split] = found
        all_categories = all_categories or coco.get("categories", [])
    images, split_of = _merge_splits(per_split)
    mode = classes if classes in ("agnostic", "supercategories") else "contiguous"
    category_of, kept = coco_category_map(all_categories, mode)
    layout = DatasetLayout(images=images, splits=split_of, categories=mode, problems=problems,
                           instances_files=json_paths, class_names=["background", *(c["name"] for c in kept)])
    if semantic:
        layout.rasterised = True
        layout.semantic = {name: _CocoRasteriser(entries[name][1], category_of,
                                                 (int(entries[name][0]["height"]), int(entries[name][0]["width"])))
                           for name in images}
    return layout


def _stuff_labels_folder(root: Path, split: str) -> Path:
    candidates = [root / folder / split for folder in ("annotations", "stuffthingmaps_trainval2017",
                                                        "stuffthingmaps")]
    return _first_existing(candidates) or candidates[0]


def cocostuff_format(root: Path, *, splits: Sequence[str] | None, classes: int, subset: str | None) -> DatasetLayout:
    """COCO-Stuff 164k: images in ``root/images/{split}/`` (or ``root/{split}/``), stuffthingmaps label PNGs in
    ``root/annotations/{split}/`` (or ``stuffthingmaps_trainval2017/{split}/``); default split val2017."""
    splits = list(splits or ("val2017",))
    keep = _subset_names(root, subset)
    per_split = {}
    for split in splits:
        folder = _first_existing((root / "images" / split, root / split)) or root / "images" / split
        found = _images_of_split(folder, split, "dataset.format cocostuff")
        per_split[split] = {name: path for name, path in found.items() if keep is None or name in keep}
    images, split_of = _merge_splits(per_split)
    problems: list[DatasetProblem] = []
    semantic = _labels_for(images, lambda name, _: _stuff_labels_folder(root, split_of[name]) / f"{name}.png",
                           problems, required=True)
    table, names, background = label_maps.coco_stuff_table(classes)
    return DatasetLayout(images=images, splits=split_of, semantic=semantic, label_map=table,
                         stored_ids=len(label_maps.COCO_THING_NAMES) + len(label_maps.COCO_STUFF_NAMES),
                         class_names=names, has_background=background, problems=problems)


_CITYSCAPES_IMAGE_SUFFIX = "_leftImg8bit"


def cityscapes_format(root: Path, *, splits: Sequence[str] | None) -> DatasetLayout:
    """Cityscapes: ``root/leftImg8bit/{split}/{city}/*_leftImg8bit.png`` with
    ``root/gtFine/{split}/{city}/*_gtFine_labelIds.png``; 27 classes (labelIds 7..33, the void ids removed);
    default splits train and val. Image names drop the ``_leftImg8bit`` suffix."""
    splits = list(splits or ("train", "val"))

    def name_of(path: Path) -> str:
        return path.stem.removesuffix(_CITYSCAPES_IMAGE_SUFFIX)

    per_split = {split: _images_of_split(root / "leftImg8bit" / split, split, "dataset.format cityscapes",
                                         name_of, recursive=True) for split in splits}
    images, split_of = _merge_splits(per_split)
    problems: list[DatasetProblem] = []

    def label_path(name: str, image: Path) -> Path:
        city = image.parent.name
        return root / "gtFine" / split_of[name] / city / f"{name}_gtFine_labelIds.png"

    table, names, background = label_maps.cityscapes_table()
    return DatasetLayout(images=images, splits=split_of,
                         semantic=_labels_for(images, label_path, problems, required=True),
                         label_map=table, stored_ids=len(label_maps.CITYSCAPES_LABEL_NAMES), class_names=names,
                         has_background=background, problems=problems)


def _lip_folder(root: Path, split: str, kind: str) -> Path:
    parents = {"images": "TrainVal_images", "segmentations": "TrainVal_parsing_annotations"}[kind]
    candidates = [root / f"{split}_{kind}", root / parents / f"{split}_{kind}", root / parents / parents /
                  f"{split}_{kind}"]
    return _first_existing(candidates) or candidates[0]


def lip_format(root: Path, *, splits: Sequence[str] | None, classes: int) -> DatasetLayout:
    """LIP (Look Into Person): ``{split}_images/`` and ``{split}_segmentations/`` at the root or inside
    ``TrainVal_images/`` and ``TrainVal_parsing_annotations/`` (as the archives unpack); default splits train and
    val."""
    splits = list(splits or ("train", "val"))
    per_split = {split: _images_of_split(_lip_folder(root, split, "images"), split, "dataset.format lip")
                 for split in splits}
    images, split_of = _merge_splits(per_split)
    problems: list[DatasetProblem] = []
    semantic = _labels_for(images, lambda name, _: _lip_folder(root, split_of[name], "segmentations") / f"{name}.png",
                           problems, required=True)
    table, names, background = label_maps.lip_table(classes)
    return DatasetLayout(images=images, splits=split_of, semantic=semantic, label_map=table,
                         stored_ids=len(label_maps.LIP_CLASSES), class_names=names, has_background=background,
                         problems=problems)


NESTED_NAME_SEPARATOR = "__"


def folder_format(root: Path, *, splits: Sequence[str] | None, images: str, masks: str | None,
                  mask_kind: str) -> DatasetLayout:
    """Any folder of photos, searched recursively (hidden files and folders skipped). An image's name is its path
    relative to the image folder, without the extension, with ``__`` for each folder separator. Split: ``all``."""
    image_folder = _resolve(root, images)
    if not image_folder.is_dir():
        raise DatasetError(f"dataset.images: no folder {str(image_folder)!r}")
    mask_folder = _resolve(root, masks)
    if mask_folder is not None and not mask_folder.is_dir():
        raise DatasetError(f"dataset.masks: no folder {str(mask_folder)!r}")

    def name_of(path: Path) -> str:
        return NESTED_NAME_SEPARATOR.join(path.relative_to(image_folder).with_suffix("").parts)

    excluded = [mask_folder] if mask_folder is not None else []
    files = FolderFiles()
    files.add(sorted(image_folder.iterdir()))
    files.add(_nested_files(image_folder, excluded))
    found = _unique_names(files.images, image_folder, name_of)
    semantic: dict[str, Path] = {}
    if mask_folder is not None:
        for name, path in found.items():
            stem = mask_folder / path.relative_to(image_folder).with_suffix("")
            mask = _first_existing(stem.with_suffix(suffix) for suffix in (".png", *sorted(IMAGE_EXTENSIONS)))
            if mask is not None:
                semantic[name] = mask
    binary = mask_kind == "binary"
    layout = DatasetLayout(images=found, splits={name: ALL_SPLIT for name in found}, semantic=semantic,
                           binary_masks=binary, class_names=("background", "foreground") if binary else None,
                           problems=files.problems, passed_over=files.passed_over)
    return _keep_splits(layout, splits, str(image_folder))
