"""Reading a feature store: the zarr v3 layout written by :mod:`unseg.features.extract`, one lazy view per store.

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
decodes back to float16. A store whose
``complete`` attribute is false (an interrupted extraction, a shard not yet joined) is refused.

``order.json`` (not a zarr node) lists the images in the order they were extracted, one run per shard
(``{"runs": [[name, ...], ...]}``): the stages reading the store batch images along it
(:meth:`FeatureStore.name_batches`), so a job that computes masks while extracting one shard
(:mod:`unseg.features.fused`)
forms the very batches the masks stage forms from the joined store.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import zarr

from unseg.core.geometry import ResizeGeometry

ORDER_FILE = "order.json"


def order_batches(runs: list[list[str]], size: int) -> list[list[str]]:
    """Consecutive batches of at most ``size`` names along each run (none spans two runs)."""
    return [run[start : start + size] for run in runs for start in range(0, len(run), size)]


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

    def name_batches(self, size: int) -> list[list[str]]:
        """The image names in consecutive batches of at most ``size``: along each run of ``order.json`` (a batch never
        spans two shards), or in the order of :attr:`names` for a store without one (written before it existed, or
        derived from another store)."""
        return order_batches(self.order(), size)

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
