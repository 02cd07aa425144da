"""The masks stage: object mask candidates of every image from its token grid → ``masks.json`` (COCO results).

Artifact: a COCO results list: image_id, segmentation (RLE at original resolution), score, and the ``k``,
``cluster`` and ``component`` that made each mask (deep_spectral adds ``eigen_index``: i >= 1 for the sign split of
eigenvector i, -1 for a k-means segment of eigenvectors 1..K-1). Grid masks are upsampled bilinearly on their 0/1
values to the original size and thresholded at 0.5; the score is the method's (the spectral methods: the mask's
coherence, the mean cosine similarity between its tokens).

The built-in methods are declared in :mod:`unseg.methods.masks` (a plugin's with ``@register("masks", name,
schema=...)``, :mod:`unseg.config.registry`). A method takes a :class:`MaskBatch` and its settings as keywords and
returns, per image of the batch, a list of
:class:`~unseg.ops.spectral.GridMask` on the token grid.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from unseg.config.registry import REGISTRIES
from unseg.core.geometry import ResizeGeometry, grid_to_image
from unseg.core.io import encode_rle, read_image, write_json
from unseg.core.provenance import code_version
from unseg.core.retry import in_halves_on_oom
from unseg.core.reuse import ResultCache, result_key, reuse_folder
from unseg.core.threads import map_images
from unseg.features.store import FeatureStore
from unseg.ops.eigensolver import grid_spectra, pass_dtype
from unseg.ops.maskcut import maskcut_masks
from unseg.ops.spectral import GridMask, color_knn_affinity, deep_spectral_masks, multik_masks


@dataclass(frozen=True)
class MaskBatch:
    """What a masks method sees of one batch of images.

    Attributes:
        names: image names.
        grids: per image the (h, w, D) float32 token grid of the variant's ``facet``.
        image_paths: image name → path, when the caller knows them (methods that look at pixels need them).
        device: torch device for batched work (None: CUDA when available).
        first: True for the run's first batch (a method logs its one-off facts then).
    """

    names: Sequence[str]
    grids: Sequence[np.ndarray]
    image_paths: Mapping[str, str] | None = None
    device: str | None = None
    first: bool = True

    def images_at_grid(self) -> list[np.ndarray]:
        """Per image the (h, w, 3) uint8 picture down-sampled (area average) to its token grid."""
        missing = [name for name in self.names if not self.image_paths or name not in self.image_paths]
        if missing:
            raise ValueError(f"masks: this method needs the images; no path for {list(missing)[:3]}")
        pictures = []
        for name, grid in zip(self.names, self.grids):
            picture = Image.fromarray(read_image(self.image_paths[name]))
            pictures.append(np.asarray(picture.resize((grid.shape[1], grid.shape[0]), Image.BOX)))
        return pictures


def min_area_cells(min_area_fraction: float, grid: np.ndarray, min_area_patches: int | None = None) -> int:
    """The smallest mask (in token cells, at least one) of an (h, w, D) grid: ``min_area_patches`` when given (the
    same number of patches at any resolution), else the ``min_area_fraction`` of the grid."""
    if min_area_patches is not None:
        return max(1, int(min_area_patches))
    return max(1, math.ceil(min_area_fraction * grid.shape[0] * grid.shape[1]))


def _log_precision(batch: MaskBatch, precision: str) -> None:
    if batch.first:  # stderr: the job's log file
        print(f"masks: eigensolver passes in {pass_dtype(precision, batch.device)} (solver_precision: {precision})",
              file=sys.stderr)


def spectral_multik(batch: MaskBatch, *, k, split_components, min_area_fraction, min_area_patches, seed,
                    solver_precision) -> list[list[GridMask]]:
    """Engstler et al. 2023: NJW spectral clustering of the tokens for every k, every cluster (component) a mask.

    One batched eigensolve (:func:`~unseg.ops.eigensolver.grid_spectra`) gives the max(k) smallest eigenvectors of every
    image; :func:`~unseg.ops.spectral.multik_masks` clusters them for each k.
    """
    _log_precision(batch, solver_precision)
    ks = tuple(int(value) for value in k)
    spectra = grid_spectra(list(batch.grids), max(ks), device=batch.device, precision=solver_precision)
    return map_images(lambda job: multik_masks(job[0], ks, split_components,
                                               min_area_cells(min_area_fraction, job[0], min_area_patches), seed,
                                               eigenvectors=job[1][0]),
                      zip(batch.grids, spectra))


def deep_spectral(batch: MaskBatch, *, k, split_components, min_area_fraction, min_area_patches, seed,
                  solver_precision, num_eigenvectors, eigen_masks, drop_background, color_weight
                  ) -> list[list[GridMask]]:
    """Deep Spectral Methods (Melas-Kyriazi et al. 2022): sign splits of the first eigenvectors (border rule) and
    k-means segments of eigenvectors 1..K-1, the border-most segment dropped as background."""
    _log_precision(batch, solver_precision)
    ks = tuple(int(value) for value in k)
    extra = [color_weight * color_knn_affinity(image) for image in batch.images_at_grid()] if color_weight > 0 else None
    spectra = grid_spectra(list(batch.grids), num_eigenvectors, extra, device=batch.device, precision=solver_precision)
    return map_images(lambda job: deep_spectral_masks(job[0], ks, num_eigenvectors, eigen_masks, split_components,
                                                      min_area_cells(min_area_fraction, job[0], min_area_patches),
                                                      drop_background, seed, eigenvectors=job[1][0],
                                                      degree=job[1][1]),
                      zip(batch.grids, spectra))


def maskcut(batch: MaskBatch, *, num_cuts, tau, min_area_fraction, max_previous_iou, center) -> list[list[GridMask]]:
    """MaskCut (Wang et al., CutLER, CVPR 2023, §3.1): :func:`~unseg.ops.maskcut.maskcut_masks` on the batch, the
    cuts of every image of one token count solved together."""
    return maskcut_masks(list(batch.grids), num_cuts, tau, min_area_fraction, max_previous_iou, center,
                         device=batch.device)


def grid_mask_to_image(grid_mask: np.ndarray, geometry: ResizeGeometry) -> np.ndarray:
    """(h, w) bool token mask → (H0, W0) bool, bilinear on the 0/1 values then threshold at 0.5."""
    return grid_to_image(grid_mask.astype(np.float32), geometry) > 0.5


def run_masks(
    store_path: str | Path,
    out_json: str | Path,
    settings: Mapping[str, Any],
    image_paths: Mapping[str, str] | None = None,
    device: str | None = None,
    progress: bool = True,
    reuse: str | Path | None = None,
) -> int:
    """Masks of every image in a feature store by the variant's method → COCO results JSON. Returns the mask count.

    Args:
        settings: the masks variant: ``method`` (a registered masks method), ``facet`` (the store facet the method
            reads), ``batch_size`` (images per method call), and the method's own settings (defaults from its
            schema).
        image_paths: image name → path, for methods that look at the pixels (deep_spectral's colour affinity).
        reuse: a :class:`~unseg.core.reuse.ResultCache` folder: an image whose grid, geometry and settings an earlier
            run had keeps its rows (re-numbered to the store's image id) instead of being computed; the images left
            to compute run together in batches of their own (values of the batched eigensolver equal a fresh run's
            within float rounding). Refreshed to this run's images at the end.
    """
    method = REGISTRIES["masks"].get(settings["method"])
    method_settings = method.settings(settings)
    store = FeatureStore(store_path)
    cache = ResultCache(reuse) if reuse is not None else None
    keys: dict[str, str] = {}
    cached: dict[str, list[dict] | None] = {}
    if cache is not None:
        code, key_settings = code_version(), {"method": method.name, "settings": dict(method_settings)}
        for name in store.names:
            keys[name] = result_key(store.stored_digest(name, settings["facet"]), key_settings, code,
                                    (image_paths or {}).get(name))
            cached[name] = cache.rows(keys[name])
    to_compute = {name for name in store.names if cached.get(name) is None}
    reused = len(store.names) - len(to_compute)
    # the images left to compute run in batches of their own (together, not one per batch of the whole store)
    bar = tqdm(total=len(to_compute), desc=f"masks {method.name}", unit="img", disable=not progress)
    computed: dict[int, list[dict]] = {}
    for position, names in enumerate(store.name_batches(int(settings["batch_size"]),
                                                        to_compute if cache is not None else None)):
        grids = [store.facet(name, settings["facet"]) for name in names]
        for row in batch_mask_results(method, method_settings, names, grids, [store.geometry(n) for n in names],
                                      [store.image_id(n) for n in names], image_paths, device, first=position == 0):
            computed.setdefault(row["image_id"], []).append(row)
        bar.update(len(names))
    bar.close()
    results, rows_by_key = [], {}
    for names in store.name_batches(int(settings["batch_size"])):  # the store's order, as a fresh run writes it
        for name in names:
            image_id = store.image_id(name)
            if name in to_compute:
                image_rows = computed.get(image_id, [])
            else:
                image_rows = [{"image_id": image_id, **row} for row in cached[name]]
            results += image_rows
            if cache is not None:
                rows_by_key[keys[name]] = [{key: value for key, value in row.items() if key != "image_id"}
                                           for row in image_rows]
    write_json(out_json, results, indent=None)
    if cache is not None:
        cache.refresh(rows_by_key)
        print(f"masks: {reused} image(s) reused from the last run (same features and settings), "
              f"{len(store.names) - reused} computed", file=sys.stderr)
    return len(results)


def masks_reuse_folder(out_json: str | Path) -> Path:
    """The :class:`~unseg.core.reuse.ResultCache` of ``masks/{variant}/masks.json``: ``masks/{variant}.reuse``."""
    return reuse_folder(Path(out_json).parent)


def batch_mask_results(method, method_settings: Mapping[str, Any], names: Sequence[str], grids: Sequence[np.ndarray],
                       geometries: Sequence[ResizeGeometry], image_ids: Sequence[int],
                       image_paths: Mapping[str, str] | None = None, device: str | None = None,
                       first: bool = True) -> list[dict]:
    """The COCO results (the stage's artifact rows) of one batch of images: the registered ``method`` on their
    (h, w, D) float32 ``grids``, in halves after an out-of-memory error, each grid mask upsampled to its image
    (``geometries``). The masks stage and the fused extraction (:mod:`unseg.features.fused`) both call this."""
    by_name = dict(zip(names, grids))

    def run(part: Sequence[str]) -> list[list[GridMask]]:  # the batch, or a half of it after an OOM
        batch = MaskBatch(part, [by_name[name] for name in part], image_paths, device,
                          first=first and part[0] == names[0])
        return method.function(batch, **method_settings)

    def rows(job) -> list[dict]:  # one image's masks at its own size, RLE-encoded
        grid_masks, geometry, image_id = job
        image_rows = []
        for grid_mask in grid_masks:
            pixels = grid_mask_to_image(grid_mask.mask, geometry)
            if not pixels.any():
                continue
            result = {
                "image_id": int(image_id),
                "category_id": 1,
                "segmentation": encode_rle(pixels),
                "score": round(grid_mask.coherence, 6),
                "area": int(pixels.sum()),
                "k": grid_mask.k,
                "cluster": grid_mask.cluster,
                "component": grid_mask.component,
            }
            if grid_mask.eigen_index is not None:
                result["eigen_index"] = grid_mask.eigen_index
            image_rows.append(result)
        return image_rows

    per_image = map_images(rows, zip(in_halves_on_oom(run, list(names), "masks batch"), geometries, image_ids))
    return [row for image_rows in per_image for row in image_rows]
