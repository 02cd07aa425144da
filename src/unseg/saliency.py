"""The saliency stage: a soft foreground map of every image → ``saliency/{variant}/{name}.png``.

Artifact: one PNG per image, uint8 = round(255 × soft foreground), at the original resolution; foreground is
``value > 127`` (read back with :func:`unseg.io.read_saliency`).

Methods are registered with ``@register("saliency", name, schema=...)`` (:mod:`unseg.registry`). A method takes a
:class:`SaliencyBatch` and its settings as keywords and returns, per image, an
(h, w) float map in [0, 1] on the token grid; the runner upsamples it bilinearly to the image. A method registered
with ``pixel_maps=True`` returns maps at the image's own size instead (``mask_folder``: masks made elsewhere).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from .geometry import grid_to_image
from .io import atomic_output, read_label_png
from .registry import REGISTRIES, register
from .retry import in_halves_on_oom
from .spectral import SOLVER_PRECISION, bipartition_saliency, grid_spectra, pass_dtype
from .store import FeatureStore


@dataclass(frozen=True)
class SaliencyBatch:
    """What a saliency method sees of one batch: ``names``, per image the (h, w, D) float32 ``grids`` of the
    variant's facet, the torch ``device`` and whether this is the run's ``first`` batch."""

    names: Sequence[str]
    grids: Sequence[np.ndarray]
    device: str | None = None
    first: bool = True
    image_sizes: Sequence[tuple[int, int]] = ()  # (H0, W0) per image, as the index has it


@register("saliency", "spectral_bipartition", schema={"solver_precision": SOLVER_PRECISION})
def spectral_bipartition(batch: SaliencyBatch, *, solver_precision) -> list[np.ndarray]:
    """Engstler et al. 2023 (after Deep Spectral Methods): the k = 2 bipartition of the token affinity; the side
    touching the image border less is foreground. Soft map: 0.5 + 0.5 × generalised Fiedler vector / its max
    magnitude, oriented by that border rule."""
    if batch.first:
        print(f"saliency: eigensolver passes in {pass_dtype(solver_precision, batch.device)} "
              f"(solver_precision: {solver_precision})", file=sys.stderr)
    spectra = grid_spectra(list(batch.grids), 2, device=batch.device, precision=solver_precision)
    return [bipartition_saliency(grid, eigenvectors=vectors, degree=degree)[1]
            for grid, (vectors, degree) in zip(batch.grids, spectra)]


@register("saliency", "mask_folder", pixel_maps=True, required=["path"], schema={
    "path": {"type": "string", "description": "a folder of {image name}.png masks at each image's size (read only): "
                                               "grey 0-255 (soft, foreground > 127) or 0/1 binary, e.g. the "
                                               "precomputed saliency masks MaskContrast trains on"}})
def mask_folder(batch: SaliencyBatch, *, path) -> list[np.ndarray]:
    """Masks made elsewhere, one PNG per image: grey values / 255, or a 0/1 (or palette 0/1) mask as is."""
    maps = []
    for name, size in zip(batch.names, batch.image_sizes):
        file = Path(path) / f"{name}.png"
        if not file.is_file():
            raise FileNotFoundError(f"saliency.mask_folder: no mask {str(file)!r} for image {name!r}")
        values = read_label_png(file).astype(np.float32)
        if values.shape != tuple(size):
            raise ValueError(f"saliency.mask_folder: {str(file)} is {values.shape[1]}x{values.shape[0]}, its image "
                             f"{size[1]}x{size[0]}")
        maps.append(values if values.max(initial=0) <= 1 else values / 255.0)
    return maps


def folder_listing_digest(path: str | Path) -> str:
    """sha256 of the (name, size, mtime) of every PNG in ``path``: a params value that changes when a mask does, so
    that the workflow re-runs a ``mask_folder`` variant whose masks were edited."""
    import hashlib

    digest = hashlib.sha256()
    for file in sorted(Path(path).glob("*.png")):
        stat = file.stat()
        digest.update(f"{file.name}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def run_saliency(
    store_path: str | Path,
    out_dir: str | Path,
    settings: Mapping[str, Any],
    device: str | None = None,
    progress: bool = True,
) -> list[str]:
    """Saliency of every image by the variant's method → ``out_dir/{name}.png`` (written as one atomic folder).

    Args:
        settings: the saliency variant: ``method``, ``facet``, ``batch_size`` and the method's own settings.

    Returns:
        the image names.
    """
    method = REGISTRIES["saliency"].get(settings["method"])
    method_settings = method.settings(settings)
    store = FeatureStore(store_path)
    pixel_maps = bool(method.attributes.get("pixel_maps"))
    with atomic_output(out_dir) as tmp:
        tmp.mkdir(parents=True)
        bar = tqdm(total=len(store.names), desc=f"saliency {method.name}", unit="img", disable=not progress)
        for position, names in enumerate(store.name_batches(int(settings["batch_size"]))):
            grids = {name: store.facet(name, settings["facet"]) for name in names}

            def run(part: Sequence[str]) -> list[np.ndarray]:  # the batch, or a half of it after an OOM
                batch = SaliencyBatch(part, [grids[name] for name in part], device,
                                      first=position == 0 and part[0] == names[0],
                                      image_sizes=[store.geometry(name).original_size for name in part])
                return method.function(batch, **method_settings)

            for name, soft in zip(names, in_halves_on_oom(run, names, "saliency batch")):
                soft = np.asarray(soft, dtype=np.float32)
                soft_pixels = np.clip(soft if pixel_maps else grid_to_image(soft, store.geometry(name)), 0.0, 1.0)
                Image.fromarray(np.round(soft_pixels * 255).astype(np.uint8), mode="L").save(tmp / f"{name}.png")
            bar.update(len(names))
        bar.close()
    return store.names
