"""Features of a large input computed window by window (``features.{variant}.tiles``): the image is resized to the
variant's resolution as usual, and the ViT runs on overlapping square windows of ``size`` pixels cut from it on the
patch grid; each token cell's facets are the mean over the windows that hold it.

Why: a ViT's cost grows with the square of its tokens, and a small COCO object (under 32 × 32 px) covers at most
2 × 2 tokens at 448 px. Windows of the pre-training size at a larger input give the finer grid at a cost linear in
its area, each window seen at the scale the backbone was trained on; a token sees only its window, not the whole
image (no global context across windows).

Only the per-token facets (keys, queries, values, tokens, also of intermediate blocks) and the CLS token (the mean of
the windows' CLS tokens) are defined; the CLS-to-patch attention ``attn`` is normalised within a window and is
refused.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch

from unseg.features.facets import BASE_FACETS, forward_facets, parse_facet

# Defaults of features.{variant}.tiles (the schema states them again for the config docs)
TILE_SIZE = 448  # DINOv2's and DINO's fine-tuning resolution: each window at the scale the features are known at
TILE_OVERLAP = 0.25


def tile_starts(length: int, window: int, stride: int) -> list[int]:
    """Start positions of windows of ``window`` cells every ``stride`` cells along ``length`` cells, the last one
    moved back to end at ``length`` (so every cell is covered and no window leaves the grid); ``[0]`` when the
    window covers the whole length."""
    if window <= 0 or stride <= 0 or length <= 0:
        raise ValueError(f"tile_starts: length {length}, window {window} and stride {stride} must be positive")
    if window >= length:
        return [0]
    starts = list(range(0, length - window, stride))
    return starts + [length - window]


def tile_windows(grid_size: tuple[int, int], size_tokens: int, overlap: float) -> list[tuple[int, int, int, int]]:
    """The windows (top, left, height, width) in token cells that tile a ``grid_size`` (h, w) grid: squares of
    ``size_tokens`` cells (clipped to the grid), neighbours sharing ``overlap`` of a window's side (at least one
    cell apart)."""
    if not 0 <= overlap < 1:
        raise ValueError(f"tiles.overlap {overlap}: a fraction in [0, 1)")
    if size_tokens < 1:
        raise ValueError(f"tiles.size: {size_tokens} token cells; at least one patch")
    stride = max(1, round(size_tokens * (1 - overlap)))
    height, width = grid_size
    window_h, window_w = min(size_tokens, height), min(size_tokens, width)
    return [(top, left, window_h, window_w)
            for top in tile_starts(height, window_h, stride) for left in tile_starts(width, window_w, stride)]


def check_tiled_facets(facets: Iterable[str]) -> None:
    """Raise a ValueError naming ``features.{variant}.tiles`` for a facet tiles cannot merge (``attn``)."""
    refused = [name for name in facets if parse_facet(name)[0] == "attn"]
    if refused:
        raise ValueError(f"features tiles: facets {refused} cannot be merged across windows (each window's attention "
                         "is normalised on its own); store keys, queries, values, tokens or cls, e.g. facets: "
                         "consumers with no attn reader")


def forward_tiled(model: torch.nn.Module, batch: torch.Tensor, grid_size: tuple[int, int],
                  facets: Iterable[str] | None, tiles: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """:func:`~unseg.features.facets.forward_facets` of the windows of ``batch``, merged on its token grid.

    Args:
        model: a timm VisionTransformer with patch size p (``model.patch_embed.patch_size``).
        batch: (B, 3, h·p, w·p) float32 normalised images of one size.
        grid_size: (h, w).
        facets: facet names (None: the six last-block facets, which include the refused ``attn``).
        tiles: ``{"size": window side in pixels, "overlap": fraction of a window shared with its neighbour}``.

    Returns:
        facet name → tensor as forward_facets gives them: per-token facets (B, h, w, D) float32, each cell the mean
        over the windows that hold it; cls (B, D) the mean over all windows.
    """
    facets = tuple(BASE_FACETS if facets is None else facets)
    check_tiled_facets(facets)
    patch = model.patch_embed.patch_size
    patch = patch[0] if isinstance(patch, Sequence) else int(patch)
    windows = tile_windows(grid_size, int(tiles.get("size", TILE_SIZE)) // patch,
                           float(tiles.get("overlap", TILE_OVERLAP)))
    height, width = grid_size
    sums: dict[str, torch.Tensor] = {}
    counts = torch.zeros(height, width, 1, device=batch.device)
    for top, left, window_h, window_w in windows:
        crop = batch[:, :, top * patch:(top + window_h) * patch, left * patch:(left + window_w) * patch]
        outputs = forward_facets(model, crop, (window_h, window_w), facets)
        for name, value in outputs.items():
            value = value.float()
            if name == "cls":
                sums[name] = sums[name] + value if name in sums else value.clone()
                continue
            if name not in sums:
                sums[name] = value.new_zeros(value.shape[0], height, width, value.shape[-1])
            sums[name][:, top:top + window_h, left:left + window_w] += value
        counts[top:top + window_h, left:left + window_w] += 1
    return {name: total / len(windows) if name == "cls" else total / counts for name, total in sums.items()}
