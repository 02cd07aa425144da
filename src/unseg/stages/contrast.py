"""The contrast stage: MaskContrast's pixel embeddings, learned over saliency masks → a feature store of their own.

MaskContrast (Van Gansbeke et al., ICCV 2021; its README and pretrain code, ``../shared/papers/000_*``) learns pixel
embeddings by contrasting object mask proposals. Here, for each training step:

* two augmentations of each image (the *query* and the *key* view), each with its saliency mask moved along
  (random resized crop 0.2-1, flip, colour jitter 0.4/0.4/0.4/0.1 with p 0.8, grayscale p 0.2: the pretrain code's
  ``get_train_transformations``); a view whose foreground covers under 1 % or over 99 % of it is redrawn, up to
  three times, after which the image sits the step out (the code's ``min_area``/``max_area`` 0.01/0.99);
* the query model: the ViT that made the feature store (frozen, or its last ``finetune_blocks`` trained) and a head
  (``aspp``: DeepLab-v3's, the code's ``head: deeplab``) with ``embedding_dim`` + 1 outputs, upsampled bilinearly to
  ``label_scale`` × the token grid: an L2-normalised embedding per pixel and a saliency logit;
* the key model: a momentum copy of the query model, θ_k ← m·θ_k + (1 − m)·θ_q before every step (MoCo);
* the prototype of an image: the L2-normalised sum of the key embeddings inside its key-view mask;
* the loss: every foreground pixel q of a query view is classified among the batch's prototypes and the queue of
  ``queue_size`` earlier prototypes, its own image's prototype the target:
  CE(softmax([q·p_1, ..., q·p_B, q·n_1, ..., q·n_K] / T), own image) averaged over the foreground pixels, plus
  ``saliency_loss_weight`` × the balanced binary cross-entropy of the saliency logit against the query mask (HED
  weighting: positives weighted by the negative fraction); the batch's prototypes then enter the queue (FIFO).
  One departure: a queued prototype of a pixel's own image is not one of its negatives (see
  :func:`prototype_contrastive_loss`; it matters only for datasets not much larger than the queue).

Defaults are the code's unsupervised-saliency config (``pretrain/configs/VOCSegmentation_unsupervised_saliency_model``):
T = 0.5, m = 0.999, K = 256 negatives, 32-dim embeddings, SGD lr 0.004 momentum 0.9 weight decay 1e-4 with the poly
schedule (power 0.9), 40 epochs, batch 128.

Artifacts: ``contrast/{variant}/model.pt`` (+ ``last.pt``, ``log.csv``) and ``features/{variant}.zarr``: the same
images and geometry as the input store, one facet ``embeddings`` ((h, w, embedding_dim) float16, unit length), so
the k-means, linear-probe and retrieval evaluations, the masks, saliency and pseudo-label stages and the trainers
read it as they read any features variant (``features: {variant}``).
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from unseg.config.registry import REGISTRIES
from unseg.core.devices import resolve_device
from unseg.core.geometry import labels_at_input, resize_and_crop
from unseg.core.io import read_image, read_saliency
from unseg.features.backbones import get_backbone_spec
from unseg.features.preprocess import normalize_batch, preprocess_image
from unseg.features.store import FeatureStore, write_derived_store
from unseg.training.data import TokenLabelDataset, augment_pair, item_seed, token_tensor
from unseg.training.engine import TrainingTask, autocast, run_training
from unseg.training.finetune import ImageSegmenter, load_store_backbone
from unseg.training.heads import build_head
from unseg.training.statistics import scan  # the trainers' streaming token statistics

EMBEDDINGS_FACET = "embeddings"
# MaskContrast's colour jitter (brightness, contrast, saturation, hue): get_train_transformations.
MASKCONTRAST_JITTER = (0.4, 0.4, 0.4, 0.1)
_REDRAWS = 3
LOG_FIELDS = ("epoch", "loss", "contrastive_loss", "saliency_loss", "images_used")


def balanced_bce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """HED-style balanced binary cross-entropy (MaskContrast's saliency loss): w·Σ_pos ℓ + (1 − w)·Σ_neg ℓ over the
    number of pixels, w the fraction of negatives. logits, targets: same shape, float; targets in {0, 1}."""
    targets = targets.float()
    negative_fraction = 1.0 - targets.mean()
    weights = torch.where(targets > 0.5, negative_fraction, 1.0 - negative_fraction)
    return (F.binary_cross_entropy_with_logits(logits.float(), targets, reduction="none") * weights).sum() / \
        targets.numel()


def mask_prototypes(embeddings: Sequence[torch.Tensor], masks: Sequence[torch.Tensor]) -> torch.Tensor:
    """Per image (C, H, W) unit embeddings and (H, W) {0, 1} mask (a (B, C, H, W) and a (B, H, W) tensor do; sizes
    may differ between images) → (B, C): each image's L2-normalised sum of the embeddings inside its mask."""
    summed = torch.stack([torch.einsum("chw,hw->c", e.float(), m.float()) for e, m in zip(embeddings, masks)])
    return F.normalize(summed, dim=1)


def prototype_contrastive_loss(embeddings: Sequence[torch.Tensor], masks: Sequence[torch.Tensor],
                               prototypes: torch.Tensor, negatives: torch.Tensor, temperature: float,
                               image_ids: torch.Tensor | None = None, negative_ids: torch.Tensor | None = None,
                               ) -> torch.Tensor:
    """MaskContrast's loss: each foreground pixel's embedding classified among the batch's prototypes and the queued
    negatives, its own image's prototype the target; cross-entropy averaged over the foreground pixels.

    Args:
        embeddings: per image (C, H, W) unit query embeddings (a (B, C, H, W) tensor does; sizes may differ).
        masks: per image (H, W) bool, the query view's foreground.
        prototypes: (B, C) unit prototypes of the key views (no gradient).
        negatives: (K, C) unit prototypes of earlier batches (K may be 0).
        image_ids, negative_ids: (B,) and (K,) int64 image identities; when given, a queued prototype of a pixel's own
            image (from an earlier epoch) is left out of that pixel's negatives. MaskContrast's queue of 256 among
            10,582 images rarely holds one; among a few dozen images it holds several, and contrasting an image with
            its own earlier prototype makes the task contradictory.
    """
    pixels = torch.cat([e.permute(1, 2, 0)[m] for e, m in zip(embeddings, masks)])  # (P, C)
    owners = torch.cat([torch.full((int(m.sum()),), i, dtype=torch.int64, device=pixels.device)
                        for i, m in enumerate(masks)])  # (P,) the image each pixel belongs to
    queued = pixels @ negatives.t()
    if image_ids is not None and negative_ids is not None and negatives.shape[0]:
        own = image_ids[owners][:, None] == negative_ids[None, :]  # (P, K)
        queued = queued.masked_fill(own, float("-inf"))
    logits = torch.cat([pixels @ prototypes.t(), queued], dim=1) / temperature
    return F.cross_entropy(logits.float(), owners)


class PrototypeQueue:
    """A FIFO of the last ``size`` prototypes: (size, C) unit ``vectors`` with the (size,) int64 ``owners`` (image
    ids) they came from; it starts from random unit vectors owned by no image (-1), as MoCo's."""

    def __init__(self, size: int, dim: int, generator: torch.Generator):
        self.vectors = F.normalize(torch.randn(size, dim, generator=generator), dim=1)
        self.owners = torch.full((size,), -1, dtype=torch.int64)
        self.pointer = 0

    def enqueue(self, prototypes: torch.Tensor, owners: torch.Tensor | None = None) -> None:
        """Replace the oldest entries by ``prototypes`` (B, C) of images ``owners`` (B,); wraps around the end."""
        size = self.vectors.shape[0]
        if size == 0:
            return
        owners = torch.full((prototypes.shape[0],), -1, dtype=torch.int64) if owners is None else owners
        prototypes = prototypes.detach().to(self.vectors.device, self.vectors.dtype)[-size:]
        owners = owners.detach().to(torch.int64).cpu()[-size:]
        positions = (self.pointer + torch.arange(prototypes.shape[0])) % size
        self.vectors[positions] = prototypes
        self.owners[positions] = owners
        self.pointer = int((self.pointer + prototypes.shape[0]) % size)

    def state_dict(self) -> dict[str, Any]:
        return {"vectors": self.vectors.cpu().clone(), "owners": self.owners.clone(), "pointer": self.pointer}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.vectors = state["vectors"].to(self.vectors.device)
        self.owners = state["owners"].clone()
        self.pointer = int(state["pointer"])


@torch.no_grad()
def momentum_update(key_model: torch.nn.Module, query_model: torch.nn.Module, momentum: float) -> None:
    """θ_k ← m·θ_k + (1 − m)·θ_q for every trained parameter of the two (identically built) models; the frozen ones
    are left bit-identical (m·θ + (1 − m)·θ need not round back to θ)."""
    for key_parameter, query_parameter in zip(key_model.parameters(), query_model.parameters()):
        if query_parameter.requires_grad:
            key_parameter.mul_(momentum).add_(query_parameter.detach(), alpha=1.0 - momentum)


class ContrastViews(torch.utils.data.Dataset):
    """Per image, two augmented views with their saliency masks, for one epoch's draws.

    Items: (query image (3, Hc, Wc) float32 normalised, query mask (Hc, Wc) float32 {0, 1}, key image, key mask,
    usable bool, index int); ``usable`` is False when no draw within ``_REDRAWS`` gave both views a foreground
    fraction in (min_area, max_area).
    """

    def __init__(self, store_path: str | Path, names: Sequence[str], image_paths: Mapping[str, str | Path],
                 saliency_dir: str | Path, mean: Sequence[float], std: Sequence[float], augment: Mapping[str, Any],
                 area: tuple[float, float], seed: int):
        self.store_path, self.names = Path(store_path), list(names)
        self.image_paths = {name: Path(image_paths[name]) for name in self.names}
        self.saliency_dir, self.mean, self.std = Path(saliency_dir), tuple(mean), tuple(std)
        self.augment, self.area, self.seed, self.epoch = dict(augment), area, seed, 0
        self._store: FeatureStore | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_store": None}

    @property
    def store(self) -> FeatureStore:
        if self._store is None:
            self._store = FeatureStore(self.store_path)
        return self._store

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int):
        name = self.names[index]
        geometry = self.store.geometry(name)
        image = resize_and_crop(read_image(self.image_paths[name]), geometry)
        mask = labels_at_input((read_saliency(self.saliency_dir, name) > 0.5).astype(np.uint8), geometry)
        low, high = self.area
        views = []
        for view in range(2):
            for attempt in range(_REDRAWS + 1):
                seed = item_seed(self.seed, self.epoch, 8 * index + 4 * view + attempt)
                view_image, view_mask = augment_pair(image, mask, self.augment, seed)
                if low < float(view_mask.float().mean()) < high:
                    break
            views.append((view_image, view_mask))
        usable = all(low < float(view_mask.float().mean()) < high for _, view_mask in views)
        (query, query_mask), (key, key_mask) = views
        return (normalize_batch(query[None], self.mean, self.std)[0], query_mask.float(),
                normalize_batch(key[None], self.mean, self.std)[0], key_mask.float(), usable, index)


