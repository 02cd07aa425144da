"""The image-based training path: a head over the ViT whose last blocks are fine-tuned, on augmented images.

A trainer with ``finetune_blocks: N > 0`` (every head trainer of :mod:`unseg.train` has the setting) trains
:class:`ImageSegmenter`: the backbone that made the feature store (its ``backbone`` and ``weights`` attributes, the
weights checked against the store's ``weights_digest``), its first blocks frozen and run without gradients, its last
N blocks and final norm trained at ``backbone_lr`` (peak, cosine like the head's), then the head on the patch-token
grid. Without augmentation and before any step, the grid it feeds the head is the store's ``tokens`` facet (the
last block after the final norm): the head's token statistics come from the store, and the round's predictions and
CRF labels run the same network on the images.

Augmentations (:func:`augment_pair`, torchvision's ``transforms.v2`` on the image and its labels together, so a
crop or a flip moves both; colour changes touch the image only): random resized crop back to the ViT's input size,
horizontal flip, colour jitter, grayscale and Gaussian blur, with DINO's global-crop settings as defaults (Caron et
al. 2021, appendix: jitter 0.4/0.4/0.2/0.1 with p 0.8, grayscale p 0.2, blur sigma 0.1-2, crop scale 0.4-1), the set
TransFGU trains its decoder with (section 4.1, "Data Augmentation ... following [15,4]"). Each item's draws are
seeded by (seed, epoch, index), so a resumed run sees the same augmentations as an uninterrupted one whatever the
number of DataLoader workers.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .backbones import CheckpointError, create_backbone, weights_digest
from .features import normalize_batch
from .geometry import labels_at_input, resize_and_crop
from .heads import TokenHead
from .io import IGNORE_LABEL, read_image, read_label_png
from .store import FeatureStore

# The loop settings of the image path (their defaults stated once, here; unseg.train adds them to every head
# trainer's schema).
FINETUNE_SCHEMA: dict[str, dict] = {
    "finetune_blocks": {"type": "integer", "minimum": 0, "default": 0,
                        "description": "fine-tune the ViT's last N blocks (and its final norm) under the head, on "
                                       "augmented images; 0 trains the head on the stored tokens (no image decode)"},
    "probe_epochs": {"type": "integer", "minimum": 0, "default": 40,
                     "description": "finetune_blocks > 0: first train the head alone on the stored tokens for this "
                                    "many epochs (linear probing, then fine-tuning: a random head's gradients would "
                                    "distort the pre-trained blocks; Kumar et al. 2022, LP-FT); skipped when the round "
                                    "starts from a previous model; 0 fine-tunes from a random head"},
    # Measured on the VOC crops (linear head, 1 block, 20 epochs; docs/benchmarks.md): 1e-3 → 30.2 mIoU, 1e-4 → 30.4,
    # 1e-5 → 33.1, frozen 32.4. Pre-trained blocks move little or they forget.
    "backbone_lr": {"type": "number", "exclusiveMinimum": 0, "default": 1e-5,
                    "description": "AdamW peak learning rate of the fine-tuned blocks (cosine decay as the head's lr)"},
    "crop_scale": {"type": "array", "items": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
                   "minItems": 2, "maxItems": 2, "default": [0.4, 1.0],
                   "description": "random resized crop: area fraction range (DINO's global crops), resized back to "
                                  "the ViT input; [1, 1] turns it off (finetune_blocks > 0 only)"},
    "hflip": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.5,
              "description": "probability of a horizontal flip (finetune_blocks > 0 only)"},
    "color_jitter": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.8,
                     "description": "probability of DINO's colour jitter (brightness 0.4, contrast 0.4, saturation "
                                    "0.2, hue 0.1) (finetune_blocks > 0 only)"},
    "grayscale": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.2,
                  "description": "probability of a grayscale conversion (finetune_blocks > 0 only)"},
    "blur": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.5,
             "description": "probability of a Gaussian blur, sigma 0.1-2 (finetune_blocks > 0 only)"},
}
AUGMENT_KEYS = ("crop_scale", "hflip", "color_jitter", "grayscale", "blur")


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
        if not 1 <= trainable_blocks <= num_blocks:
            raise ValueError(f"finetune_blocks={trainable_blocks}: the backbone has {num_blocks} blocks")
        self.backbone, self.head, self.patch_size = backbone, head, int(patch_size)
        self.first_trained = num_blocks - trainable_blocks
        trained_prefixes = tuple(f"blocks.{i}." for i in range(self.first_trained, num_blocks)) + ("norm.",)
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
        return [*self.head.parameter_groups(lr), {"params": tail, "lr": self.backbone_lr}]

    def tokens(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, Hc, Wc) → (B, D, h, w): the last block's patch tokens after the final norm (the store's
        ``tokens`` facet); the frozen blocks run without gradients."""
        backbone = self.backbone
        grid = (images.shape[-2] // self.patch_size, images.shape[-1] // self.patch_size)
        with torch.no_grad():
            x = backbone.norm_pre(backbone.patch_drop(backbone._pos_embed(backbone.patch_embed(images))))
            for block in backbone.blocks[: self.first_trained]:
                x = block(x)
        for block in backbone.blocks[self.first_trained :]:
            x = block(x)
        x = backbone.norm(x)[:, backbone.num_prefix_tokens :]
        return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], *grid)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.tokens(images))


