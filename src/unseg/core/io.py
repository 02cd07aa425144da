"""Small, shared readers and writers: images, palette label PNGs, COCO RLE, atomic files.

Every artifact writer in the package goes through :func:`atomic_output`, so an interrupted job never leaves a
file (or folder) under its final name that a later run would trust.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from pycocotools import mask as mask_utils

IGNORE_LABEL = 255


class ImageReadError(RuntimeError):
    """An input image (or label map) could not be decoded; the message names the file."""


# EXIF orientations 5-8 rotate by 90 degrees: the upright picture has the header's width and height swapped.
_TRANSPOSING_ORIENTATIONS = frozenset({5, 6, 7, 8})
_EXIF_ORIENTATION = 0x0112
_READ_ERRORS = (OSError, UnidentifiedImageError, SyntaxError, ValueError, Image.DecompressionBombError)


def _orientation(image: Image.Image) -> int:
    try:
        return int(image.getexif().get(_EXIF_ORIENTATION, 1))
    except Exception:  # a malformed EXIF block is no reason to refuse the pixels
        return 1


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(height, width) of the image as it is displayed (EXIF orientation applied), from the header only.

    Raises:
        ImageReadError: naming ``path`` when it is missing or not an image.
    """
    try:
        with Image.open(path) as image:
            image.verify()  # a cheap structural check, so that a corrupt file fails before any job output appears
        with Image.open(path) as image:  # verify() leaves the image unusable; reading the EXIF needs a fresh one
            width, height = image.size
            if _orientation(image) in _TRANSPOSING_ORIENTATIONS:
                width, height = height, width
    except _READ_ERRORS as error:
        raise ImageReadError(f"cannot read image {str(path)!r}: {error}") from None
    return int(height), int(width)