def grid_masks(masks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, Hc, Wc) {0, 1} pixel masks → (B, h, w) {0, 1}: foreground where over half of the cell is."""
    return (F.adaptive_avg_pool2d(masks[:, None].float(), size)[:, 0] > 0.5).float()


def embeddings_and_saliency(model: ImageSegmenter, images: Sequence[torch.Tensor], embedding_dim: int, scale: int,
                            ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per (3, Hc, Wc) image, its (C, h·s, w·s) unit embeddings and (h·s, w·s) saliency logits. Images of one size
    run as one batch (a dataset of several aspect ratios gives a few batches per step)."""
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for position, image in enumerate(images):
        by_shape.setdefault(tuple(image.shape), []).append(position)
    results: list[Any] = [None] * len(images)
    for positions in by_shape.values():
        out = model(torch.stack([images[p] for p in positions]))
        out = F.interpolate(out.float(), scale_factor=scale, mode="bilinear", align_corners=False)
        embeddings = F.normalize(out[:, :embedding_dim], dim=1)
        for row, position in enumerate(positions):
            results[position] = (embeddings[row], out[row, embedding_dim])
    return results


@dataclass(frozen=True)
class ContrastInputs:
    """What the contrast stage reads and writes.

    Attributes:
        store_path: the input feature store (must hold ``tokens``); its backbone is rebuilt from its attributes.
        image_paths: image name → image file, for every image of the store.
        saliency_dir: the saliency variant's folder (``{name}.png``, foreground > 127).
        out_dir: ``contrast/{variant}/`` (``model.pt``, ``last.pt``, ``log.csv``).
        embeddings_path: the feature store of the learned embeddings to write.
        config: the variant's settings (stored in the checkpoint).
    """

    store_path: Path
    image_paths: Mapping[str, Path]
    saliency_dir: Path
    out_dir: Path
    embeddings_path: Path
    config: Mapping[str, Any]
    progress: bool = True


