"""The feature store: the zarr v3 layout of ``features/{variant}.zarr``, its reader (:class:`FeatureStore`, one lazy
view per store) and its writer (:func:`write_image`, :class:`StoreWriter`, :func:`write_derived_store`), which
:mod:`unseg.features.extract` and :mod:`unseg.features.crops` write through.

Store layout (``features/{variant}.zarr``)::

    /                      attrs: backbone, timm_name, weights, weights_digest, resolution, layout, patch_size,
                                  embed_dim, num_heads, num_blocks, facets, num_images, complete, unseg_version
    /{image name}/keys     (h, w, D) float16   last-block attention keys, heads concatenated
    /{image name}/queries  (h, w, D) float16
    /{image name}/values   (h, w, D) float16
    /{image name}/tokens   (h, w, D) float16   last-block output tokens after the final norm
    /{image name}/cls      (D,)      float16   CLS token after the final norm
    /{image name}/attn     (H, h, w) float16   CLS-to-patch attention of the last block, per head
    /{image name}/keys@6   (h, w, D) float16   the same facets from block 6 (0-based; tokens@i and cls@i are
                                               block i's raw output, without the final norm)
                           attrs: image_id, original_size [H0, W0], resized_size [Hs, Ws],
                                  crop_box [top, left, Hc, Wc], grid_size [h, w]

Each image's arrays are single chunks, so reading one image touches only that image's files. A store extracted
with ``quantize: uint8`` keeps each array as 8-bit codes over its own range (root attribute ``quantize``), which zarr
decodes back to float16. A store whose ``complete`` attribute is false (an interrupted extraction, a shard not yet
joined) is refused.

``order.json`` (not a zarr node) lists the images in the order they were extracted, one run per shard
(``{"runs": [[name, ...], ...]}``): the stages reading the store batch images along it
(:meth:`FeatureStore.name_batches`), so a job that computes masks while extracting one shard
(:mod:`unseg.features.fused`) forms the very batches the masks stage forms from the joined store.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import threading
import warnings
from collections.abc import Callable, Collection, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr
from tqdm.auto import tqdm

from unseg import __version__
from unseg.core.geometry import ResizeGeometry
from unseg.core.io import atomic_output
from unseg.core.reuse import link_or_copy

ORDER_FILE = "order.json"
# (zarr's numcodecs.fixedscaleoffset codec, so any zarr reader decodes them back to float16).
QUANTIZE = (None, "uint8")
# How a store may compress each chunk: not at all (None), or zstd at level 1, zarr v3's own codec (docs/benchmarks.md,
# "Storage: codecs": on 8-bit codes 23 % fewer bytes for a 24 % slower read; on float16 only 7 %).
COMPRESS = {None: None, "zstd": {"name": "zstd", "configuration": {"level": 1, "checksum": False}}}


def order_batches(runs: list[list[str]], size: int) -> list[list[str]]:
    """Consecutive batches of at most ``size`` names along each run (none spans two runs)."""
    return [run[start : start + size] for run in runs for start in range(0, len(run), size)]


class FeatureStore:
    """Lazy, read-only view of a complete feature store written by
    :func:`~unseg.features.extract.extract_features` / :func:`~unseg.features.extract.assemble_shards`.

    Reading one image's facet loads only that image's chunk.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"feature store {str(self.path)!r} does not exist")
        self.root = zarr.open_group(str(self.path), mode="r")
        if not self.root.attrs.get("complete", False):
            raise RuntimeError(
                f"feature store {str(self.path)!r} is incomplete (an interrupted extraction, or a shard that "
                f"assemble_shards has not joined yet?)"
            )
        self.attrs = dict(self.root.attrs)
        self._geometries: dict[str, ResizeGeometry] = {}  # read-only store: each image's attributes read once
        self._attributes: dict[str, dict[str, Any]] = {}

    @functools.cached_property
    def names(self) -> list[str]:
        """The image names, sorted: the store's folders that are zarr groups, listed once (the store is read-only).
        Read from the folders' ``zarr.json`` files, ~10x cheaper than zarr's own listing: files that are not zarr
        nodes sit in the store on purpose (provenance.json, Snakemake's timestamp)."""
        names = []
        for entry in os.scandir(self.path):
            metadata = Path(entry.path) / "zarr.json"
            if entry.is_dir() and metadata.is_file():
                node = json.loads(metadata.read_text())
                if node.get("node_type") == "group":
                    names.append(entry.name)
                    self._attributes[entry.name] = node.get("attributes", {})
        return sorted(names)

    def name_batches(self, size: int, only: Collection[str] | None = None) -> list[list[str]]:
        """The image names in consecutive batches of at most ``size``: along each run of ``order.json`` (a batch never
        spans two shards), or in the order of :attr:`names` for a store without one (written before it existed, or
        derived from another store). With ``only``, the batches of those names alone (the images a re-run computes,
        batched together rather than one per batch of the whole store)."""
        runs = self.order()
        if only is not None:
            runs = [[name for name in run if name in only] for run in runs]
        return order_batches(runs, size)

    def order(self) -> list[list[str]]:
        """The runs of image names the stages batch along: ``order.json``'s, else one run of :attr:`names`."""
        file = self.path / ORDER_FILE
        return json.loads(file.read_text())["runs"] if file.is_file() else [self.names]

    @property
    def patch_size(self) -> int:
        return int(self.attrs["patch_size"])

    def has(self, name: str, facet: str) -> bool:
        return facet in self.attrs["facets"] and name in self.root

    def facet(self, name: str, facet: str) -> np.ndarray:
        """One image's facet as float32: (h, w, D) for grid facets, (D,) for cls, (heads, h, w) for attn."""
        if facet not in self.attrs["facets"]:
            raise KeyError(f"facet {facet!r} is not in store {str(self.path)!r} (it has {self.attrs['facets']})")
        try:
            group = self.root[name]
        except KeyError:
            raise KeyError(f"image {name!r} is not in feature store {str(self.path)!r}") from None
        with warnings.catch_warnings():  # an 8-bit store's numcodecs codec: zarr warns it is outside the v3 spec
            warnings.filterwarnings("ignore", message="Numcodecs codecs are not in the Zarr version 3 specification")
            return np.asarray(group[facet][...], dtype=np.float32)

    def attributes(self, name: str) -> dict[str, Any]:
        """One image group's attributes (original_size, resized_size, grid_size, crop_box, image_id), read from its
        ``zarr.json`` once (zarr's own attribute read costs ~0.4 ms; the stages ask once per image or mask)."""
        if name not in self._attributes:
            metadata = self.path / name / "zarr.json"
            if not metadata.is_file():
                raise KeyError(f"image {name!r} is not in feature store {str(self.path)!r}")
            self._attributes[name] = json.loads(metadata.read_text()).get("attributes", {})
        return self._attributes[name]

    def geometry(self, name: str) -> ResizeGeometry:
        """The image's resize/crop geometry."""
        if name not in self._geometries:
            attrs = self.attributes(name)
            crop_box = attrs.get("crop_box")
            self._geometries[name] = ResizeGeometry(
                tuple(attrs["original_size"]), tuple(attrs["resized_size"]), tuple(attrs["grid_size"]),
                tuple(crop_box) if crop_box is not None else None,
            )
        return self._geometries[name]

    def image_id(self, name: str) -> int:
        return int(self.attributes(name)["image_id"])

    def stored_digest(self, name: str, facet: str) -> str:
        """sha256 of what one image's ``facet`` is as stored: its geometry (the group's attributes but its id) and
        the facet's files (metadata and chunk bytes), read as files, nothing decoded (~20x cheaper than
        :meth:`facet` through zarr): the key of a result computed from it (:mod:`unseg.core.reuse`)."""
        group = self.path / name
        digest = hashlib.sha256(json.dumps({key: value for key, value in self.attributes(name).items()
                                            if key != "image_id"}, sort_keys=True).encode())
        files = sorted(os.path.join(folder, file) for folder, _, file_names in os.walk(group / facet)
                       for file in file_names)
        for path in files:
            digest.update(f"{os.path.relpath(path, group)}\n".encode())
            with open(path, "rb") as handle:
                digest.update(handle.read())
        return digest.hexdigest()


