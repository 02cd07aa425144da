"""A small synthetic segmentation dataset in PASCAL VOC layout, with COCO instance ground truth.

The scenes are built so that a pretrained self-supervised ViT (DINOv2 ViT-S/14 at 224 px, a 16x16 token grid)
can separate objects from the background and the classes from each other:

* every class is one shape family with its own saturated colour and its own fine texture (period well below the
  14 px patch, so a patch of one object looks like every other patch of that class);
* objects are large (diameter about 0.2-0.45 of the image side), 1..``max_objects`` per image, several of the
  same class allowed, overlapping little: a later object occludes an earlier one, but no object is hidden by more
  than 20% of its area, nor lies more than 20% on top of earlier ones;
* backgrounds are muted, greyish, low-contrast: smooth colour gradients, blurry noise, sometimes faint stripes.

Layout written under ``root``::

    JPEGImages/synth_0000.jpg             RGB, JPEG quality 95
    SegmentationClass/synth_0000.png      palette PNG: 0 background, 1..num_classes, 255 ignore band
    SegmentationObject/synth_0000.png     palette PNG: 0 background, 1..n instance (paint order), 255 ignore band
    ImageSets/Segmentation/{train,val,trainval}.txt
    annotations/instances.json            COCO ground truth of the labelled (visible, band-free) instance masks

The ignore band (255) is 1 px wide below 192 px image size and 2 px from 192 px on. It lies on the outer side of
each visible object: on the background next to the object, and on the occluded object next to its occluder (where
an occluded object, its occluder and the background meet, the two bands add up). So a COCO mask is exactly
``SegmentationObject == instance id``, and an object nobody occludes keeps its whole shape.

Within an image, the COCO annotations are listed in instance-id order (annotation k of the image is instance k of
its SegmentationObject PNG), and annotation ids count up from 1 over the images in name order.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils
from scipy import ndimage

from unseg.core.io import (
    IGNORE_LABEL,
    atomic_output,
    encode_rle,
    write_json,
    write_label_png,
)

CATEGORY_NAMES: tuple[str, ...] = ("disc", "square", "triangle", "star", "cross", "hexagon")
"""Class names, category id i+1 for CATEGORY_NAMES[i]; one shape family per class."""

MAX_CLASSES = len(CATEGORY_NAMES)

# Objects whose labelled visible area falls below this fraction of the image are not drawn at all.
MIN_VISIBLE_FRACTION = 0.01
# A placement is rejected when earlier objects cover more than this fraction of it, or when an earlier object would
# end up hidden (by all later objects together) by more than this fraction of its area.
MAX_OVERLAP_FRACTION = 0.20
# Object diameter as a fraction of the image side.
DIAMETER_RANGE = (0.20, 0.45)
PLACEMENT_ATTEMPTS = 60
SUPERSAMPLING = 4
JPEG_QUALITY = 95
IMAGE_NOISE_SIGMA = 2.0

# Per class: base colour, texture colour (RGB, 0..255).
_CLASS_COLOURS: tuple[tuple[tuple[int, int, int], tuple[int, int, int]], ...] = (
    ((215, 70, 30), (250, 160, 60)),  # disc: warm red-orange, fine stripes
    ((30, 65, 200), (110, 160, 245)),  # square: blue, checker
    ((35, 150, 50), (175, 235, 150)),  # triangle: green, dots
    ((225, 185, 20), (250, 240, 150)),  # star: yellow, concentric rings
    ((135, 40, 170), (215, 150, 235)),  # cross: purple, cross-hatch
    ((20, 165, 180), (160, 235, 235)),  # hexagon: cyan, wavy stripes
)


@dataclass
class _PlacedObject:
    class_index: int  # 0-based class
    coverage: np.ndarray  # (H, W) float32 in [0, 1], anti-aliased area coverage of each pixel
    mask: np.ndarray  # (H, W) bool, coverage >= 0.5
    centre: tuple[float, float]  # (x, y) in pixels
    radius: float
    angle: float


def generate_synthetic_dataset(
    root: str | os.PathLike,
    num_images: int = 24,
    image_size: int = 224,
    num_classes: int = 3,
    max_objects: int = 4,
    val_fraction: float = 0.5,
    seed: int = 0,
) -> dict[str, Any]:
    """Write a deterministic synthetic VOC-layout dataset (see the module docstring) under ``root``.

    Each file is written atomically; ``annotations/instances.json`` is written last. Files of an earlier, larger
    run under the same root are not removed.

    Args:
        root: output folder (created if missing).
        num_images: number of images, named ``synth_0000`` ...
        image_size: side of the square images in pixels (at least 32).
        num_classes: number of object classes, 1..6.
        max_objects: each image gets 1..max_objects objects (fewer when a placement fails or an object is hidden).
        val_fraction: fraction of the images in ``val.txt`` (rounded; both splits non-empty when 0 < f < 1).
        seed: non-negative integer; the same seed gives byte-identical label PNGs and annotations.

    Returns:
        Summary: ``num_images``, ``num_train``, ``num_val``, ``num_instances``, ``instances_per_class``
        (name -> count), ``images_per_class`` (name -> images containing that class), ``image_size``, ``seed``,
        ``root``.
    """
    _check_arguments(num_images, image_size, num_classes, max_objects, val_fraction, seed)
    root = Path(root)
    names = [f"synth_{index:04d}" for index in range(num_images)]
    boundary_width = 1 if image_size < 192 else 2

    coco_images: list[dict[str, Any]] = []
    coco_annotations: list[dict[str, Any]] = []
    instances_per_class = [0] * num_classes
    images_per_class = [0] * num_classes
    for image_index, name in enumerate(names):
        rng = np.random.default_rng([seed, 1, image_index])
        image, semantic_labels, instance_labels, instance_classes = _render_scene(
            rng, image_size, num_classes, max_objects, boundary_width
        )
        with atomic_output(root / "JPEGImages" / f"{name}.jpg") as tmp:
            Image.fromarray(image, mode="RGB").save(tmp, format="JPEG", quality=JPEG_QUALITY)
        write_label_png(root / "SegmentationClass" / f"{name}.png", semantic_labels)
        write_label_png(root / "SegmentationObject" / f"{name}.png", instance_labels)

        image_id = image_index + 1
        coco_images.append(
            {"id": image_id, "file_name": f"JPEGImages/{name}.jpg", "width": image_size, "height": image_size}
        )
        for instance_id, class_index in enumerate(instance_classes, start=1):
            instance_mask = instance_labels == instance_id
            rle = encode_rle(instance_mask)
            bbox = mask_utils.toBbox({"size": rle["size"], "counts": rle["counts"].encode("ascii")})
            coco_annotations.append(
                {
                    "id": len(coco_annotations) + 1,
                    "image_id": image_id,
                    "category_id": class_index + 1,
                    "segmentation": rle,
                    "area": int(instance_mask.sum()),
                    "bbox": [float(value) for value in bbox],
                    "iscrowd": 0,
                }
            )
            instances_per_class[class_index] += 1
        for class_index in set(instance_classes):
            images_per_class[class_index] += 1

    val_names, train_names = _split_names(names, val_fraction, seed)
    split_folder = root / "ImageSets" / "Segmentation"
    for split_name, split_names in (("train", train_names), ("val", val_names), ("trainval", names)):
        with atomic_output(split_folder / f"{split_name}.txt") as tmp:
            tmp.write_text("".join(f"{name}\n" for name in sorted(split_names)))

    categories = [
        {"id": class_index + 1, "name": CATEGORY_NAMES[class_index], "supercategory": "shape"}
        for class_index in range(num_classes)
    ]
    coco = {
        "info": {"description": "unseg synthetic shapes", "seed": seed, "image_size": image_size},
        "images": coco_images,
        "annotations": coco_annotations,
        "categories": categories,
    }
    write_json(root / "annotations" / "instances.json", coco, indent=None)

    return {
        "root": str(root),
        "num_images": num_images,
        "num_train": len(train_names),
        "num_val": len(val_names),
        "num_instances": len(coco_annotations),
        "instances_per_class": {CATEGORY_NAMES[i]: instances_per_class[i] for i in range(num_classes)},
        "images_per_class": {CATEGORY_NAMES[i]: images_per_class[i] for i in range(num_classes)},
        "image_size": image_size,
        "seed": seed,
    }


def _check_arguments(
    num_images: int, image_size: int, num_classes: int, max_objects: int, val_fraction: float, seed: int
) -> None:
    if num_images < 1:
        raise ValueError(f"num_images must be at least 1, got {num_images}")
    if image_size < 32:
        raise ValueError(f"image_size must be at least 32 px, got {image_size}")
    if not 1 <= num_classes <= MAX_CLASSES:
        raise ValueError(f"num_classes must lie in 1..{MAX_CLASSES}, got {num_classes}")
    if max_objects < 1:
        raise ValueError(f"max_objects must be at least 1, got {max_objects}")
    if not 0.0 <= val_fraction <= 1.0:
        raise ValueError(f"val_fraction must lie in [0, 1], got {val_fraction}")
    if int(seed) != seed or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")


def _split_names(names: list[str], val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Deterministic (val names, train names), each sorted."""
    num_val = int(round(len(names) * val_fraction))
    if 0.0 < val_fraction < 1.0 and len(names) >= 2:
        num_val = min(max(num_val, 1), len(names) - 1)
    order = np.random.default_rng([seed, 2]).permutation(len(names))
    val_names = sorted(names[i] for i in order[:num_val])
    train_names = sorted(names[i] for i in order[num_val:])
    return val_names, train_names


