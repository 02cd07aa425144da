"""Feature extraction from a timm ViT into a zarr v3 store, and lazy reading of that store.

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

Each image's arrays are single chunks, so reading one image touches only that image's files.

Geometry: an image (H0, W0) is resized to (Hs, Ws) and the ViT sees the crop ``crop_box`` of it, Hc = h * patch,
Wc = w * patch. Layout ``"resize"`` rounds both resized sides to patch multiples (no crop); layout ``"crop"`` (as
Deep Spectral Methods) keeps the exact aspect ratio and crops the bottom/right remainder below one patch.

Sharded extraction: :func:`extract_features` with ``shard=(i, n)`` writes a shard store (``complete`` stays
false, so :class:`FeatureStore` refuses it); :func:`assemble_shards` hard-links the shards' per-image chunk files
into the final store and only then marks it complete.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import sys
import threading
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
import zarr
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from . import __version__
from .io import ImageReadError, atomic_output, read_image

GRID_FACETS = ("keys", "queries", "values", "tokens")
BASE_FACETS = GRID_FACETS + ("cls", "attn")
ALL_FACETS = BASE_FACETS  # facet names without a block suffix; "name@block" adds any block
LAYOUTS = ("resize", "crop")
FACET_PATTERN = re.compile(r"^(keys|queries|values|tokens|cls|attn)(?:@(-?[0-9]+))?$")
# Attributes that must agree between the shards of one store.
SHARED_ATTRS = ("backbone", "timm_name", "weights", "weights_digest", "resolution", "layout", "patch_size",
                "embed_dim", "num_heads", "num_blocks", "facets")


@dataclass(frozen=True)
class ResizeGeometry:
    """How an image became the ViT's input: original (H0, W0) → resized (Hs, Ws) → crop → token grid (h, w).

    ``crop_box`` is (top, left, Hc, Wc) in resized pixels; None means the whole resized image (Hc, Wc) = (Hs, Ws).
    """

    original_size: tuple[int, int]
    resized_size: tuple[int, int]
    grid_size: tuple[int, int]
    crop_box: tuple[int, int, int, int] | None = None

    @property
    def box(self) -> tuple[int, int, int, int]:
        """(top, left, Hc, Wc) of the ViT input inside the resized image."""
        return self.crop_box if self.crop_box is not None else (0, 0, *self.resized_size)

    @property
    def input_size(self) -> tuple[int, int]:
        """(Hc, Wc): the ViT input size, multiples of the patch size."""
        return self.box[2], self.box[3]


def resize_geometry(
    original_size: tuple[int, int], short_side: int, patch_size: int, layout: str = "resize"
) -> ResizeGeometry:
    """Where an image goes: scale the short side to ``short_side`` keeping the aspect ratio, then fit the patch grid.

    Args:
        original_size: (H0, W0) of the image in pixels.
        short_side: target short side in pixels.
        layout: ``"resize"`` rounds both sides to the nearest patch multiple (at least one patch; the aspect ratio
            is kept up to that rounding); ``"crop"`` resizes to the exact aspect ratio and crops the bottom and
            right remainders (below one patch), as Deep Spectral Methods does.
    """
    height, width = int(original_size[0]), int(original_size[1])
    scale = short_side / min(height, width)
    if layout == "resize":
        grid_h = max(1, round(height * scale / patch_size))
        grid_w = max(1, round(width * scale / patch_size))
        return ResizeGeometry((height, width), (grid_h * patch_size, grid_w * patch_size), (grid_h, grid_w))
    if layout == "crop":
        resized_h = max(patch_size, round(height * scale))
        resized_w = max(patch_size, round(width * scale))
        grid_h, grid_w = resized_h // patch_size, resized_w // patch_size
        return ResizeGeometry(
            (height, width), (resized_h, resized_w), (grid_h, grid_w), (0, 0, grid_h * patch_size, grid_w * patch_size)
        )
    raise ValueError(f"unknown layout {layout!r}; choose from {list(LAYOUTS)}")


def resize_and_crop(image: np.ndarray, geometry: ResizeGeometry) -> torch.Tensor:
    """(H0, W0, 3) uint8 → (3, Hc, Wc) uint8: bicubic resize to ``resized_size``, then the crop box."""
    resized = Image.fromarray(image).resize(geometry.resized_size[::-1], Image.BICUBIC)
    top, left, crop_h, crop_w = geometry.box
    pixels = np.asarray(resized)[top : top + crop_h, left : left + crop_w]
    return torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))


def normalize_batch(batch: torch.Tensor, mean: Sequence[float] | torch.Tensor, std: Sequence[float] | torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) uint8 → float32 on the same device, scaled to [0, 1] and normalised per channel.

    ``mean``/``std`` may be float32 tensors already on the batch's device (no host → device copy per batch).
    """
    mean_t = torch.as_tensor(mean, dtype=torch.float32, device=batch.device).view(1, 3, 1, 1)
    std_t = torch.as_tensor(std, dtype=torch.float32, device=batch.device).view(1, 3, 1, 1)
    return (batch.float() / 255.0 - mean_t) / std_t


