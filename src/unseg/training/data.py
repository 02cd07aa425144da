"""What the trainers read: (model input, labels) items of the images of a feature store, one at a time.

* :class:`TokenLabelDataset` — the stored token grid of each image (frozen-backbone training, no image decode);
* :class:`ImageLabelDataset` — the image itself in the store's geometry, augmented (:func:`augment_pair`), for
  trainers that fine-tune the backbone (:mod:`unseg.training.finetune`);
* :class:`TokenScoreDataset` — the stored token grid with per-class scores on that grid (:func:`class_scores`: the
  soft maps ``soft/{name}.npy`` beside a label PNG, else the PNG's class fractions per cell), for TransFGU's
  bootstrapping (:mod:`unseg.training.bootstrap`).

Labels are the label PNGs (0 background, 1..C-1 classes, 255 ignored) seen through the same geometry as the model
input, at ``label_scale`` × the token grid.

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

import numpy as np
import torch
import torch.nn.functional as F

from unseg.core.geometry import ResizeGeometry, image_to_grid, labels_at_input, resize_and_crop
from unseg.core.io import IGNORE_LABEL, read_image, read_label_png
from unseg.features.preprocess import normalize_batch
from unseg.features.store import FeatureStore

AUGMENT_KEYS = ("crop_scale", "hflip", "color_jitter", "grayscale", "blur")
DINO_JITTER = (0.4, 0.4, 0.2, 0.1)  # brightness, contrast, saturation, hue of DINO's global crops
# A label folder's soft class scores: {folder}/soft/{name}.npy beside {folder}/{name}.png, (C, h, w) float16 on the
# feature store's token grid of that image, channel 0 the background; NaN cells are ignored.
SOFT_FOLDER = "soft"
# In the label folder of a TransFGU round r >= 2: the teacher (round r-1's model) whose softmax M̂ aggregates.
TEACHER_FILE = "teacher.json"
# In the label folder of a round r >= 2: round r-1's model's own label maps at the image size, {name}.png, before the
# CRF or the average with the initial labels (for the audit; the trainers never read them).
PREDICTION_FOLDER = "prediction"


def token_tensor(store: FeatureStore, name: str, facet: str) -> torch.Tensor:
    """(1, D, h, w) float32 from the store's (h, w, D) grid."""
    return torch.from_numpy(np.ascontiguousarray(store.facet(name, facet), dtype=np.float32)).permute(2, 0, 1)[None]


def label_tensor(label_map: np.ndarray, geometry: ResizeGeometry, scale: int) -> torch.Tensor:
    """An (H0, W0) uint8 label map seen through the feature geometry (:func:`unseg.core.geometry.labels_at_input`), then
    nearest-resized to ``scale`` × the token grid; (h·s, w·s) int64."""
    grid_h, grid_w = geometry.grid_size
    labels = labels_at_input(label_map, geometry)[None, None].float()
    return F.interpolate(labels, size=(grid_h * scale, grid_w * scale), mode="nearest")[0, 0].long()


def soft_scores_path(label_png: str | Path) -> Path:
    """Where the soft class scores of a label PNG lie: ``{folder}/soft/{name}.npy`` (:data:`SOFT_FOLDER`)."""
    label_png = Path(label_png)
    return label_png.parent / SOFT_FOLDER / f"{label_png.stem}.npy"


def label_fractions(label_map: np.ndarray, geometry: ResizeGeometry, num_classes: int) -> np.ndarray:
    """The one-hot of an (H0, W0) label map brought to the token grid: (num_classes, h, w) float32, each class's
    share of the labelled pixels under each cell's footprint (:func:`unseg.core.geometry.image_to_grid`); NaN in the
    cells where the ignored pixels (255) outnumber every class."""
    fractions = np.stack([image_to_grid(label_map == index, geometry) for index in range(num_classes)])
    ignored = image_to_grid(label_map == IGNORE_LABEL, geometry)
    labelled = fractions.sum(0)
    scores = fractions / np.maximum(labelled, 1e-12)
    scores[:, ignored >= fractions.max(0)] = np.nan
    return scores.astype(np.float32)