# ---------------------------------------------------------------------------------------------------------------
# Scene rendering


def _render_scene(
    rng: np.random.Generator, image_size: int, num_classes: int, max_objects: int, boundary_width: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[int]]:
    """One scene.

    Returns:
        image: (H, W, 3) uint8 RGB.
        semantic_labels: (H, W) uint8, 0 background, 1..num_classes, 255 ignore band.
        instance_labels: (H, W) uint8, 0 background, 1..n instances in paint order, 255 ignore band.
        instance_classes: n 0-based class indices, instance k+1 has class instance_classes[k].
    """
    image = _background(rng, image_size)
    objects = _place_objects(rng, image_size, num_classes, max_objects)

    # Drop objects whose labelled visible part is tiny; removing one only enlarges the others, but the band can
    # shift, so repeat until stable.
    min_area = MIN_VISIBLE_FRACTION * image_size * image_size
    while True:
        instance_labels = _instance_labels(objects, image_size, boundary_width)
        areas = np.bincount(instance_labels.reshape(-1), minlength=256)[1 : len(objects) + 1]
        keep = [area >= min_area for area in areas]
        if all(keep):
            break
        objects = [obj for obj, kept in zip(objects, keep) if kept]

    for obj in objects:
        appearance = _object_appearance(rng, obj, image_size)
        alpha = obj.coverage[:, :, None]
        image = image * (1.0 - alpha) + appearance * alpha

    image = image + rng.normal(0.0, IMAGE_NOISE_SIGMA, size=image.shape)
    image_uint8 = np.clip(np.rint(image), 0, 255).astype(np.uint8)

    instance_classes = [obj.class_index for obj in objects]
    class_lookup = np.zeros(256, dtype=np.uint8)
    class_lookup[1 : len(objects) + 1] = [class_index + 1 for class_index in instance_classes]
    class_lookup[IGNORE_LABEL] = IGNORE_LABEL
    semantic_labels = class_lookup[instance_labels]
    return image_uint8, semantic_labels, instance_labels, instance_classes