def to_rgb(image: Image.Image) -> np.ndarray:
    """A decoded PIL image of any mode as (H, W, 3) uint8 RGB.

    16-bit and 32-bit integer grayscale are scaled to 8 bits (65535 → 255; a 32-bit image whose values stay within
    0..255 is taken as 8-bit), float images in [0, 1] are scaled by 255 (others clipped to 0..255), alpha (RGBA, LA,
    palette transparency) is dropped, CMYK is converted by PIL.
    """
    mode = image.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        values = np.asarray(image, dtype=np.float64)
        if mode.startswith("I;16") or (mode == "I" and values.max(initial=0) > 255):
            values = values / 257.0  # 16-bit range onto 8 bits
        elif mode == "F" and values.max(initial=0) <= 1.0:
            values = values * 255.0
        gray = np.clip(np.round(values), 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if mode in ("P", "PA", "LA", "La", "RGBa") or "transparency" in image.info:
        image = image.convert("RGBA")
    return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image as RGB, upright (its EXIF orientation applied, as viewers show it).

    Any mode is accepted (:func:`to_rgb`): grayscale, 16-bit, palette, RGBA, CMYK.

    Returns:
        (H, W, 3) uint8 array.

    Raises:
        ImageReadError: naming ``path`` when the file is missing or not a decodable image.
    """
    try:
        with Image.open(path) as image:
            upright = ImageOps.exif_transpose(image) if _orientation(image) != 1 else image
            return to_rgb(upright)
    except _READ_ERRORS as error:
        raise ImageReadError(f"cannot read image {str(path)!r}: {error}") from None


def voc_palette(num_colors: int = 256) -> np.ndarray:
    """The PASCAL VOC colour map: (num_colors, 3) uint8, index 0 black, 255 the ignore colour."""
    palette = np.zeros((num_colors, 3), dtype=np.uint8)
    for index in range(num_colors):
        value, red, green, blue = index, 0, 0, 0
        for bit in range(8):
            red |= ((value >> 0) & 1) << (7 - bit)
            green |= ((value >> 1) & 1) << (7 - bit)
            blue |= ((value >> 2) & 1) << (7 - bit)
            value >>= 3
        palette[index] = (red, green, blue)
    return palette


@functools.lru_cache(maxsize=1)
def _palette_list() -> list[int]:
    return voc_palette().reshape(-1).tolist()


def write_label_png(path: str | os.PathLike, labels: np.ndarray, atomic: bool = True) -> None:
    """Write an (H, W) uint8 label map as a palette PNG (VOC colours; 255 = ignore), atomically; ``atomic=False``
    for a file inside a folder that is itself written atomically (:func:`atomic_output`), where a per-file
    temporary would only cost a listing of the folder per file (quadratic in the number of images)."""
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"label map for {str(path)!r} must be 2-D, got shape {labels.shape}")
    if labels.dtype != np.uint8:
        if labels.min(initial=0) < 0 or labels.max(initial=0) > 255:
            raise ValueError(f"labels for {str(path)!r} must lie in 0..255")
        labels = labels.astype(np.uint8)
    image = Image.fromarray(labels, mode="P")
    image.putpalette(_palette_list())
    if not atomic:
        image.save(path, format="PNG")
        return
    with atomic_output(path) as tmp:
        image.save(tmp, format="PNG")


def read_label_png(path: str | os.PathLike) -> np.ndarray:
    """Read a label PNG (palette indices, or grey values) as an (H, W) uint8 array."""
    try:
        with Image.open(path) as image:
            if image.mode not in ("P", "L", "I", "I;16"):
                image = image.convert("L")
            return np.asarray(image).astype(np.uint8)
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as error:
        raise ImageReadError(f"cannot read label map {str(path)!r}: {error}") from None


def encode_rle(mask: np.ndarray) -> dict[str, Any]:
    """COCO run-length encoding of an (H, W) boolean mask, JSON-ready (``counts`` is a str)."""
    rle = mask_utils.encode(np.asfortranarray(np.asarray(mask, dtype=np.uint8)))
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode("ascii")}


def segmentation_rle(segmentation: Any, height: int, width: int) -> dict[str, Any]:
    """A COCO segmentation (polygons, uncompressed or compressed RLE) of an image of ``height`` × ``width`` as a
    compressed RLE with bytes counts (what pycocotools' ``iou``, ``decode`` and ``merge`` read).

    Raises:
        ValueError: a compressed RLE of another size than the image's.
    """
    if isinstance(segmentation, list):  # polygons
        return mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    counts = segmentation["counts"]
    if isinstance(counts, list):  # uncompressed RLE
        return mask_utils.frPyObjects(segmentation, height, width)
    size = [int(segmentation["size"][0]), int(segmentation["size"][1])]
    if size != [height, width]:
        raise ValueError(f"mask of size {size} on an image of size {[height, width]}")
    return {"size": size, "counts": counts.encode("ascii") if isinstance(counts, str) else counts}


def decode_rle(rle: dict[str, Any]) -> np.ndarray:
    """Inverse of :func:`encode_rle`: an (H, W) bool mask."""
    counts = rle["counts"]
    compressed = {"size": rle["size"], "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
    return mask_utils.decode(compressed).astype(bool)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


def stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """The temporary siblings that killed writers of ``path`` left behind (``.{name}.tmp-*``), oldest first."""
    final = Path(path)
    if not final.parent.is_dir():
        return []
    prefix = f".{final.name}.tmp-"
    found = [entry for entry in final.parent.iterdir() if entry.name.startswith(prefix)]
    return sorted(found, key=lambda entry: entry.stat().st_mtime)


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, reuse: Callable[[Path], bool] | None = None) -> Iterator[Path]:
    """Yield a temporary sibling path; on success move it onto ``path`` (file or folder), else remove it.

    The final name appears only after the whole artifact is written, so no half-written artifact is ever
    mistaken for a complete one. What earlier, killed writers of ``path`` left (:func:`stale_temporaries`) is
    removed first, so a re-run leaves no leftovers; with ``reuse``, the newest leftover for which ``reuse(leftover)``
    is true is instead moved to the yielded path (which then exists), for a writer that can continue it.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-{uuid.uuid4().hex[:8]}{final.suffix}")
    for leftover in reversed(stale_temporaries(final)):
        if reuse is not None and not tmp.exists() and reuse(leftover):
            os.replace(leftover, tmp)
        else:
            _remove(leftover)
    try:
        yield tmp
        if final.is_dir() and not final.is_symlink():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except OSError as error:
        if error.errno == errno.ENOSPC:  # say which artifact, and that nothing half-written stays under its name
            raise OSError(errno.ENOSPC, f"no space left on the device while writing {str(final)!r}; the partial "
                          "output was removed, free space and re-run") from error
        raise
    finally:
        _remove(tmp)


def write_json(path: str | os.PathLike, obj: Any, indent: int | None = 1) -> None:
    """Write JSON atomically."""
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=indent))


def read_json(path: str | os.PathLike) -> Any:
    with open(path) as handle:
        return json.load(handle)



def read_saliency(saliency_dir: str | Path, name: str) -> np.ndarray:
    """(H0, W0) float32 soft foreground in [0, 1]: ``saliency_dir/{name}.png`` as the saliency stage writes it."""
    path = Path(saliency_dir) / f"{name}.png"
    with Image.open(path) as image:
        return np.asarray(image, dtype=np.float32) / 255.0