def class_scores(label_png: str | Path, geometry: ResizeGeometry, num_classes: int) -> np.ndarray:
    """The class scores of one image on its token grid: (num_classes, h, w) float32, NaN where ignored.

    The soft maps ``soft/{name}.npy`` beside the PNG when they exist (TransFGU's pseudo-labels: background score
    and concept responses), else :func:`label_fractions` of the PNG (any pseudo-labels).

    Raises:
        ValueError: soft maps of another shape than (num_classes, *grid), or a PNG label ≥ ``num_classes``
            (other than 255); naming the file.
    """
    soft = soft_scores_path(label_png)
    if soft.exists():
        scores = np.load(soft).astype(np.float32)
        expected = (num_classes, *geometry.grid_size)
        if scores.shape != expected:
            raise ValueError(f"{soft}: soft class scores of shape {scores.shape}; expected {expected} "
                             "(classes incl. background, then the store's token grid of the image)")
        return scores
    label_map = read_label_png(label_png)
    too_large = (label_map >= num_classes) & (label_map != IGNORE_LABEL)
    if too_large.any():
        raise ValueError(f"{label_png}: label {label_map[too_large].max()} ≥ num_classes={num_classes}")
    return label_fractions(label_map, geometry, num_classes)


def item_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed for one item's augmentation draws."""
    return int.from_bytes(hashlib.sha256(f"{seed}/{epoch}/{index}".encode()).digest()[:8], "little") >> 1