def _instance_labels(objects: list[_PlacedObject], image_size: int, boundary_width: int) -> np.ndarray:
    """(H, W) uint8: later objects over earlier ones, then the 255 band on the outer side of each visible object."""
    painted = np.zeros((image_size, image_size), dtype=np.uint8)
    for instance_id, obj in enumerate(objects, start=1):
        painted[obj.mask] = instance_id
    band = np.zeros_like(painted, dtype=bool)
    cross = ndimage.generate_binary_structure(2, 1)
    for instance_id in range(1, len(objects) + 1):
        around = ndimage.binary_dilation(painted == instance_id, structure=cross, iterations=boundary_width)
        band |= around & (painted < instance_id)
    labels = painted.copy()
    labels[band] = IGNORE_LABEL
    return labels


def _background(rng: np.random.Generator, image_size: int) -> np.ndarray:
    """(H, W, 3) float64 muted background: colour gradient + blurry low-contrast noise (+ faint stripes)."""
    size = image_size
    grey = rng.uniform(90.0, 175.0)
    first = grey + rng.normal(0.0, 10.0, size=3)
    second = first + rng.uniform(-30.0, 30.0) + rng.normal(0.0, 14.0, size=3)
    first, second = _desaturate(first, 0.6), _desaturate(second, 0.6)

    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    direction = rng.uniform(0.0, 2.0 * math.pi)
    projection = xs * math.cos(direction) + ys * math.sin(direction)
    t = (projection - projection.min()) / max(np.ptp(projection), 1e-9)
    image = first[None, None, :] * (1.0 - t[:, :, None]) + second[None, None, :] * t[:, :, None]

    coarse_cells = int(rng.integers(4, 8))
    coarse = rng.normal(0.0, 1.0, size=(coarse_cells, coarse_cells, 3))
    coarse[:, :, :] = 0.7 * coarse[:, :, :1] + 0.3 * coarse  # mostly luminance, a little colour
    blurry = ndimage.zoom(coarse, (size / coarse_cells, size / coarse_cells, 1), order=3, mode="nearest")
    image += rng.uniform(4.0, 9.0) * blurry[:size, :size, :]

    fine = ndimage.gaussian_filter(rng.normal(0.0, 1.0, size=(size, size)), sigma=1.0)
    image += rng.uniform(2.0, 4.0) * fine[:, :, None] / max(fine.std(), 1e-9)

    if rng.random() < 0.5:
        period = rng.uniform(8.0, 24.0) * size / 224.0 + 3.0
        angle = rng.uniform(0.0, math.pi)
        phase = 2.0 * math.pi * (xs * math.cos(angle) + ys * math.sin(angle)) / period
        image += rng.uniform(2.0, 5.0) * np.sin(phase)[:, :, None]
    return np.clip(image, 0.0, 255.0)