# ------------------------------------------------------------------------------------------------------------ writing


@dataclass(frozen=True)
class ImageItem:
    """One image of an extraction: its file ``path`` ("" for a store derived from another), its group ``name`` in
    the store, its ``image_id`` and the resize/crop ``geometry`` of the ViT's input."""

    path: str
    name: str
    image_id: int
    geometry: ResizeGeometry


def quantize_uint8(array: np.ndarray) -> tuple[np.ndarray, float, float]:
    """8-bit codes of one array over its own range: (codes uint8 of ``array``'s shape, offset, scale), decoded as
    ``codes / scale + offset`` (numcodecs' FixedScaleOffset), so every value is within half a step,
    (max − min) / 510, of the original. A constant array gets scale 1. The reference of
    :func:`quantize_uint8_rows`, which the stage runs on the device."""
    values = np.asarray(array, dtype=np.float64)
    offset = float(values.min()) if values.size else 0.0
    spread = float(values.max()) - offset if values.size else 0.0
    scale = 255.0 / spread if spread > 0 else 1.0
    codes = np.clip(np.round((values - offset) * scale), 0, 255).astype(np.uint8)
    return codes, offset, scale


def quantize_uint8_rows(batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`quantize_uint8` of every row of a batch at once, on the batch's device, in the same float64
    arithmetic (so the codes, offsets and scales are exactly the reference's).

    Args:
        batch: (B, ...) float tensor (float16 values: what the float16 store would hold).

    Returns:
        codes (B, ...) uint8, offset (B,) float64, scale (B,) float64.
    """
    values = batch.to(torch.float64)
    rows = values.reshape(len(values), -1)
    offset = rows.amin(dim=1)
    spread = rows.amax(dim=1) - offset
    scale = torch.where(spread > 0, 255.0 / spread.clamp(min=torch.finfo(torch.float64).tiny), 1.0)
    shape = (-1,) + (1,) * (values.dim() - 1)
    codes = torch.round((values - offset.view(shape)) * scale.view(shape)).clamp_(0, 255).to(torch.uint8)
    return codes, offset, scale


@dataclass(frozen=True)
class QuantizedArray:
    """One array as 8-bit ``codes`` that decode as ``codes / scale + offset`` (:func:`quantize_uint8`)."""

    codes: np.ndarray
    offset: float
    scale: float


def zarr_array_metadata(shape: Sequence[int], offset_scale: tuple[float, float] | None = None,
                        compress: str | None = None) -> dict:
    """zarr v3 metadata of an uncompressed float16 array stored as one chunk (what ``zarr.create_array`` writes);
    with ``offset_scale``, stored as 8-bit codes through the ``numcodecs.fixedscaleoffset`` codec (what
    ``zarr.create_array(..., filters=[FixedScaleOffset(offset, scale, dtype="<f2", astype="|u1")])`` writes); with
    ``compress="zstd"``, the chunk compressed by zarr's zstd codec at level 1 (``compressors=[ZstdCodec(level=1)]``)."""
    codecs = [{"name": "bytes", "configuration": {"endian": "little"}}]
    if COMPRESS[compress] is not None:
        codecs.append(COMPRESS[compress])
    if offset_scale is not None:
        codecs.insert(0, {"name": "numcodecs.fixedscaleoffset",
                          "configuration": {"offset": offset_scale[0], "scale": offset_scale[1], "dtype": "<f2",
                                            "astype": "|u1"}})
    return {
        "shape": list(shape),
        "data_type": "float16",
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": list(shape)}},
        "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
        "fill_value": 0.0,
        "codecs": codecs,
        "attributes": {},
        "zarr_format": 3,
        "node_type": "array",
        "storage_transformers": [],
    }


@functools.lru_cache(maxsize=256)
def _float16_metadata_text(shape: tuple[int, ...], compress: str | None) -> str:
    """The zarr.json text of a float16 array (the same for every image of a grid size: written, not rebuilt)."""
    return json.dumps(zarr_array_metadata(shape, compress=compress))


def write_image(folder: Path, item: ImageItem, arrays: Mapping[str, np.ndarray | QuantizedArray],
                 quantize: str | None = None, compress: str | None = None) -> None:
    """One image's group as plain zarr v3 files: group metadata, and per facet its metadata and single chunk
    (float16; a :class:`QuantizedArray`, or with ``quantize="uint8"`` any array, as 8-bit codes over the array's own
    range, :func:`quantize_uint8`; with ``compress="zstd"`` the chunk zstd-compressed, as zarr's ZstdCodec does).

    Written directly rather than through zarr's API, whose per-node overhead (~5 ms) would make the writer, not
    the model, the bottleneck on a GPU; :func:`zarr_array_metadata` is tested against what zarr itself writes. The
    arrays' own buffers go to the files (no copy into bytes), so the threads writing them hold the GIL little.
    """
    geometry = item.geometry
    group = folder / item.name
    group.mkdir()
    attributes = {
        "image_id": int(item.image_id),
        "original_size": list(geometry.original_size),
        "resized_size": list(geometry.resized_size),
        "crop_box": list(geometry.box),
        "grid_size": list(geometry.grid_size),
    }
    for facet, array in arrays.items():
        if quantize == "uint8" and not isinstance(array, QuantizedArray):
            array = QuantizedArray(*quantize_uint8(array))
        if isinstance(array, QuantizedArray):
            shape = array.codes.shape
            metadata = json.dumps(zarr_array_metadata(shape, (array.offset, array.scale), compress))
            payload = np.ascontiguousarray(array.codes, dtype=np.uint8)
        else:
            shape = np.shape(array)
            metadata = _float16_metadata_text(tuple(shape), compress)
            payload = np.ascontiguousarray(array, dtype="<f2")
        chunk = group / facet / "c" / Path(*["0"] * len(shape))
        chunk.parent.mkdir(parents=True)
        (group / facet / "zarr.json").write_text(metadata)
        chunk.write_bytes(chunk_compressor(compress).encode(payload) if compress
                          else payload.reshape(-1).view(np.uint8))
    # The group's metadata last: an image directory without it is one a killed writer did not finish.
    (group / "zarr.json").write_text(json.dumps({"attributes": attributes, "zarr_format": 3, "node_type": "group"}))


@functools.lru_cache(maxsize=None)
def chunk_compressor(compress: str):
    """The numcodecs codec behind zarr v3's codec of that name (ZstdCodec wraps numcodecs.Zstd)."""
    from numcodecs import Zstd

    return Zstd(level=COMPRESS[compress]["configuration"]["level"])


class StoreWriter:
    """Writes images on background threads while the model computes the next batch (bounded backlog).

    On CUDA the device → pinned-host copies are issued asynchronously by the caller; a writer thread waits on the
    batch's event before touching the host buffers.
    """

    def __init__(self, folder: Path, threads: int, max_pending: int, quantize: str | None = None,
                 compress: str | None = None, on_written: Callable | None = None,
                 stored: Sequence[str] | None = None):
        self.folder = folder
        self.stored = None if stored is None else set(stored)  # None: every facet it is given
        self.quantize = quantize
        self.compress = compress
        self.pool = ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="feature-writer")
        self.pending: list[Future] = []  # touched by the calling thread only
        self.slots = threading.BoundedSemaphore(max(1, max_pending))
        self.on_written = on_written
        # one thread, fed in batch order: the consumer sees the batches in the order they were extracted
        self.consumer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="feature-consumer") \
            if on_written is not None else None

    def submit(self, items: Sequence[ImageItem], host: dict[str, torch.Tensor], event=None) -> None:
        self.slots.acquire()
        for future in self.pending:
            if future.done():
                future.result()  # re-raise a writer (or consumer) error in the calling thread
        self.pending = [future for future in self.pending if not future.done()]
        written = self.pool.submit(self._write_batch, items, host, event)
        self.pending.append(written)
        if self.consumer is not None:
            self.pending.append(self.consumer.submit(self._consume, items, written))

    def _consume(self, items, written: Future) -> None:
        try:
            self.on_written(items, written.result())
        finally:
            self.slots.release()  # with a consumer, a batch holds its slot until consumed: a bounded backlog

    def _write_batch(self, items, host, event) -> list[dict[str, np.ndarray]]:
        try:
            if event is not None:
                event.synchronize()
            arrays = {facet: tuple(part.numpy() for part in value) if isinstance(value, tuple) else value.numpy()
                      for facet, value in host.items()}

            def row_of(value, row: int):  # a tuple is (codes, offsets, scales) quantized on the device
                if isinstance(value, tuple):
                    return QuantizedArray(value[0][row], float(value[1][row]), float(value[2][row]))
                return value[row]

            rows = []
            for row, item in enumerate(items):
                image = {facet: row_of(value, row) for facet, value in arrays.items()}
                kept = image if self.stored is None else {f: a for f, a in image.items() if f in self.stored}
                write_image(self.folder, item, kept, self.quantize, self.compress)
                if self.on_written is not None:
                    rows.append({facet: stored_values(array, self.quantize) for facet, array in image.items()})
            return rows
        finally:
            if self.consumer is None:
                self.slots.release()

    def close(self) -> None:
        try:
            for future in self.pending:
                future.result()
        finally:
            self.pool.shutdown(wait=True)
            if self.consumer is not None:
                self.consumer.shutdown(wait=True)


