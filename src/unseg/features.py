"""Feature extraction from a timm ViT into a zarr v3 store, and lazy reading of that store.

Store layout (``features/{variant}.zarr``)::

    /                      attrs: backbone, timm_name, weights, weights_digest, resolution, patch_size,
                                  embed_dim, num_heads, facets, num_images, complete, unseg_version
    /{image name}/keys     (h, w, D) float16   last-block attention keys, heads concatenated
    /{image name}/queries  (h, w, D) float16
    /{image name}/values   (h, w, D) float16
    /{image name}/tokens   (h, w, D) float16   last-block output tokens after the final norm
    /{image name}/cls      (D,)      float16   CLS token after the final norm
    /{image name}/attn     (H, h, w) float16   CLS-to-patch attention of the last block, per head
                           attrs: image_id, original_size [H0, W0], resized_size [Hr, Wr], grid_size [h, w]

Each image's arrays are single chunks, so reading one image touches only that image's files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
import zarr
from PIL import Image
from tqdm.auto import tqdm

from . import __version__
from .io import atomic_output, read_image

GRID_FACETS = ("keys", "queries", "values", "tokens")
ALL_FACETS = GRID_FACETS + ("cls", "attn")


@dataclass(frozen=True)
class ResizeGeometry:
    """How an image was resized before the ViT: original (H0, W0) → resized (Hr, Wr) → token grid (h, w)."""

    original_size: tuple[int, int]
    resized_size: tuple[int, int]
    grid_size: tuple[int, int]


def resize_geometry(original_size: tuple[int, int], short_side: int, patch_size: int) -> ResizeGeometry:
    """Keep the aspect ratio, scale the short side to ``short_side``, round both sides to multiples of the patch.

    Args:
        original_size: (H0, W0) of the image in pixels.
        short_side: target short side in pixels (rounded to a multiple of ``patch_size``, at least one patch).
    """
    height, width = original_size
    scale = short_side / min(height, width)
    grid_h = max(1, round(height * scale / patch_size))
    grid_w = max(1, round(width * scale / patch_size))
    return ResizeGeometry((height, width), (grid_h * patch_size, grid_w * patch_size), (grid_h, grid_w))


def preprocess_image(image: np.ndarray, geometry: ResizeGeometry, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(H0, W0, 3) uint8 → (3, Hr, Wr) float32, resized bicubically and normalised."""
    resized = Image.fromarray(image).resize(geometry.resized_size[::-1], Image.BICUBIC)
    tensor = torch.from_numpy(np.asarray(resized, dtype=np.float32) / 255.0).permute(2, 0, 1)
    mean_t = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    return (tensor - mean_t) / std_t