def _desaturate(colour: np.ndarray, keep: float) -> np.ndarray:
    mean = colour.mean()
    return mean + keep * (colour - mean)


def _place_objects(
    rng: np.random.Generator, image_size: int, num_classes: int, max_objects: int
) -> list[_PlacedObject]:
    """1..max_objects objects in paint order (fewer when placements keep failing).

    A placement is rejected when it covers more than MAX_OVERLAP_FRACTION of its own area with earlier objects, or
    when it would leave an earlier object hidden by more than MAX_OVERLAP_FRACTION of that object's area in total.
    """
    num_objects = int(rng.integers(1, max_objects + 1))
    placed: list[_PlacedObject] = []
    visible_masks: list[np.ndarray] = []  # (H, W) bool, the part of each placed object not hidden by later ones
    for _ in range(num_objects):
        class_index = int(rng.integers(0, num_classes))
        for _attempt in range(PLACEMENT_ATTEMPTS):
            radius = 0.5 * image_size * rng.uniform(*DIAMETER_RANGE)
            centre = (rng.uniform(radius, image_size - radius), rng.uniform(radius, image_size - radius))
            angle = rng.uniform(0.0, 2.0 * math.pi)
            vertices = _shape_vertices(rng, class_index, centre, radius, angle)
            coverage = _polygon_coverage(vertices, image_size)
            mask = coverage >= 0.5
            area = int(np.count_nonzero(mask))
            if area == 0 or not _overlap_ok(mask, area, placed, visible_masks):
                continue
            visible_masks = [visible & ~mask for visible in visible_masks]
            visible_masks.append(mask.copy())
            placed.append(_PlacedObject(class_index, coverage, mask, centre, radius, angle))
            break
    return placed


