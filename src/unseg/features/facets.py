"""The facets of a timm ViT, collected by forward hooks: keys, queries, values and tokens of the last block or of an
intermediate one, the CLS token and the CLS-to-patch attention (:func:`forward_facets`; names: :func:`parse_facet`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import torch

GRID_FACETS = ("keys", "queries", "values", "tokens")
BASE_FACETS = GRID_FACETS + ("cls", "attn")
FACET_PATTERN = re.compile(r"^(keys|queries|values|tokens|cls|attn)(?:@(-?[0-9]+))?$")


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