def build_image_segmenter(config: Mapping[str, Any], head: TokenHead) -> ImageSegmenter:
    """The :class:`ImageSegmenter` a checkpoint's config describes (``backbone``, ``weights``, ``weights_digest``,
    ``finetune_blocks``), with ``head`` on top; untrained blocks as in the weights file."""
    backbone, spec = load_store_backbone(config["backbone"], config["weights"], config["weights_digest"])
    return ImageSegmenter(backbone, int(config["finetune_blocks"]), head, spec.patch_size)


def item_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed for one item's augmentation draws."""
    return int.from_bytes(hashlib.sha256(f"{seed}/{epoch}/{index}".encode()).digest()[:8], "little") >> 1


def augment_pair(image: torch.Tensor, labels: torch.Tensor, settings: Mapping[str, Any], seed: int,
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """One random augmentation of a (3, Hc, Wc) uint8 image and its (Hc, Wc) int64 labels, both back at (Hc, Wc).

    Crop and flip move image and labels together (labels resampled by nearest neighbour); jitter, grayscale and
    blur change the image only. ``settings`` holds :data:`AUGMENT_KEYS`; ``seed`` fixes every draw.
    """
    from torchvision import tv_tensors
    from torchvision.transforms import v2

    size = tuple(image.shape[-2:])
    low, high = settings["crop_scale"]
    steps = []
    if low < 1:
        steps.append(v2.RandomResizedCrop(size, scale=(low, high), antialias=True))
    steps += [
        v2.RandomHorizontalFlip(settings["hflip"]),
        v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=settings["color_jitter"]),
        v2.RandomGrayscale(settings["grayscale"]),
        v2.RandomApply([v2.GaussianBlur(23, sigma=(0.1, 2.0))], p=settings["blur"]),
    ]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        image_out, labels_out = v2.Compose(steps)(tv_tensors.Image(image), tv_tensors.Mask(labels))
    return image_out.as_subclass(torch.Tensor), labels_out.as_subclass(torch.Tensor)


class ImageLabelDataset(torch.utils.data.Dataset):
    """(image (3, Hc, Wc) float32 normalised, labels (h·s, w·s) int64) of each named image, augmented (when
    ``augment`` is given) with draws fixed by (seed, epoch, index); geometry from the feature store.

    Args:
        image_paths, label_paths: image name → file; the items are ``label_paths``' names, in order.
        num_classes: labels must lie below it (or be 255); ``None`` skips the check (ground truth).
        mean, std: the backbone's input normalisation.
        augment: :data:`AUGMENT_KEYS` settings, or None for the plain image.
    """

    def __init__(self, store_path: str | Path, image_paths: Mapping[str, str | Path],
                 label_paths: Mapping[str, str | Path], num_classes: int | None, label_scale: int,
                 mean: Sequence[float], std: Sequence[float], augment: Mapping[str, Any] | None, seed: int = 0):
        self.store_path, self.names = Path(store_path), list(label_paths)
        missing = [name for name in self.names if name not in image_paths]
        if missing:
            raise KeyError(f"no image path for {missing[:3]}")
        self.image_paths = {name: Path(image_paths[name]) for name in self.names}
        self.label_paths = {name: Path(path) for name, path in label_paths.items()}
        self.num_classes, self.label_scale = num_classes, label_scale
        self.mean, self.std, self.augment, self.seed, self.epoch = tuple(mean), tuple(std), augment, seed, 0
        self._store: FeatureStore | None = None

    @property
    def store(self) -> FeatureStore:
        if self._store is None:  # opened lazily, so that DataLoader workers open their own
            self._store = FeatureStore(self.store_path)
        return self._store

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_store": None}

    def set_epoch(self, epoch: int) -> None:
        """Draw the augmentations of ``epoch`` (0-based) from now on."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        name = self.names[index]
        label_map = read_label_png(self.label_paths[name])
        if self.num_classes is not None:
            too_large = (label_map >= self.num_classes) & (label_map != IGNORE_LABEL)
            if too_large.any():
                raise ValueError(f"{self.label_paths[name]}: label {label_map[too_large].max()} ≥ "
                                 f"num_classes={self.num_classes}")
        geometry = self.store.geometry(name)
        image = resize_and_crop(read_image(self.image_paths[name]), geometry)
        labels = labels_at_input(label_map, geometry)
        if self.augment is not None:
            image, labels = augment_pair(image, labels, self.augment, item_seed(self.seed, self.epoch, index))
        grid_h, grid_w = geometry.grid_size
        labels = F.interpolate(labels[None, None].float(), size=(grid_h * self.label_scale, grid_w * self.label_scale),
                               mode="nearest")[0, 0].long()
        return normalize_batch(image[None], self.mean, self.std)[0], labels