def augment_pair(image: torch.Tensor, labels: torch.Tensor, settings: Mapping[str, Any], seed: int,
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """One random augmentation of a (3, Hc, Wc) uint8 image and its (Hc, Wc) int64 labels, both back at (Hc, Wc).

    Crop and flip move image and labels together (labels resampled by nearest neighbour); jitter, grayscale and
    blur change the image only. ``settings`` holds :data:`AUGMENT_KEYS` (and optionally ``jitter``: the colour
    jitter's brightness, contrast, saturation and hue, default :data:`DINO_JITTER`); ``seed`` fixes every draw.
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
        v2.RandomApply([v2.ColorJitter(*settings.get("jitter", DINO_JITTER))], p=settings["color_jitter"]),
        v2.RandomGrayscale(settings["grayscale"]),
        v2.RandomApply([v2.GaussianBlur(23, sigma=(0.1, 2.0))], p=settings["blur"]),
    ]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        image_out, labels_out = v2.Compose(steps)(tv_tensors.Image(image), tv_tensors.Mask(labels))
    return image_out.as_subclass(torch.Tensor), labels_out.as_subclass(torch.Tensor)


class StoreImages(torch.utils.data.Dataset):
    """Base of the training datasets: the named images of a feature store, the store opened lazily (so that
    DataLoader workers open their own)."""

    def __init__(self, store_path: str | Path, names: Sequence[str]):
        self.store_path, self.names = Path(store_path), list(names)
        self._store: FeatureStore | None = None

    @property
    def store(self) -> FeatureStore:
        if self._store is None:
            self._store = FeatureStore(self.store_path)
        return self._store

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_store": None}

    def __len__(self) -> int:
        return len(self.names)


class LabelledStoreImages(StoreImages):
    """Named images of a feature store with their label PNGs, checked against ``num_classes`` as they are read.

    Args:
        label_paths: image name → label PNG (0 background, 1..num_classes-1 classes, 255 ignored), in the order
            of the items.
        num_classes: labels must lie below it (or be 255); ``None`` skips the check (ground truth).
        label_scale: s, labels are resized by nearest to s × the token grid.
    """

    def __init__(self, store_path: str | Path, label_paths: Mapping[str, str | Path], num_classes: int | None,
                 label_scale: int):
        super().__init__(store_path, list(label_paths))
        self.label_paths = {name: Path(path) for name, path in label_paths.items()}
        self.num_classes, self.label_scale = num_classes, label_scale

    def label_map(self, name: str) -> np.ndarray:
        """The (H0, W0) uint8 label map of ``name``.

        Raises:
            ValueError: a label ≥ ``num_classes`` (other than 255), naming the file.
        """
        label_map = read_label_png(self.label_paths[name])
        if self.num_classes is not None:
            too_large = (label_map >= self.num_classes) & (label_map != IGNORE_LABEL)
            if too_large.any():
                raise ValueError(f"{self.label_paths[name]}: label {label_map[too_large].max()} ≥ "
                                 f"num_classes={self.num_classes}")
        return label_map


class TokenLabelDataset(LabelledStoreImages):
    """(tokens (D, h, w) float32, labels (h·s, w·s) int64) of each named image, read from the store on demand."""

    def __init__(self, store_path: str | Path, facet: str, label_paths: Mapping[str, str | Path],
                 num_classes: int | None, label_scale: int):
        super().__init__(store_path, label_paths, num_classes, label_scale)
        self.facet = facet

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        name = self.names[index]
        label_map = self.label_map(name)
        tokens = token_tensor(self.store, name, self.facet)[0]
        return tokens, label_tensor(label_map, self.store.geometry(name), self.label_scale)


class TokenScoreDataset(StoreImages):
    """(tokens (D, h, w) float32, class scores (num_classes, h, w) float32, NaN where ignored) of each named image,
    both on the token grid (:func:`class_scores`), read from the store and the label folder on demand.

    Args:
        label_paths: image name → label PNG; its soft scores ``soft/{name}.npy`` are read instead when present.
        num_classes: classes including background: the scores' channels.
    """

    def __init__(self, store_path: str | Path, facet: str, label_paths: Mapping[str, str | Path], num_classes: int):
        super().__init__(store_path, list(label_paths))
        self.facet, self.num_classes = facet, int(num_classes)
        self.label_paths = {name: Path(path) for name, path in label_paths.items()}

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        name = self.names[index]
        tokens = token_tensor(self.store, name, self.facet)[0]
        scores = class_scores(self.label_paths[name], self.store.geometry(name), self.num_classes)
        return tokens, torch.from_numpy(scores)


def crop_with_scores(image: torch.Tensor, scores: torch.Tensor, patch_size: int, settings: Mapping[str, Any],
                     seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """TransFGU's training augmentation (section 4.2, "Data Augmentation"): a random crop of the image, resized to
    half its size, with its class scores cropped from the token grid by RoI-Align; a flip of both; colour changes
    (DINO's jitter, grayscale, blur) on the image only.

    Args:
        image: (3, Hc, Wc) uint8, the image in the store's geometry (its token grid is (Hc, Wc) / ``patch_size``).
        scores: (C, h, w) float32 class scores on that grid, NaN where ignored.
        settings: ``crop_side`` (the crop's side as a fraction of the image's, drawn uniformly in the range; the
            authors' code draws 0.4-0.9), ``output_scale`` (the crop is resized to this fraction of the image's size,
            0.5: "resized to (H/2, W/2)"), and :data:`AUGMENT_KEYS`' ``hflip``, ``color_jitter``, ``grayscale``,
            ``blur``.
        seed: fixes every draw.

    Returns:
        (the crop (3, H', W') uint8, its scores (C, H'/p, W'/p) float32, NaN where less than half of a cell's
        RoI-Align samples were labelled), H' and W' multiples of the patch size.
    """
    from torchvision.ops import roi_align
    from torchvision.transforms import v2

    generator = torch.Generator().manual_seed(seed)
    height, width = image.shape[-2:]
    low, high = settings["crop_side"]
    side = low + (high - low) * float(torch.rand((), generator=generator))
    crop_h, crop_w = max(1, round(height * side)), max(1, round(width * side))
    top = int(torch.randint(0, height - crop_h + 1, (), generator=generator))
    left = int(torch.randint(0, width - crop_w + 1, (), generator=generator))
    scale = float(settings["output_scale"])
    out_h = max(patch_size, round(height * scale / patch_size) * patch_size)
    out_w = max(patch_size, round(width * scale / patch_size) * patch_size)
    crop = F.interpolate(image[None, :, top : top + crop_h, left : left + crop_w].float(), size=(out_h, out_w),
                         mode="bilinear", align_corners=False, antialias=True)[0].round().clamp(0, 255).byte()
    labelled = ~scores.isnan().any(0, keepdim=True)
    box = torch.tensor([[0.0, left / patch_size, top / patch_size, (left + crop_w) / patch_size,
                         (top + crop_h) / patch_size]])
    grid = (out_h // patch_size, out_w // patch_size)
    pooled = roi_align(torch.cat([scores.nan_to_num(0.0), labelled.float()])[None], box, grid, spatial_scale=1.0,
                       sampling_ratio=2, aligned=True)[0]
    cropped = pooled[:-1] / pooled[-1:].clamp(min=1e-6)
    cropped[:, pooled[-1] < 0.5] = float("nan")
    if float(torch.rand((), generator=generator)) < settings["hflip"]:
        crop, cropped = crop.flip(-1), cropped.flip(-1)
    photometric = v2.Compose([
        v2.RandomApply([v2.ColorJitter(*settings.get("jitter", DINO_JITTER))], p=settings["color_jitter"]),
        v2.RandomGrayscale(settings["grayscale"]),
        v2.RandomApply([v2.GaussianBlur(23, sigma=(0.1, 2.0))], p=settings["blur"]),
    ])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        crop = photometric(crop)
    return crop, cropped


class ImageScoreDataset(StoreImages):
    """(augmented image (3, H', W') float32 normalised, its class scores (C, H'/p, W'/p) float32, NaN where ignored)
    of each named image (:func:`crop_with_scores`, draws fixed by (seed, epoch, index)): TransFGU's augmented
    training of its decoder through the frozen ViT.

    Args:
        image_paths: image name → image file; label_paths: image name → label PNG (soft scores beside it, as
            :class:`TokenScoreDataset`).
        mean, std: the backbone's input normalisation.
        settings: of :func:`crop_with_scores`.
    """

    def __init__(self, store_path: str | Path, image_paths: Mapping[str, str | Path],
                 label_paths: Mapping[str, str | Path], num_classes: int, mean: Sequence[float],
                 std: Sequence[float], settings: Mapping[str, Any], seed: int = 0):
        super().__init__(store_path, list(label_paths))
        missing = [name for name in self.names if name not in image_paths]
        if missing:
            raise KeyError(f"no image path for {missing[:3]}")
        self.image_paths = {name: Path(image_paths[name]) for name in self.names}
        self.label_paths = {name: Path(path) for name, path in label_paths.items()}
        self.num_classes, self.mean, self.std = int(num_classes), list(mean), list(std)
        self.settings, self.seed, self.epoch = dict(settings), int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        name = self.names[index]
        geometry = self.store.geometry(name)
        image = resize_and_crop(read_image(self.image_paths[name]), geometry)
        scores = torch.from_numpy(class_scores(self.label_paths[name], geometry, self.num_classes))
        crop, cropped = crop_with_scores(image, scores, self.store.patch_size, self.settings,
                                         item_seed(self.seed, self.epoch, index))
        return normalize_batch(crop[None], self.mean, self.std)[0], cropped


class ImageLabelDataset(LabelledStoreImages):
    """(image (3, Hc, Wc) float32 normalised, labels (h·s, w·s) int64) of each named image, augmented (when
    ``augment`` is given) with draws fixed by (seed, epoch, index); geometry from the feature store.

    Args:
        image_paths: image name → image file, for every name of ``label_paths``.
        mean, std: the backbone's input normalisation.
        augment: :data:`AUGMENT_KEYS` settings (:func:`augment_pair`), or None for the plain image.
    """

    def __init__(self, store_path: str | Path, image_paths: Mapping[str, str | Path],
                 label_paths: Mapping[str, str | Path], num_classes: int | None, label_scale: int,
                 mean: Sequence[float], std: Sequence[float], augment: Mapping[str, Any] | None, seed: int = 0):
        super().__init__(store_path, label_paths, num_classes, label_scale)
        missing = [name for name in self.names if name not in image_paths]
        if missing:
            raise KeyError(f"no image path for {missing[:3]}")
        self.image_paths = {name: Path(image_paths[name]) for name in self.names}
        self.mean, self.std, self.augment, self.seed, self.epoch = tuple(mean), tuple(std), augment, seed, 0

    def set_epoch(self, epoch: int) -> None:
        """Draw the augmentations of ``epoch`` (0-based) from now on."""
        self.epoch = int(epoch)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        name = self.names[index]
        label_map = self.label_map(name)
        geometry = self.store.geometry(name)
        image = resize_and_crop(read_image(self.image_paths[name]), geometry)
        labels = labels_at_input(label_map, geometry)
        if self.augment is not None:
            image, labels = augment_pair(image, labels, self.augment, item_seed(self.seed, self.epoch, index))
        grid_h, grid_w = geometry.grid_size
        labels = F.interpolate(labels[None, None].float(), size=(grid_h * self.label_scale, grid_w * self.label_scale),
                               mode="nearest")[0, 0].long()
        return normalize_batch(image[None], self.mean, self.std)[0], labels
