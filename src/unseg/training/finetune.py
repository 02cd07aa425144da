"""The image-based training path: a head over the ViT whose last blocks are fine-tuned, on augmented images.

A trainer with ``finetune_blocks: N > 0`` (every head trainer of :mod:`unseg.stages.train` has the setting) trains
:class:`ImageSegmenter`: the backbone that made the feature store (its ``backbone`` and ``weights`` attributes, the
weights checked against the store's ``weights_digest``), its first blocks frozen and run without gradients, its last
N blocks and final norm trained at ``backbone_lr`` (peak, cosine like the head's), then the head on the patch-token
grid. Without augmentation and before any step, the grid it feeds the head is the store's ``tokens`` facet (the
last block after the final norm): the head's token statistics come from the store, and the round's predictions and
CRF labels run the same network on the images.
The augmented images come from :class:`unseg.training.data.ImageLabelDataset`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from unseg.features.backbones import CheckpointError, create_backbone, weights_digest
from unseg.training.heads import TokenHead


def load_store_backbone(backbone: str, weights: str, expected_digest: str) -> tuple[torch.nn.Module, Any]:
    """The backbone a feature store was made with, its weights checked against the digest the store recorded.

    Raises:
        CheckpointError: the weights file changed since the features were extracted.
    """
    found = weights_digest(weights)
    if found != expected_digest:
        raise CheckpointError(f"weights {weights!r} have digest {found}, but the features were extracted with "
                              f"{expected_digest}: re-run the features stage, or restore the weights file")
    return create_backbone(backbone, weights)


class ImageSegmenter(torch.nn.Module):
    """(B, 3, Hc, Wc) normalised float32 images → (B, C, h, w) logits: a timm ViT whose first blocks are frozen and
    whose last ``trainable_blocks`` blocks and final norm train, then ``head`` on the (B, D, h, w) patch-token grid.

    ``state_dict()`` holds the trained part only (the head and the fine-tuned blocks; the frozen blocks come from
    the weights file), and ``load_state_dict`` expects exactly that part.
    """

    def __init__(self, backbone: torch.nn.Module, trainable_blocks: int, head: TokenHead, patch_size: int,
                 backbone_lr: float = 1e-5):
        super().__init__()
        self.backbone_lr = float(backbone_lr)
        num_blocks = len(backbone.blocks)
        if not 0 <= trainable_blocks <= num_blocks:
            raise ValueError(f"finetune_blocks={trainable_blocks}: the backbone has {num_blocks} blocks")
        self.backbone, self.head, self.patch_size = backbone, head, int(patch_size)
        self.first_trained = num_blocks - trainable_blocks
        # 0 trained blocks: the whole ViT frozen (the head alone trains, on images, e.g. under augmentations)
        trained_prefixes = tuple(f"blocks.{i}." for i in range(self.first_trained, num_blocks)) + \
            (("norm.",) if trainable_blocks else ())
        self.frozen_keys = set()
        for key, parameter in backbone.named_parameters():
            parameter.requires_grad_(key.startswith(trained_prefixes))
        for key in backbone.state_dict():
            if not key.startswith(trained_prefixes):
                self.frozen_keys.add(f"backbone.{key}")
        self.register_state_dict_post_hook(ImageSegmenter._drop_frozen)
        self.register_load_state_dict_post_hook(ImageSegmenter._frozen_not_missing)

    @staticmethod
    def _drop_frozen(module, state_dict, prefix, local_metadata) -> None:
        for key in module.frozen_keys:
            state_dict.pop(prefix + key, None)

    @staticmethod
    def _frozen_not_missing(module, incompatible_keys) -> None:
        missing = [key for key in incompatible_keys.missing_keys if key not in module.frozen_keys]
        incompatible_keys.missing_keys[:] = missing

    def set_statistics(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.head.set_statistics(mean, std)

    def parameter_groups(self, lr: float) -> list[dict]:
        """AdamW groups: the head at ``lr``, the fine-tuned blocks at ``backbone_lr``."""
        tail = [parameter for parameter in self.backbone.parameters() if parameter.requires_grad]
        return [*self.head.parameter_groups(lr), *([{"params": tail, "lr": self.backbone_lr}] if tail else [])]

    def tokens(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, Hc, Wc) → (B, D, h, w): the last block's patch tokens after the final norm (the store's
        ``tokens`` facet); the frozen blocks run without gradients."""
        backbone = self.backbone
        grid = (images.shape[-2] // self.patch_size, images.shape[-1] // self.patch_size)
        with torch.no_grad():
            x = backbone.norm_pre(backbone.patch_drop(backbone._pos_embed(backbone.patch_embed(images))))
            for block in backbone.blocks[: self.first_trained]:
                x = block(x)
            if self.first_trained == len(backbone.blocks):
                x = backbone.norm(x)
        for block in backbone.blocks[self.first_trained :]:
            x = block(x)
        if self.first_trained < len(backbone.blocks):
            x = backbone.norm(x)
        x = x[:, backbone.num_prefix_tokens :]
        return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], *grid)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.tokens(images))

    def logits_and_class_embeddings(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A mask-transformer head's logits and class embeddings over the images' tokens (TransFGU's losses)."""
        return self.head.logits_and_class_embeddings(self.tokens(images))


def build_image_segmenter(config: Mapping[str, Any], head: TokenHead) -> ImageSegmenter:
    """The :class:`ImageSegmenter` a checkpoint's config describes (``backbone``, ``weights``, ``weights_digest``,
    ``finetune_blocks``), with ``head`` on top; untrained blocks as in the weights file."""
    backbone, spec = load_store_backbone(config["backbone"], config["weights"], config["weights_digest"])
    return ImageSegmenter(backbone, int(config["finetune_blocks"]), head, spec.patch_size)