def stored_values(array: np.ndarray | QuantizedArray, quantize: str | None = None) -> np.ndarray:
    """An array as :meth:`FeatureStore.facet` will read it back from the store: float32 of the float16 values, or of
    the 8-bit codes decoded as zarr decodes them (numcodecs' FixedScaleOffset: codes / scale + offset in float64,
    then float16)."""
    if quantize == "uint8" and not isinstance(array, QuantizedArray):
        array = QuantizedArray(*quantize_uint8(array))
    if isinstance(array, QuantizedArray):
        return (array.codes / array.scale + array.offset).astype(np.float16).astype(np.float32)
    return np.asarray(array, dtype=np.float16).astype(np.float32)


def link_tree(source: Path, target: Path) -> None:
    """Recreate ``source``'s files under ``target`` as hard links (a copy where the filesystem refuses links)."""
    for folder, _, files in os.walk(source):
        destination = target / Path(folder).relative_to(source)
        destination.mkdir(parents=True, exist_ok=True)
        for file in files:
            link_or_copy(Path(folder) / file, destination / file)


# The store attributes an image's arrays do not depend on (an image's reuse key leaves them out).
NOT_PER_IMAGE = ("num_images", "complete", "shard", "shard_written", "resume_key")


def image_reuse_key(attributes: Mapping[str, Any], image_digest: str, code: str) -> str:
    """sha256 naming one image's arrays in a store: its file's digest (the index's sha256), every store attribute
    the arrays depend on (backbone, weights digest, resolution, layout, facets, quantize, compress, ...) and the
    code version ``code``: an image whose key is found was extracted exactly so before."""
    store = {key: value for key, value in attributes.items() if key not in NOT_PER_IMAGE}
    text = json.dumps({"store": store, "image": image_digest, "code": code}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


class ReuseCache:
    """Hard links to the image groups of a variant's last complete store, one folder per :func:`image_reuse_key`
    (``features/{variant}.reuse/{key}/``): the workflow deletes a store before re-extracting it, and the links keep
    each unchanged image's files (no bytes copied, no space taken while the store exists) for the next extraction
    to link back in. Refreshed after each complete extraction to hold exactly that store's images."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)

    def has(self, key: str) -> bool:
        return (self.folder / key / "zarr.json").is_file()

    def adopt(self, key: str, group: Path, image_id: int) -> None:
        """Link the cached image ``key`` into the store as ``group``, with the index's ``image_id`` (ids follow the
        index's name order, so an added or removed image renumbers the others); the group's metadata is written
        anew, never through the link."""
        link_tree(self.folder / key, group)
        metadata_path = group / "zarr.json"
        metadata = json.loads(metadata_path.read_text())
        metadata["attributes"]["image_id"] = int(image_id)
        metadata_path.unlink()  # a new file, not the cached one's inode
        metadata_path.write_text(json.dumps(metadata))

    def refresh(self, store: Path, keys: Mapping[str, str]) -> None:
        """Make the cache hold the groups of ``store`` (image name → key) and nothing else."""
        self.folder.mkdir(parents=True, exist_ok=True)
        for name, key in keys.items():
            if not self.has(key):
                staging = self.folder / f".{key}.tmp"
                shutil.rmtree(staging, ignore_errors=True)
                link_tree(store / name, staging)
                shutil.rmtree(self.folder / key, ignore_errors=True)
                staging.rename(self.folder / key)
        wanted = set(keys.values())
        for entry in self.folder.iterdir():
            if entry.name not in wanted:
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()


def write_derived_store(
    store_path: str | Path,
    base: FeatureStore,
    attributes: Mapping[str, Any],
    arrays_of: Callable[[str], Mapping[str, np.ndarray]],
    progress: bool = True,
    desc: str = "derived features",
) -> Path:
    """A feature store of new facets computed from another store's images (e.g. learned embeddings), atomically.

    Every image of ``base`` keeps its id and geometry; ``arrays_of(name)`` gives its facets ((h, w, D) grids, stored
    float16). The root attributes are ``base``'s (backbone, resolution, patch size, ...) updated by ``attributes``
    (which must name the ``facets``); ``complete`` is set last.
    """
    inherited = {key: value for key, value in base.attrs.items()
                 if key not in ("complete", "resume_key", "shard", "shard_written", "shards")}
    with atomic_output(store_path) as tmp:
        root = zarr.open_group(str(tmp), mode="w")
        root.attrs.update({**inherited, **dict(attributes), "complete": False, "unseg_version": __version__})
        for name in tqdm(base.names, desc=desc, unit="img", disable=not progress):
            item = ImageItem("", name, base.image_id(name), base.geometry(name))
            write_image(Path(tmp), item, dict(arrays_of(name)))
        root.attrs["num_images"] = len(base.names)
        root.attrs["complete"] = True
    return Path(store_path)
