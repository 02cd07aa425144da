"""Decoder heads over a ViT's token grid: (B, D, h, w) float tokens → (B, C, h, w) class logits.

Every head standardises the tokens first (per-channel mean and standard deviation of the training set, stored as
buffers so a checkpoint carries them) and is built from plain numbers (``embed_dim``, ``num_classes`` and its own
settings) so that a checkpoint's config rebuilds it:

* :class:`LinearHead` — a 1×1 convolution (the linear classifier of MaskContrast / MaskDistill's evaluation).
* :class:`MaskTransformerHead` — Segmenter's mask transformer (Strudel et al., ICCV 2021, section 3.2): learnable
  class embeddings are decoded jointly with the projected patch tokens by a few transformer layers; each class mask
  is the scalar product of the L2-normalised patch and class embeddings, followed by a LayerNorm over classes.
* :class:`AsppHead` — DeepLab-v3's atrous spatial pyramid pooling head (Chen et al., 2017, section 3.3), torchvision's
  ``DeepLabHead``, over the token grid. The grid has a stride of 14-16 px, DeepLab-v3's output stride 16, whose
  atrous rates are (6, 12, 18) (section 3.3, "output_stride = 16").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F


class Standardise(torch.nn.Module):
    """(B, D, h, w) → the same, each channel minus its training mean, over its training standard deviation."""

    def __init__(self, embed_dim: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(embed_dim))
        self.register_buffer("std", torch.ones(embed_dim))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return (tokens - self.mean[None, :, None, None]) / self.std[None, :, None, None]


class TokenHead(torch.nn.Module):
    """Base of the heads: ``standardise`` then ``decode``; subclasses set ``self.decode``."""

    def __init__(self, embed_dim: int, num_classes: int):
        super().__init__()
        self.embed_dim, self.num_classes = embed_dim, num_classes
        self.standardise = Standardise(embed_dim)

    def set_statistics(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Store the training tokens' per-channel (D,) mean and standard deviation."""
        self.standardise.mean.copy_(mean)
        self.standardise.std.copy_(std.clamp(min=1e-6))

    def parameter_groups(self, lr: float) -> list[dict]:
        """The optimiser's parameter groups: every parameter at ``lr``."""
        return [{"params": list(self.parameters()), "lr": lr}]

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, D, h, w) float → (B, num_classes, h, w) logits."""
        return self.decode(self.standardise(tokens))


# What a linear head reads: the tokens standardised per channel, or each token scaled to unit length (cosine
# geometry, as k-means and the spectral masks read them; docs/benchmarks.md, "Objects in 500 COCO photos": 12.50
# against 10.93 mIoU on the COCO supercategories).
LINEAR_TOKENS = ("standardised", "unit")


class LinearHead(TokenHead):
    """A 1×1 convolution to class logits, on standardised tokens or (``tokens="unit"``) on unit-length ones."""

    def __init__(self, embed_dim: int, num_classes: int, tokens: str = "standardised"):
        super().__init__(embed_dim, num_classes)
        if tokens not in LINEAR_TOKENS:
            raise ValueError(f"linear head tokens {tokens!r}: one of {LINEAR_TOKENS}")
        self.tokens = tokens
        self.decode = torch.nn.Conv2d(embed_dim, num_classes, kernel_size=1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, D, h, w) float → (B, num_classes, h, w) logits."""
        if self.tokens == "unit":
            return self.decode(F.normalize(tokens, dim=1))
        return super().forward(tokens)


class MaskTransformer(torch.nn.Module):
    """Segmenter's mask transformer on standardised tokens: (B, D, h, w) → (B, C, h, w) mask logits."""

    def __init__(self, embed_dim: int, num_classes: int, width: int, layers: int, heads: int, dropout: float):
        super().__init__()
        self.num_classes = num_classes
        self.project_tokens = torch.nn.Linear(embed_dim, width)
        self.class_embeddings = torch.nn.Parameter(torch.randn(1, num_classes, width) * width**-0.5)
        layer = torch.nn.TransformerEncoderLayer(width, heads, dim_feedforward=4 * width, dropout=dropout,
                                                 activation="gelu", batch_first=True, norm_first=True)
        self.blocks = torch.nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = torch.nn.LayerNorm(width)
        self.project_patches = torch.nn.Parameter(width**-0.5 * torch.randn(width, width))
        self.project_classes = torch.nn.Parameter(width**-0.5 * torch.randn(width, width))
        self.mask_norm = torch.nn.LayerNorm(num_classes)

    def masks_and_classes(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, D, h, w) → ((B, C, h, w) mask logits, (B, C, width) the decoded class embeddings, L2-normalised: the
        C of TransFGU's diversity loss, Eq. 15)."""
        batch, _, height, width = tokens.shape
        patches = self.project_tokens(tokens.flatten(2).transpose(1, 2))  # (B, h·w, width)
        joint = torch.cat([patches, self.class_embeddings.expand(batch, -1, -1)], dim=1)
        joint = self.norm(self.blocks(joint))
        patches, classes = joint[:, : -self.num_classes], joint[:, -self.num_classes :]
        patches = F.normalize(patches @ self.project_patches, dim=-1)
        classes = F.normalize(classes @ self.project_classes, dim=-1)
        masks = self.mask_norm(patches @ classes.transpose(1, 2))  # (B, h·w, C)
        return masks.transpose(1, 2).reshape(batch, self.num_classes, height, width), classes

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.masks_and_classes(tokens)[0]


class MaskTransformerHead(TokenHead):
    """Standardise, then :class:`MaskTransformer`."""

    def __init__(self, embed_dim: int, num_classes: int, width: int = 384, layers: int = 2, heads: int = 6,
                 dropout: float = 0.1):
        super().__init__(embed_dim, num_classes)
        self.decode = MaskTransformer(embed_dim, num_classes, width, layers, heads, dropout)

    def logits_and_class_embeddings(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, D, h, w) tokens → ((B, C, h, w) logits as :meth:`forward` gives them, (B, C, width) L2-normalised class
        embeddings decoded with this batch's patches)."""
        return self.decode.masks_and_classes(self.standardise(tokens))


class AsppHead(TokenHead):
    """Standardise, then torchvision's DeepLab-v3 head (ASPP with the given atrous rates, 3×3 conv, 1×1 classifier)."""

    def __init__(self, embed_dim: int, num_classes: int, atrous_rates: Sequence[int] = (6, 12, 18)):
        super().__init__(embed_dim, num_classes)
        from torchvision.models.segmentation.deeplabv3 import DeepLabHead

        self.decode = DeepLabHead(embed_dim, num_classes, atrous_rates=tuple(int(rate) for rate in atrous_rates))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.shape[0] == 1 and self.training:
            # ASPP's image pooling branch has a BatchNorm over a 1×1 map: one image gives it a single value per
            # channel, which BatchNorm cannot normalise; duplicating the image keeps the statistics defined.
            return super().forward(tokens.expand(2, -1, -1, -1))[:1]
        return super().forward(tokens)


HEADS: dict[str, type[TokenHead]] = {"linear": LinearHead, "mask_transformer": MaskTransformerHead,
                                     "aspp": AsppHead}


def build_head(kind: str, embed_dim: int, num_classes: int, options: Mapping[str, Any] | None = None) -> TokenHead:
    """An untrained head of ``kind`` (a key of :data:`HEADS`) with its own ``options`` (keyword arguments)."""
    if kind not in HEADS:
        raise KeyError(f"no head {kind!r} (heads: {sorted(HEADS)})")
    return HEADS[kind](int(embed_dim), int(num_classes), **dict(options or {}))