def preprocess_image(image: np.ndarray, geometry: ResizeGeometry, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
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


def read_image_size(path: str) -> tuple[int, int]:
    """(H0, W0) from the image header, without decoding the pixels; the error names the file."""
    try:
        with Image.open(path) as image:
            width, height = image.size
            image.verify()  # cheap structural check so a corrupt file fails before any job output appears
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as error:
        raise ImageReadError(f"cannot read image {str(path)!r}: {error}") from None
    return height, width


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
    """Contiguous block ``shard`` of ``shards`` over ``count`` items (sizes differ by at most one, first ones larger)."""
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
    from .backbones import get_backbone_spec

    patch_size = get_backbone_spec(backbone).patch_size
    plan = []
    for batches in shard_batches(original_sizes, resolution, patch_size, layout, batch_size, shards):
        plan.append([{"name": str(image_names[p]), "path": str(image_paths[p]), "image_id": int(image_ids[p])}
                     for batch in batches for p in batch])
    return plan


def zarr_array_metadata(shape: Sequence[int]) -> dict:
    """zarr v3 metadata of an uncompressed float16 array stored as one chunk (what ``zarr.create_array`` writes)."""
    return {
        "shape": list(shape),
        "data_type": "float16",
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": list(shape)}},
        "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
        "fill_value": 0.0,
        "codecs": [{"name": "bytes", "configuration": {"endian": "little"}}],
        "attributes": {},
        "zarr_format": 3,
        "node_type": "array",
        "storage_transformers": [],
    }


def _write_image(folder: Path, item: _ImageItem, arrays: dict[str, np.ndarray]) -> None:
    """One image's group as plain zarr v3 files: group metadata, and per facet its metadata and single chunk.

    Written directly rather than through zarr's API, whose per-node overhead (~5 ms) would make the writer, not
    the model, the bottleneck on a GPU; :func:`zarr_array_metadata` is tested against what zarr itself writes.
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
    (group / "zarr.json").write_text(json.dumps({"attributes": attributes, "zarr_format": 3, "node_type": "group"}))
    for facet, array in arrays.items():
        chunk = group / facet / "c" / Path(*["0"] * array.ndim)
        chunk.parent.mkdir(parents=True)
        (group / facet / "zarr.json").write_text(json.dumps(zarr_array_metadata(array.shape)))
        chunk.write_bytes(np.ascontiguousarray(array, dtype="<f2").tobytes())


class _Writer:
    """Writes images on background threads while the model computes the next batch (bounded backlog).

    On CUDA the device → pinned-host copies are issued asynchronously by the caller; a writer thread waits on the
    batch's event before touching the host buffers.
    """

    def __init__(self, folder: Path, threads: int, max_pending: int):
        self.folder = folder
        self.pool = ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="feature-writer")
        self.pending: list[Future] = []  # touched by the calling thread only
        self.slots = threading.BoundedSemaphore(max(1, max_pending))

    def submit(self, items: Sequence[_ImageItem], host: dict[str, torch.Tensor], event=None) -> None:
        self.slots.acquire()
        for future in self.pending:
            if future.done():
                future.result()  # re-raise a writer error in the calling thread
        self.pending = [future for future in self.pending if not future.done()]
        self.pending.append(self.pool.submit(self._write_batch, items, host, event))

    def _write_batch(self, items, host, event) -> None:
        try:
            if event is not None:
                event.synchronize()
            arrays = {facet: tensor.numpy() for facet, tensor in host.items()}
            for row, item in enumerate(items):
                _write_image(self.folder, item, {facet: array[row] for facet, array in arrays.items()})
        finally:
            self.slots.release()

    def close(self) -> None:
        try:
            for future in self.pending:
                future.result()
        finally:
            self.pool.shutdown(wait=True)


def _to_host(outputs: dict[str, torch.Tensor], pinned: bool) -> dict[str, torch.Tensor]:
    """float16 host copies; on CUDA into pinned memory without blocking (the caller records an event)."""
    host = {}
    for facet, tensor in outputs.items():
        half = tensor.to(torch.float16)
        if pinned:
            buffer = torch.empty(half.shape, dtype=torch.float16, pin_memory=True)
            buffer.copy_(half, non_blocking=True)
            host[facet] = buffer
        else:
            host[facet] = half.cpu()
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
) -> Path:
    """Extract ViT facets for a list of images into a new zarr v3 store (written atomically).

    DataLoader workers decode, resize and crop the images in parallel; images of the same input size are
    batched together; on a GPU batches travel through pinned memory, the forward runs under bf16 autocast and
    writer threads store the previous batch while the next one computes. The CPU runs the same code in float32.
    Arrays are stored as float16.

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
    """
    from .backbones import create_backbone, weights_digest

    facets = tuple(facets)
    for facet in facets:
        parse_facet(facet)
    if len(set(facets)) != len(facets):
        raise ValueError(f"facets {list(facets)} name one facet twice")
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; choose from {list(LAYOUTS)}")
    if not (len(image_paths) == len(image_names) == len(image_ids)):
        raise ValueError("image_paths, image_names and image_ids must have the same length")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    on_cuda = device.startswith("cuda")
    model, spec = create_backbone(backbone, weights)
    model = model.to(device).eval()
    num_blocks = len(model.blocks)
    for facet in facets:
        parse_facet(facet, num_blocks)
    if len(set(map(str, image_names))) != len(image_names):
        raise ValueError("image names must be unique within a feature store")

    if image_sizes is None:  # read headers first: fail early, naming any unreadable file
        image_sizes = [read_image_size(path) for path in image_paths]
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
    workers = min(default_workers(threads) if workers is None else workers, len(loader_batches))
    print(f"features: {workers} DataLoader workers decoding, torch threads {torch.get_num_threads()}", file=sys.stderr)
    loader = torch.utils.data.DataLoader(
        _DecodedImages(items), batch_sampler=loader_batches, num_workers=workers, pin_memory=on_cuda,
        prefetch_factor=4 if workers else None,
    )

    with atomic_output(store_path) as tmp:
        root = zarr.open_group(str(tmp), mode="w")
        root.attrs.update(
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
        if shard is not None:
            root.attrs["shard"] = {"index": shard[0], "count": shard[1]}
        mean = torch.tensor(spec.mean, dtype=torch.float32, device=device)
        std = torch.tensor(spec.std, dtype=torch.float32, device=device)
        writer = _Writer(Path(tmp), writers, max_pending=2 * max(1, writers))
        bar = tqdm(total=len(items), desc=f"features {backbone}", unit="img", disable=not progress)
        try:
            for batch_positions, pixels in loader:
                batch_items = [items[p] for p in batch_positions.tolist()]
                pixels = pixels.to(device, non_blocking=True)
                with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=on_cuda):
                    outputs = forward_facets(model, normalize_batch(pixels, mean, std),
                                             batch_items[0].geometry.grid_size, facets)
                host = _to_host(outputs, pinned=on_cuda)
                event = None
                if on_cuda:
                    event = torch.cuda.Event()
                    event.record()
                writer.submit(batch_items, host, event)
                bar.update(len(batch_items))
        finally:
            writer.close()
            bar.close()
        if shard is None:
            root.attrs["complete"] = True
        else:
            root.attrs["shard_written"] = True
    return Path(store_path)


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

    owner: dict[str, Path] = {}
    with atomic_output(store_path) as tmp:
        root = zarr.open_group(str(tmp), mode="w")
        for path, _ in shard_roots:
            for entry in sorted(path.iterdir()):
                if not entry.is_dir():
                    continue
                if entry.name in owner:
                    raise ValueError(f"image {entry.name!r} is in shards {str(owner[entry.name])!r} and {str(path)!r}")
                owner[entry.name] = path
                _link_tree(entry, tmp / entry.name)
        attrs = {key: value for key, value in first.items() if key not in ("shard", "shard_written")}
        attrs.update(num_images=len(owner), shards=len(shard_roots), complete=True)
        root.attrs.update(attrs)
    return Path(store_path)


# --------------------------------------------------------------------------------------------------- reading


class FeatureStore:
    """Lazy, read-only view of a complete feature store written by :func:`extract_features`/:func:`assemble_shards`.

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

    @property
    def names(self) -> list[str]:
        # Files that are not zarr nodes sit in the store on purpose (provenance.json, Snakemake's timestamp);
        # zarr warns about each while listing, so the listing is quiet about them.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Object at .* is not recognized as a component")
            return sorted(name for name, _ in self.root.groups())

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
        return np.asarray(group[facet][...], dtype=np.float32)

    def geometry(self, name: str) -> ResizeGeometry:
        """The image's resize/crop geometry (cached: reading zarr attributes costs ~0.4 ms, and the masks stage
        asks once per mask)."""
        if name not in self._geometries:
            attrs = self.root[name].attrs
            crop_box = attrs.get("crop_box")
            self._geometries[name] = ResizeGeometry(
                tuple(attrs["original_size"]), tuple(attrs["resized_size"]), tuple(attrs["grid_size"]),
                tuple(crop_box) if crop_box is not None else None,
            )
        return self._geometries[name]

    def image_id(self, name: str) -> int:
        return int(self.root[name].attrs["image_id"])


# --------------------------------------------------------------------------------------------------- grid ↔ pixels


def _cell_coordinates(original: int, resized: int, offset: int, cell: int) -> np.ndarray:
    """Continuous grid coordinate of each original pixel centre along one axis (cell centres at 0, 1, ...)."""
    centres = (np.arange(original, dtype=np.float64) + 0.5) * resized / original  # resized pixels
    return (centres - offset) / cell - 0.5


@functools.lru_cache(maxsize=64)  # every mask of an image, and images of one size, share these
def _interpolation_matrix(original: int, resized: int, offset: int, crop: int, cells: int) -> np.ndarray:
    """(original, cells) read-only float32 linear-interpolation weights; coordinates outside the grid clamp to the
    edge cells."""
    coordinates = np.clip(_cell_coordinates(original, resized, offset, crop / cells), 0, cells - 1)
    lower = np.floor(coordinates).astype(int)
    upper = np.minimum(lower + 1, cells - 1)
    fraction = coordinates - lower
    weights = np.zeros((original, cells), dtype=np.float64)
    np.add.at(weights, (np.arange(original), lower), 1 - fraction)
    np.add.at(weights, (np.arange(original), upper), fraction)
    weights = weights.astype(np.float32)
    weights.setflags(write=False)
    return weights


def grid_to_image(grid_values: np.ndarray, geometry: ResizeGeometry) -> np.ndarray:
    """Upsample per-cell values to original pixels, bilinearly.

    Cell (i, j) sits at the centre of its patch in the resized image, inside the crop box; each original pixel
    centre maps into the resized image by the resize scale. Pixels beyond the outermost cell centres take the
    edge cell's value (edge replication) — this covers the bottom/right strip that the ``"crop"`` layout cut off.
    Without a crop this equals ``F.interpolate(..., mode="bilinear", align_corners=False)``.

    Args:
        grid_values: (h, w) or (C, h, w) float array on the token grid.

    Returns:
        float32 array of shape (H0, W0) or (C, H0, W0).
    """
    values = np.asarray(grid_values, dtype=np.float64)
    squeeze = values.ndim == 2
    if squeeze:
        values = values[None]
    (height, width), (resized_h, resized_w) = geometry.original_size, geometry.resized_size
    top, left, crop_h, crop_w = geometry.box
    grid_h, grid_w = geometry.grid_size
    if values.shape[-2:] != (grid_h, grid_w):
        raise ValueError(f"grid values of shape {values.shape[-2:]} do not match the grid {grid_h}x{grid_w}")
    rows = _interpolation_matrix(height, resized_h, top, crop_h, grid_h)
    columns = _interpolation_matrix(width, resized_w, left, crop_w, grid_w)
    # Separable: rows (H0, h) @ values (C, h, w) @ columns.T (w, W0) — two matrix products, float32.
    upsampled = (rows @ values.astype(np.float32)) @ columns.T
    return upsampled[0] if squeeze else upsampled


def _coverage_matrix(original: int, resized: int, offset: int, crop: int, cells: int) -> np.ndarray:
    """(cells, original) length of each original pixel inside each cell's footprint, along one axis."""
    cell = crop / cells
    starts = (offset + np.arange(cells) * cell) * original / resized
    ends = (offset + (np.arange(cells) + 1) * cell) * original / resized
    pixels = np.arange(original, dtype=np.float64)
    return np.clip(np.minimum(ends[:, None], pixels[None] + 1) - np.maximum(starts[:, None], pixels[None]), 0, None)


def image_to_grid(mask: np.ndarray, grid: tuple[int, int] | ResizeGeometry) -> np.ndarray:
    """Fraction of each token cell covered by an original-resolution mask.

    Args:
        mask: (H0, W0) bool or float in [0, 1].
        grid: the image's :class:`ResizeGeometry` (exact cell footprints in original pixels, honouring a crop), or
            just (h, w) for the resize layout (adaptive average pooling over the whole image).

    Returns:
        (h, w) float32 average of the mask over each cell's footprint.
    """
    if isinstance(grid, ResizeGeometry):
        values = np.asarray(mask, dtype=np.float64)
        if values.shape != tuple(grid.original_size):
            raise ValueError(f"mask of shape {values.shape} does not match the image size {grid.original_size}")
        top, left, crop_h, crop_w = grid.box
        rows = _coverage_matrix(grid.original_size[0], grid.resized_size[0], top, crop_h, grid.grid_size[0])
        columns = _coverage_matrix(grid.original_size[1], grid.resized_size[1], left, crop_w, grid.grid_size[1])
        covered = rows @ values @ columns.T
        return (covered / np.outer(rows.sum(1), columns.sum(1))).astype(np.float32)
    values = torch.as_tensor(np.asarray(mask, dtype=np.float32))[None, None]
    return F.adaptive_avg_pool2d(values, tuple(grid))[0, 0].numpy()