class MaskContrastTraining(TrainingTask):
    """MaskContrast's part of the training engine: one step per batch of views with a usable mask in both (a batch
    left empty is skipped), the momentum update of the key model, the contrastive and saliency losses over the whole
    batch (they couple its images: the step does not split), then the batch's prototypes into the queue."""

    log_fields = LOG_FIELDS

    def __init__(self, model: ImageSegmenter, key_model: ImageSegmenter, views: ContrastViews, queue: PrototypeQueue,
                 generator: torch.Generator, *, batch_size: int, workers: int, device: torch.device,
                 embedding_dim: int, label_scale: int, key_momentum: float, temperature: float,
                 saliency_loss_weight: float, area: tuple[float, float]):
        self.model, self.key_model, self.views, self.queue, self.generator = model, key_model, views, queue, generator
        self.batch_size, self.workers, self.device = batch_size, workers, device
        self.embedding_dim, self.label_scale, self.key_momentum = embedding_dim, label_scale, key_momentum
        self.temperature, self.saliency_loss_weight, self.area = temperature, saliency_loss_weight, area
        self.sums: dict[str, float] = {}
        self.steps = self.used = 0

    def batches(self, epoch: int) -> Iterator[list]:
        self.views.set_epoch(epoch)
        self.sums = {"loss": 0.0, "contrastive_loss": 0.0, "saliency_loss": 0.0}
        self.steps = self.used = 0
        order = torch.randperm(len(self.views), generator=self.generator).tolist()
        batches = [order[start : start + self.batch_size] for start in range(0, len(order), self.batch_size)]
        loader = torch.utils.data.DataLoader(self.views, batch_sampler=batches, collate_fn=list,
                                             num_workers=self.workers)
        for items in loader:
            items = [item for item in items if item[4]]
            if items:
                yield items

    def step(self, items: list, micro_batch: int | None) -> dict[str, float]:
        device, dim, scale = self.device, self.embedding_dim, self.label_scale
        image_ids = torch.tensor([item[5] for item in items], dtype=torch.int64, device=device)
        with autocast(device):
            queries = embeddings_and_saliency(self.model, [item[0].to(device) for item in items], dim, scale)
            with torch.no_grad():
                momentum_update(self.key_model, self.model, self.key_momentum)
                keys = embeddings_and_saliency(self.key_model, [item[2].to(device) for item in items], dim, scale)
        # masks at each view's embedding resolution: foreground where over half of the cell is
        query_masks = [grid_masks(item[1][None].to(device), tuple(embedding.shape[-2:]))[0]
                       for item, (embedding, _) in zip(items, queries)]
        key_masks = [grid_masks(item[3][None].to(device), tuple(embedding.shape[-2:]))[0]
                     for item, (embedding, _) in zip(items, keys)]
        prototypes = mask_prototypes([embedding for embedding, _ in keys], key_masks)
        contrastive = prototype_contrastive_loss([embedding for embedding, _ in queries],
                                                 [mask > 0.5 for mask in query_masks], prototypes,
                                                 self.queue.vectors.to(device), self.temperature, image_ids,
                                                 self.queue.owners.to(device))
        saliency = balanced_bce(torch.cat([logits.flatten() for _, logits in queries]),
                                torch.cat([mask.flatten() for mask in query_masks]))
        loss = contrastive + self.saliency_loss_weight * saliency
        loss.backward()
        self.queue.enqueue(prototypes, image_ids)
        terms = {"loss": float(loss.detach()), "contrastive_loss": float(contrastive.detach()),
                 "saliency_loss": float(saliency.detach())}
        for key, value in terms.items():
            self.sums[key] += value
        self.steps += 1
        self.used += len(items)
        return terms

    def end_epoch(self, epoch: int) -> dict[str, Any]:
        if self.used == 0:
            print(f"contrast: epoch {epoch + 1}: no image had a usable saliency mask in both views "
                  f"(foreground fraction within ({self.area[0]}, {self.area[1]}))", file=sys.stderr)
        return {"epoch": epoch + 1, **{key: value / max(self.steps, 1) for key, value in self.sums.items()},
                "images_used": self.used}

    def state_dict(self) -> dict[str, Any]:
        return {"key_state_dict": self.key_model.state_dict(), "queue": self.queue.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.key_model.load_state_dict(state["key_state_dict"])
        self.queue.load_state_dict(state["queue"])


def build_embedder(config: Mapping[str, Any]) -> ImageSegmenter:
    """The (untrained) query model a config describes: the store's backbone and a head with embedding_dim + 1
    outputs."""
    backbone, spec = load_store_backbone(config["backbone"], config["weights"], config["weights_digest"])
    head = build_head(config["head"], config["token_dim"], config["embedding_dim"] + 1)
    return ImageSegmenter(backbone, int(config["finetune_blocks"]), head, spec.patch_size, config["backbone_lr"])


def maskcontrast(inputs: ContrastInputs, *, epochs, batch_size, lr, sgd_momentum, weight_decay, temperature,
                 key_momentum, queue_size, embedding_dim, saliency_loss_weight, head, finetune_blocks, backbone_lr,
                 crop_scale, hflip, color_jitter, grayscale, blur, min_area, max_area, label_scale, seed, device,
                 workers) -> dict:
    """MaskContrast: pixel embeddings contrasted over saliency masks, with a momentum encoder and a queue (see the
    module docstring); writes the model, and the embeddings of every image of the store as a feature store."""
    store = FeatureStore(inputs.store_path)
    if "tokens" not in store.attrs["facets"]:
        raise ValueError(f"contrast: the feature store {str(inputs.store_path)!r} has no 'tokens' facet (it has "
                         f"{store.attrs['facets']}); add tokens to its features variant's facets")
    names = [name for name in store.names if (inputs.saliency_dir / f"{name}.png").is_file()]
    if not names:
        raise ValueError(f"contrast: no saliency map in {str(inputs.saliency_dir)!r} for the store's images")
    warn_small_dataset(len(names), epochs, batch_size, queue_size, key_momentum)
    device_ = resolve_device(device)
    tokens = TokenLabelDataset(inputs.store_path, "tokens", {n: inputs.saliency_dir / f"{n}.png" for n in names},
                               None, 1)
    statistics = scan(tokens, inputs.progress)
    config = {**inputs.config, "method": "maskcontrast", "head": head, "embedding_dim": embedding_dim,
              "finetune_blocks": finetune_blocks, "backbone_lr": backbone_lr, "token_dim": statistics.embed_dim,
              **{key: store.attrs[key] for key in ("backbone", "weights", "weights_digest")}}
    torch.manual_seed(seed)  # the head's initial weights
    model = build_embedder(config)
    model.set_statistics(statistics.mean, statistics.std)
    model.to(device_).train()
    key_model = copy.deepcopy(model)  # the same parameters, never given gradients (no_grad below)
    spec_mean, spec_std = _input_normalisation(config["backbone"])
    augment = {"crop_scale": crop_scale, "hflip": hflip, "color_jitter": color_jitter, "grayscale": grayscale,
               "blur": blur, "jitter": MASKCONTRAST_JITTER}
    views = ContrastViews(inputs.store_path, names, inputs.image_paths, inputs.saliency_dir, spec_mean, spec_std,
                          augment, (min_area, max_area), seed)
    optimizer = torch.optim.SGD(model.parameter_groups(lr), lr=lr, momentum=sgd_momentum, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: (1 - epoch / epochs) ** 0.9)
    generator = torch.Generator().manual_seed(seed)
    queue = PrototypeQueue(queue_size, embedding_dim, generator)
    task = MaskContrastTraining(model, key_model, views, queue, generator, batch_size=batch_size, workers=workers,
                                device=device_, embedding_dim=embedding_dim, label_scale=label_scale,
                                key_momentum=key_momentum, temperature=temperature,
                                saliency_loss_weight=saliency_loss_weight, area=(min_area, max_area))
    loop = dict(epochs=epochs, batch_size=batch_size, lr=lr, sgd_momentum=sgd_momentum, weight_decay=weight_decay,
                temperature=temperature, key_momentum=key_momentum, queue_size=queue_size,
                saliency_loss_weight=saliency_loss_weight, augment=augment, area=[min_area, max_area],
                label_scale=label_scale, seed=seed)
    rows = run_training(task, model, optimizer, inputs.out_dir, epochs=epochs, config=config,
                        settings={**config, **loop, "names": names}, inputs_digest=statistics.digest,
                        scheduler=scheduler, scheduler_interval="epoch", generator=generator,
                        progress=inputs.progress, desc="train maskcontrast")
    write_embeddings(model.eval(), config, inputs.store_path, inputs.image_paths, inputs.embeddings_path, device_,
                     inputs.progress)
    return rows[-1] if rows else {}


def warn_small_dataset(num_images: int, epochs: int, batch_size: int, queue_size: int, key_momentum: float,
                       ) -> list[str]:
    """The warnings (also printed to the log) for settings made for 10,000 images and used on a few dozen: a key
    encoder that keeps most of its random start over the whole run (m^steps > 0.8), and a queue at least as long as
    the images outside a batch (most negatives are then stale prototypes of the same images). Measured on the demo
    (docs/benchmarks.md): with m = 0.999 and K = 256 on 24 images the prototypes collapse and the loss stays at
    chance."""
    steps = epochs * -(-num_images // batch_size)
    warnings = []
    if key_momentum**steps > 0.8:
        warnings.append(f"key_momentum {key_momentum} over {steps} steps leaves the key encoder at "
                        f"{100 * key_momentum**steps:.0f}% of its random start; on a small dataset use e.g. 0.99 "
                        "(or more epochs)")
    if queue_size > max(num_images - batch_size, 0):
        warnings.append(f"queue_size {queue_size} is not below the {num_images} images less a batch of {batch_size}: "
                        "most negatives are earlier prototypes of the same images; on a small dataset use a queue "
                        "shorter than that")
    for warning in warnings:
        print(f"contrast: warning: {warning}", file=sys.stderr)
    return warnings


def _input_normalisation(backbone: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    spec = get_backbone_spec(backbone)
    return tuple(spec.mean), tuple(spec.std)


@torch.no_grad()
def embed_image(model: ImageSegmenter, config: Mapping[str, Any], store: FeatureStore, name: str,
                image_path: str | Path | None, device: torch.device) -> np.ndarray:
    """(h, w, embedding_dim) float32 unit embeddings of one image on its token grid: the head on the stored tokens
    (frozen ViT), or the whole model on the image in the store's geometry (fine-tuned blocks)."""
    dim = int(config["embedding_dim"])
    if int(config["finetune_blocks"]) == 0:
        out = model.head(token_tensor(store, name, "tokens").to(device))
    else:
        mean, std = _input_normalisation(config["backbone"])
        out = model(preprocess_image(read_image(image_path), store.geometry(name), mean, std)[None].to(device))
    return F.normalize(out[0, :dim].float(), dim=0).permute(1, 2, 0).cpu().numpy()


def write_embeddings(model: ImageSegmenter, config: Mapping[str, Any], store_path: str | Path,
                     image_paths: Mapping[str, str | Path], out_path: str | Path, device: torch.device,
                     progress: bool = True) -> Path:
    """The learned embeddings of every image of the input store → a feature store with facet ``embeddings``."""
    store = FeatureStore(store_path)
    attributes = {"facets": [EMBEDDINGS_FACET], "embed_dim": int(config["embedding_dim"]),
                  "learned": {"method": config["method"], "from_store": str(store_path),
                              "finetune_blocks": int(config["finetune_blocks"])}}

    def arrays_of(name: str) -> dict[str, np.ndarray]:
        return {EMBEDDINGS_FACET: embed_image(model, config, store, name, image_paths.get(name), device)}

    return write_derived_store(out_path, store, attributes, arrays_of, progress=progress,
                               desc=f"embed {config['method']}")


def run_contrast(inputs: ContrastInputs, settings: Mapping[str, Any]) -> dict:
    """The contrast stage for one variant: its ``method``'s function with the schema-completed settings."""
    method = REGISTRIES["contrast"].get(settings["method"])
    return method(inputs, settings=settings)