def _overlap_ok(
    mask: np.ndarray, area: int, placed: list[_PlacedObject], visible_masks: list[np.ndarray]
) -> bool:
    """Whether a new (H, W) bool ``mask`` of ``area`` pixels may go on top of the ``placed`` objects."""
    covered = 0  # the visible parts are disjoint, so this sums to |mask & union of earlier objects|
    for other, visible in zip(placed, visible_masks):
        newly_hidden = int(np.count_nonzero(mask & visible))
        other_area = int(np.count_nonzero(other.mask))
        hidden_after = other_area - int(np.count_nonzero(visible)) + newly_hidden
        if hidden_after > MAX_OVERLAP_FRACTION * other_area:
            return False
        covered += newly_hidden
    return covered <= MAX_OVERLAP_FRACTION * area


def _shape_vertices(
    rng: np.random.Generator, class_index: int, centre: tuple[float, float], radius: float, angle: float
) -> np.ndarray:
    """(V, 2) float64 polygon vertices (x, y) in image pixels of the class's shape family."""
    if class_index == 0:  # disc / ellipse
        theta = np.linspace(0.0, 2.0 * math.pi, 96, endpoint=False)
        local = np.stack([radius * np.cos(theta), radius * rng.uniform(0.65, 1.0) * np.sin(theta)], axis=1)
    elif class_index == 1:  # square / rectangle
        half_width = 0.75 * radius
        half_height = half_width * rng.uniform(0.65, 1.0)
        local = np.array(
            [[-half_width, -half_height], [half_width, -half_height], [half_width, half_height],
             [-half_width, half_height]]
        )
    elif class_index == 2:  # triangle, roughly equilateral
        theta = np.array([0.0, 2.0, 4.0]) * math.pi / 3.0 + rng.uniform(-0.2, 0.2, size=3)
        local = 1.05 * radius * np.stack([np.cos(theta), np.sin(theta)], axis=1)
    elif class_index == 3:  # five-pointed star
        theta = np.arange(10) * math.pi / 5.0
        radii = np.where(np.arange(10) % 2 == 0, radius, radius * rng.uniform(0.45, 0.55))
        local = np.stack([radii * np.cos(theta), radii * np.sin(theta)], axis=1)
    elif class_index == 4:  # plus-shaped cross
        arm, half = radius, radius * rng.uniform(0.28, 0.36)
        local = np.array(
            [[-half, -arm], [half, -arm], [half, -half], [arm, -half], [arm, half], [half, half], [half, arm],
             [-half, arm], [-half, half], [-arm, half], [-arm, -half], [-half, -half]]
        )
    elif class_index == 5:  # hexagon
        theta = np.arange(6) * math.pi / 3.0
        local = radius * np.stack([np.cos(theta), np.sin(theta)], axis=1)
    else:
        raise ValueError(f"no shape family for class index {class_index}")
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    return local @ rotation.T + np.asarray(centre)[None, :]


def _polygon_coverage(vertices: np.ndarray, image_size: int) -> np.ndarray:
    """(H, W) float32 fraction of each pixel covered by the polygon, from SUPERSAMPLING x SUPERSAMPLING samples."""
    factor = SUPERSAMPLING
    canvas = Image.new("L", (image_size * factor, image_size * factor), 0)
    # Sample (a, b) of the fine grid sits at image coordinate ((b + 0.5) / factor, (a + 0.5) / factor).
    fine_vertices = [(float(x * factor - 0.5), float(y * factor - 0.5)) for x, y in vertices]
    ImageDraw.Draw(canvas).polygon(fine_vertices, fill=255)
    fine = np.asarray(canvas, dtype=np.float32) / 255.0
    return fine.reshape(image_size, factor, image_size, factor).mean(axis=(1, 3))