@torch.inference_mode()
def forward_facets(model: torch.nn.Module, batch: torch.Tensor, grid_size: tuple[int, int]) -> dict[str, torch.Tensor]:
    """Run a timm ViT and collect last-block facets.

    timm's fused attention keeps no attention map, so a hook captures the last block's qkv projection and the
    CLS-to-patch attention is recomputed from q and k.

    Args:
        model: a timm VisionTransformer (created with ``dynamic_img_size=True`` for non-square grids).
        batch: (B, 3, Hr, Wr) float32 images of one size.
        grid_size: (h, w) with h * w patch tokens.

    Returns:
        float32 tensors: keys/queries/values/tokens (B, h, w, D), cls (B, D), attn (B, heads, h, w).
    """
    attention = model.blocks[-1].attn
    captured: dict[str, torch.Tensor] = {}
    handle = attention.qkv.register_forward_hook(lambda _m, _i, output: captured.__setitem__("qkv", output))
    try:
        tokens = model.forward_features(batch)
    finally:
        handle.remove()
    batch_size, num_tokens, _ = tokens.shape
    num_heads, head_dim = attention.num_heads, attention.head_dim
    qkv = captured["qkv"].reshape(batch_size, num_tokens, 3, num_heads, head_dim).permute(2, 0, 3, 1, 4)
    queries, keys, values = qkv.unbind(0)  # (B, heads, N, head_dim)
    queries, keys = attention.q_norm(queries), attention.k_norm(keys)
    prefix = model.num_prefix_tokens
    grid_h, grid_w = grid_size
    if num_tokens - prefix != grid_h * grid_w:
        raise ValueError(f"model returned {num_tokens - prefix} patch tokens, expected grid {grid_h}x{grid_w}")

    def to_grid(per_head: torch.Tensor) -> torch.Tensor:
        merged = per_head.permute(0, 2, 1, 3).reshape(batch_size, num_tokens, num_heads * head_dim)
        return merged[:, prefix:].reshape(batch_size, grid_h, grid_w, -1)

    cls_attention = (queries[:, :, :1] * attention.scale) @ keys.transpose(-2, -1)  # (B, heads, 1, N)
    cls_attention = cls_attention.softmax(dim=-1)[:, :, 0, prefix:]
    return {
        "keys": to_grid(keys),
        "queries": to_grid(queries),
        "values": to_grid(values),
        "tokens": tokens[:, prefix:].reshape(batch_size, grid_h, grid_w, -1),
        "cls": tokens[:, 0],
        "attn": cls_attention.reshape(batch_size, num_heads, grid_h, grid_w),
    }


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
) -> Path:
    """Extract ViT facets for a list of images into a new zarr v3 store (written atomically).

    Images of the same resized shape are batched together. On a GPU the forward runs under bf16 autocast; on the
    CPU in float32. Arrays are stored as float16.

    Args:
        image_paths, image_names, image_ids: parallel lists; names become the store's group names.
        weights: "random", "timm", or a path to a timm-format / original-format checkpoint.
        resolution: short side in pixels before rounding to the patch grid.
    """
    from .backbones import create_backbone, weights_digest

    facets = tuple(facets)
    unknown = sorted(set(facets) - set(ALL_FACETS))
    if unknown:
        raise ValueError(f"unknown facets {unknown}; choose from {list(ALL_FACETS)}")
    if not (len(image_paths) == len(image_names) == len(image_ids)):
        raise ValueError("image_paths, image_names and image_ids must have the same length")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, spec = create_backbone(backbone, weights)
    model = model.to(device).eval()

    images = [read_image(path) for path in image_paths]  # fail early, naming any unreadable file
    geometries = [resize_geometry(image.shape[:2], resolution, spec.patch_size) for image in images]
    by_size: dict[tuple[int, int], list[int]] = {}
    for position, geometry in enumerate(geometries):
        by_size.setdefault(geometry.resized_size, []).append(position)

    with atomic_output(store_path) as tmp:
        root = zarr.open_group(str(tmp), mode="w")
        root.attrs.update(
            backbone=backbone,
            timm_name=spec.timm_name,
            weights=str(weights),
            weights_digest=weights_digest(weights),
            resolution=resolution,
            patch_size=spec.patch_size,
            embed_dim=spec.embed_dim,
            num_heads=spec.num_heads,
            facets=list(facets),
            num_images=len(images),
            complete=False,
            unseg_version=__version__,
        )
        bar = tqdm(total=len(images), desc=f"features {backbone}", unit="img", disable=not progress)
        for positions in by_size.values():
            for start in range(0, len(positions), batch_size):
                chunk = positions[start : start + batch_size]
                batch = torch.stack([preprocess_image(images[p], geometries[p], spec.mean, spec.std) for p in chunk])
                with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=device.startswith("cuda")):
                    outputs = forward_facets(model, batch.to(device), geometries[chunk[0]].grid_size)
                for row, position in enumerate(chunk):
                    group = root.create_group(str(image_names[position]))
                    geometry = geometries[position]
                    group.attrs.update(
                        image_id=int(image_ids[position]),
                        original_size=list(geometry.original_size),
                        resized_size=list(geometry.resized_size),
                        grid_size=list(geometry.grid_size),
                    )
                    for facet in facets:
                        array = outputs[facet][row].float().cpu().numpy().astype(np.float16)
                        group.create_array(facet, data=array, chunks=array.shape)
                bar.update(len(chunk))
        bar.close()
        root.attrs["complete"] = True
    return Path(store_path)


class FeatureStore:
    """Lazy, read-only view of a feature store written by :func:`extract_features`.

    Reading one image's facet loads only that image's chunk.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"feature store {str(self.path)!r} does not exist")
        self.root = zarr.open_group(str(self.path), mode="r")
        if not self.root.attrs.get("complete", False):
            raise RuntimeError(f"feature store {str(self.path)!r} is incomplete (an interrupted extraction?)")
        self.attrs = dict(self.root.attrs)

    @property
    def names(self) -> list[str]:
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
        attrs = self.root[name].attrs
        return ResizeGeometry(tuple(attrs["original_size"]), tuple(attrs["resized_size"]), tuple(attrs["grid_size"]))

    def image_id(self, name: str) -> int:
        return int(self.root[name].attrs["image_id"])


def grid_to_image(grid_values: np.ndarray, geometry: ResizeGeometry) -> np.ndarray:
    """Upsample per-cell values to original pixels, bilinearly.

    Args:
        grid_values: (h, w) or (C, h, w) float array on the token grid.

    Returns:
        float32 array of shape (H0, W0) or (C, H0, W0). Cell centres sit at patch centres of the resized image,
        which is then scaled to the original size (align_corners=False gives exactly that mapping).
    """
    values = torch.as_tensor(np.asarray(grid_values, dtype=np.float32))
    squeeze = values.ndim == 2
    if squeeze:
        values = values[None]
    upsampled = F.interpolate(values[None], size=tuple(geometry.original_size), mode="bilinear", align_corners=False)[0]
    return upsampled[0].numpy() if squeeze else upsampled.numpy()


def image_to_grid(mask: np.ndarray, grid_size: tuple[int, int]) -> np.ndarray:
    """Fraction of each token cell covered by an original-resolution mask.

    Args:
        mask: (H0, W0) bool or float in [0, 1].
        grid_size: (h, w).

    Returns:
        (h, w) float32 average of the mask over each cell's footprint (adaptive average pooling).
    """
    values = torch.as_tensor(np.asarray(mask, dtype=np.float32))[None, None]
    return F.adaptive_avg_pool2d(values, tuple(grid_size))[0, 0].numpy()