def _object_appearance(rng: np.random.Generator, obj: _PlacedObject, image_size: int) -> np.ndarray:
    """(H, W, 3) float64 colour of the object (texture in object coordinates, colour jitter, soft shading)."""
    base, accent = (np.asarray(colour, dtype=np.float64) for colour in _CLASS_COLOURS[obj.class_index])
    brightness = rng.uniform(0.88, 1.08)
    channel_jitter = rng.normal(0.0, 8.0, size=3)
    base = np.clip(base * brightness + channel_jitter, 0.0, 255.0)
    accent = np.clip(accent * brightness + channel_jitter, 0.0, 255.0)

    ys, xs = np.mgrid[0:image_size, 0:image_size].astype(np.float64) + 0.5
    dx, dy = xs - obj.centre[0], ys - obj.centre[1]
    u = dx * math.cos(obj.angle) + dy * math.sin(obj.angle)
    v = -dx * math.sin(obj.angle) + dy * math.cos(obj.angle)
    scale = max(image_size / 224.0, 0.45)
    accent_weight = _TEXTURES[obj.class_index](u, v, scale)

    colour = base[None, None, :] * (1.0 - accent_weight[:, :, None]) + accent[None, None, :] * accent_weight[:, :, None]
    light_direction = rng.uniform(0.0, 2.0 * math.pi)
    shading = 1.0 + 0.08 * (dx * math.cos(light_direction) + dy * math.sin(light_direction)) / obj.radius
    return np.clip(colour * shading[:, :, None], 0.0, 255.0)


def _soft_square_wave(phase: np.ndarray, sharpness: float = 3.0) -> np.ndarray:
    """Weight in [0, 1] from a sine of ``phase`` (radians), sharpened towards a square wave."""
    return 0.5 + 0.5 * np.tanh(sharpness * np.sin(phase)) / math.tanh(sharpness)


def _texture_stripes(u: np.ndarray, v: np.ndarray, scale: float) -> np.ndarray:
    return _soft_square_wave(2.0 * math.pi * u / (5.0 * scale))


def _texture_checker(u: np.ndarray, v: np.ndarray, scale: float) -> np.ndarray:
    cell = 7.0 * scale
    return ((np.floor(u / cell) + np.floor(v / cell)) % 2.0).astype(np.float64) * 0.85


def _texture_dots(u: np.ndarray, v: np.ndarray, scale: float) -> np.ndarray:
    spacing = 8.0 * scale
    du = u - spacing * np.round(u / spacing)
    dv = v - spacing * np.round(v / spacing)
    distance = np.hypot(du, dv)
    dot_radius = 0.32 * spacing
    return np.clip(dot_radius + 0.5 - distance, 0.0, 1.0)


def _texture_rings(u: np.ndarray, v: np.ndarray, scale: float) -> np.ndarray:
    return _soft_square_wave(2.0 * math.pi * np.hypot(u, v) / (6.0 * scale))


def _texture_cross_hatch(u: np.ndarray, v: np.ndarray, scale: float) -> np.ndarray:
    period = 6.0 * scale
    first = _soft_square_wave(2.0 * math.pi * (u + v) / (math.sqrt(2.0) * period), sharpness=4.0)
    second = _soft_square_wave(2.0 * math.pi * (u - v) / (math.sqrt(2.0) * period), sharpness=4.0)
    return np.maximum(first, second) ** 2


def _texture_waves(u: np.ndarray, v: np.ndarray, scale: float) -> np.ndarray:
    period = 6.0 * scale
    return _soft_square_wave(2.0 * math.pi * (v + 0.35 * period * np.sin(2.0 * math.pi * u / (3.0 * period))) / period)


_TEXTURES: tuple[Callable[[np.ndarray, np.ndarray, float], np.ndarray], ...] = (
    _texture_stripes,
    _texture_checker,
    _texture_dots,
    _texture_rings,
    _texture_cross_hatch,
    _texture_waves,
)
