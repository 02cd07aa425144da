"""The instances stage: a class-agnostic instance segmenter trained on the proposals, then on its own confident
detections, round after round → ``instances/{variant}/round-{r}/``.

Each round is a folder and a job of its own:

* ``targets.json`` (round r ≥ 2): what the round trains on (:func:`merge_round_targets`): round r-1's detections
  scoring at least ``self_training_score`` (0.9 by default), and with ``keep_proposals`` every proposal whose mask
  overlaps none of them by ``self_training_iou`` or more (CutLER's ``get_self_training_ann.py``: threshold 0.7,
  IoU 0.5; measured worse on multi-k proposals, docs/benchmarks.md "Instances stage"). Round 1 trains on the proposals
  themselves (``min_target_score`` and up).
* ``model.pt`` (+ ``last.pt`` while training, resumed only for the same settings and inputs; ``log.csv``);
* ``instances.json``: the round's detections on every image, COCO results (RLE at the original resolution,
  ``score``, ``bbox``, ``category_id`` 1);
* ``metrics.json`` / ``report.md``: class-agnostic AP / AR and recall by instance count, as the proposals report
  scores them (:func:`unseg.stages.proposals.evaluate_proposals`), and ``instances/{variant}/report.md`` tabulates
  proposals → round 1 → round 2 → ... (:func:`write_rounds_report`).

Methods are registered with ``@register("instances", name, schema=..., build_model=...)``
(:mod:`unseg.config.registry`):
the function takes :class:`InstanceTrainingInputs` and its settings as keywords, trains, and writes ``model.pt``
(whose config names the ``method``), ``last.pt`` and ``log.csv``; ``build_model(config)`` rebuilds an
:class:`~unseg.stages.instance_model.InstanceSegmenter`-like model (``model(inputs)`` → per image ``boxes`` in the
model frame,
``scores``, ``masks`` (N, 1, M, M)) for :func:`detect_instances`.

The built-in ``mask_rcnn`` (:mod:`unseg.stages.instance_model`) trains on the stored tokens (the frozen ViT's exact
output, no
image decode) unless an augmentation or ``finetune_blocks`` needs the ViT on images: horizontal flips and
copy-paste (:func:`copy_paste`: pseudo-masks of another image pasted on this one, Engstler et al. 2023, A.2.1;
Ghiasi et al. CVPR 2021) change the pixels, so their tokens come from running the ViT on the augmented image.
Detection of a model whose ViT stayed frozen reads the stored tokens again.
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pycocotools import mask as mask_utils
from tqdm.auto import tqdm

from unseg.config.registry import REGISTRIES, register
from unseg.core.checkpoints import (
    data_digest,
    load_resume_state,
    read_model_checkpoint,
    resume_key,
    save_checkpoint,
    save_resume_state,
)
from unseg.core.devices import resolve_device
from unseg.core.geometry import ResizeGeometry, boxes_to_original, image_to_grid, mask_in_frame, resize_and_crop
from unseg.core.io import atomic_output, decode_rle, encode_rle, read_image, read_json, write_json
from unseg.features.backbones import get_backbone_spec
from unseg.features.extract import normalize_batch
from unseg.features.store import FeatureStore
from unseg.ops.spectral import coverage_coherence, unit_rows
from unseg.stages.instance_model import (
    FRAME_STRIDE,
    MASK_LEVELS,
    MASK_LOSSES,
    PYRAMID_SCALES,
    InstanceSegmenter,
    TokenStandardiser,
    build_mask_rcnn,
    rgb_to_lab,
)
from unseg.training.data import StoreImages, item_seed, token_tensor
from unseg.training.finetune import ImageSegmenter, load_store_backbone
from unseg.training.rounds import round_settings as train_settings_of_round
from unseg.training.statistics import scan_tokens

# ----------------------------------------------------------------------------------------------------------------
# Targets: proposals (COCO RLE at the original resolution) as masks and boxes in a frame.


def boxes_of_masks(masks: torch.Tensor) -> torch.Tensor:
    """(N, H, W) masks → (N, 4) float32 x1, y1, x2, y2 boxes enclosing their pixels (x2, y2 one past the last
    pixel, as COCO's [x, y, w, h] gives x2 = x + w); an empty mask gives (0, 0, 0, 0)."""
    boxes = torch.zeros((len(masks), 4), dtype=torch.float32)
    for index, mask in enumerate(masks):
        rows, cols = torch.where(mask > 0)
        if len(rows):
            boxes[index] = torch.tensor([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1],
                                        dtype=torch.float32)
    return boxes


def frame_targets(masks: torch.Tensor) -> dict[str, torch.Tensor]:
    """The targets of one image from its (N, H, W) masks in the model frame: non-empty ``masks`` as uint8, their
    ``boxes`` (:func:`boxes_of_masks`) and ``labels`` (ones: one class-agnostic "object" class)."""
    masks = masks.bool()
    masks = masks[masks.flatten(1).any(1)].to(torch.uint8)
    return {"boxes": boxes_of_masks(masks), "labels": torch.ones(len(masks), dtype=torch.int64), "masks": masks}


def masks_in_frame(detections: Sequence[Mapping[str, Any]], geometry: ResizeGeometry, patch_size: int,
                   pixels_per_token: int) -> torch.Tensor:
    """The RLE masks of ``detections`` (one image's, at its original size) in a frame of ``pixels_per_token``
    pixels per token (:func:`unseg.core.geometry.mask_in_frame`): (N, h·s, w·s) bool."""
    height, width = geometry.grid_size[0] * pixels_per_token, geometry.grid_size[1] * pixels_per_token
    masks = [mask_in_frame(decode_rle(det["segmentation"]), geometry, patch_size, pixels_per_token)
             for det in detections]
    return torch.from_numpy(np.stack(masks)) if masks else torch.zeros((0, height, width), dtype=torch.bool)


# ----------------------------------------------------------------------------------------------------------------
# Augmentations on the ViT's input (image path only).


def hflip_sample(image: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mirror a (3, H, W) image and its (N, H, W) masks left to right."""
    return image.flip(-1), masks.flip(-1)


def copy_paste(image: torch.Tensor, masks: torch.Tensor, source_image: torch.Tensor, source_masks: torch.Tensor,
               rng: np.random.Generator, scale_range: Sequence[float] = (0.5, 1.0), min_visible: float = 0.3,
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Paste objects of another image onto this one (simple copy-paste, Ghiasi et al. CVPR 2021).

    A random non-empty subset of ``source_masks`` (each kept with probability 0.5) is rescaled with its image by
    s ~ U(``scale_range``) relative to this image's size (aspect ratio of the target), placed at a random offset
    inside it, and its pixels overwrite this image's. The image's own masks lose the pixels covered by the pasted
    objects; one left with less than ``min_visible`` of its area is dropped (an occluded pseudo-object is no longer
    a target).

    Args:
        image: (3, H, W) uint8; masks: (N, H, W) bool.
        source_image: (3, Hs, Ws) uint8; source_masks: (M, Hs, Ws) bool.

    Returns:
        the pasted image (3, H, W) uint8 and its masks: the surviving own masks, then the pasted ones, (N', H, W)
        bool.
    """
    if len(source_masks) == 0:
        return image, masks
    chosen = rng.random(len(source_masks)) < 0.5
    if not chosen.any():
        chosen[rng.integers(len(source_masks))] = True
    height, width = image.shape[-2:]
    scale = rng.uniform(*scale_range)
    out_h, out_w = max(1, round(height * scale)), max(1, round(width * scale))
    pasted_image = F.interpolate(source_image[None].float(), size=(out_h, out_w), mode="bilinear",
                                 align_corners=False, antialias=True)[0].round().clamp(0, 255).to(torch.uint8)
    pasted = F.interpolate(source_masks[torch.from_numpy(chosen)][None].float(), size=(out_h, out_w),
                           mode="nearest-exact")[0] > 0.5
    top, left = int(rng.integers(0, height - out_h + 1)), int(rng.integers(0, width - out_w + 1))
    placed = torch.zeros((len(pasted), height, width), dtype=torch.bool)
    placed[:, top : top + out_h, left : left + out_w] = pasted
    covered = placed.any(0)
    result = image.clone()
    window = result[:, top : top + out_h, left : left + out_w]
    window[:, covered[top : top + out_h, left : left + out_w]] = pasted_image[:, covered[top : top + out_h,
                                                                                       left : left + out_w]]
    remaining = masks & ~covered
    visible = remaining.flatten(1).sum(1).float() >= min_visible * masks.flatten(1).sum(1).clamp(min=1).float()
    placed = placed[placed.flatten(1).any(1)]
    return result, torch.cat([remaining[visible], placed])


# ----------------------------------------------------------------------------------------------------------------
# What a trainer reads.


class InstanceDataset(StoreImages):
    """(model input, targets) of the named images: the stored (D, h, w) token grid, or (``image_paths`` given) the
    (3, h·p, w·p) normalised image, augmented when ``augment`` is; targets in the model frame (:func:`frame_targets`,
    ``masks`` (N, 16h, 16w)).

    An item is asked for by index, or by (index, draw) where ``draw`` seeds that item's augmentation (the training
    loop passes (seed, step, position), so a resumed run draws as an uninterrupted one).

    Args:
        detections: image name → its target detections (COCO results at the original size), in item order.
        augment: ``hflip`` and ``copy_paste`` probabilities, ``copy_paste_scale``; None: the plain image.
        mean, std: the backbone's input normalisation (image path).
        reads_images: the model input is the image (default: whenever ``image_paths`` are given); False with
            ``image_paths`` reads the stored tokens and the images only for ``colours``.
        colours: the targets also carry ``colours``, the (augmented) image's (3, 16h, 16w) CIELAB in the model frame
            (:func:`frame_colours`; the pairwise term of ``mask_loss`` ``projection`` and ``mask_pairwise``).
    """

    def __init__(self, store_path: str | Path, facet: str, detections: Mapping[str, Sequence[dict]],
                 image_paths: Mapping[str, str | Path] | None = None, augment: Mapping[str, Any] | None = None,
                 mean: Sequence[float] = (0.0, 0.0, 0.0), std: Sequence[float] = (1.0, 1.0, 1.0),
                 reads_images: bool | None = None, colours: bool = False):
        super().__init__(store_path, list(detections))
        self.facet = facet
        self.detections = {name: list(detections[name]) for name in self.names}
        self.image_paths = {name: Path(image_paths[name]) for name in self.names} if image_paths is not None else None
        self.augment, self.mean, self.std = augment, tuple(mean), tuple(std)
        self.reads_images = self.image_paths is not None if reads_images is None else reads_images
        if (self.reads_images or colours) and self.image_paths is None:
            raise ValueError("InstanceDataset: reading images or their colours needs image_paths")
        self.colours = colours

    def tokens(self, index: int) -> torch.Tensor:
        return token_tensor(self.store, self.names[index], self.facet)[0]

    def image_and_masks(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(3, h·p, w·p) uint8 image and its (N, h·p, w·p) bool masks, at the ViT's input."""
        name = self.names[index]
        geometry, patch = self.store.geometry(name), self.store.patch_size
        image = resize_and_crop(read_image(self.image_paths[name]), geometry)
        return image, masks_in_frame(self.detections[name], geometry, patch, patch)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        index, draw = key if isinstance(key, tuple) else (key, None)
        name = self.names[index]
        geometry, patch = self.store.geometry(name), self.store.patch_size
        if not self.reads_images:
            targets = frame_targets(masks_in_frame(self.detections[name], geometry, patch, FRAME_STRIDE))
            if self.colours:
                image = resize_and_crop(read_image(self.image_paths[name]), geometry)
                targets["colours"] = frame_colours(image, geometry.grid_size)
            return self.tokens(index), targets
        image, masks = self.image_and_masks(index)
        if self.augment is not None and draw is not None:
            rng = np.random.default_rng(draw)
            if rng.random() < self.augment["copy_paste"] and len(self) > 1:
                other = int(rng.integers(len(self) - 1))
                source_image, source_masks = self.image_and_masks(other + (other >= index))
                image, masks = copy_paste(image, masks, source_image, source_masks, rng,
                                          self.augment["copy_paste_scale"])
            if rng.random() < self.augment["hflip"]:
                image, masks = hflip_sample(image, masks)
        grid_h, grid_w = geometry.grid_size
        frame = F.interpolate(masks[None].float(), size=(grid_h * FRAME_STRIDE, grid_w * FRAME_STRIDE),
                              mode="nearest-exact")[0] > 0.5 if len(masks) else \
            torch.zeros((0, grid_h * FRAME_STRIDE, grid_w * FRAME_STRIDE), dtype=torch.bool)
        targets = frame_targets(frame)
        if self.colours:
            targets["colours"] = frame_colours(image, geometry.grid_size)
        return normalize_batch(image[None], self.mean, self.std)[0], targets


def frame_colours(image: torch.Tensor, grid_size: tuple[int, int]) -> torch.Tensor:
    """(3, h·p, w·p) uint8 ViT input → (3, 16h, 16w) float32 CIELAB in the model frame (bilinear)."""
    frame = F.interpolate(image[None].float(), size=(grid_size[0] * FRAME_STRIDE, grid_size[1] * FRAME_STRIDE),
                          mode="bilinear", align_corners=False)[0]
    return rgb_to_lab(frame.clamp(0, 255))


@dataclass(frozen=True)
class InstanceTrainingInputs:
    """What an instances trainer reads and where it writes.

    Attributes:
        store_path: the feature store of the variant's ``features``; ``facet`` the facet trained on.
        detections: image name → the round's target detections (COCO results at the original size); every image
            of the store that the run trains on, with an empty list for an image without targets.
        out_dir: the round's folder (``model.pt``, ``last.pt``, ``log.csv``).
        config: the variant's settings, stored in the checkpoint (with ``method``).
        image_paths: image name → image file (read by trainers that run the ViT on images).
        initial_model: a checkpoint of the same method to start from (the previous round's).
    """

    store_path: Path
    facet: str
    detections: Mapping[str, Sequence[dict]]
    out_dir: Path
    config: Mapping[str, Any]
    image_paths: Mapping[str, Path] | None = None
    initial_model: Path | None = None
    progress: bool = True


# ----------------------------------------------------------------------------------------------------------------
# The training loop.

LOSS_NAMES = ("loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg", "loss_mask")
LOG_FIELDS = ("step", "loss", *LOSS_NAMES, "dropped", "lr")


def step_batches(num_items: int, batch_size: int, steps: int, seed: int) -> list[list[int]]:
    """The item indices of every step: consecutive epochs, each a fresh permutation (seeded by ``seed``), cut into
    batches of ``batch_size`` (the last batch of an epoch may be shorter)."""
    generator = torch.Generator().manual_seed(seed)
    batches: list[list[int]] = []
    while len(batches) < steps:
        order = torch.randperm(num_items, generator=generator).tolist()
        batches += [order[start : start + batch_size] for start in range(0, num_items, batch_size)]
    return batches[:steps]


def learning_rate_factor(step: int, steps: int, warmup_steps: int) -> float:
    """ViTDet's schedule (Li et al. 2022, section 4.1; detectron2's multi-step): linear warm-up from 0.001 over
    ``warmup_steps``, then 1, × 0.1 after 8/9 of the steps and × 0.01 after 26/27."""
    warmup = min(1.0, 0.001 + (1 - 0.001) * step / warmup_steps) if warmup_steps > 0 else 1.0
    decay = 0.01 if step >= steps * 26 / 27 else 0.1 if step >= steps * 8 / 9 else 1.0
    return warmup * decay


def detection_losses(model: torch.nn.Module, items: Sequence[tuple[torch.Tensor, dict]], micro_batch: int,
                     device: torch.device, autocast_dtype: torch.dtype | None) -> dict[str, float]:
    """Back-propagate the batch's summed losses in sub-batches of ``micro_batch`` items (each sub-batch's mean
    losses weighted by its share of the batch); returns the batch's losses."""
    totals = dict.fromkeys(LOSS_NAMES, 0.0)
    for start in range(0, len(items), micro_batch):
        chunk = items[start : start + micro_batch]
        inputs = [item.to(device, non_blocking=True) for item, _ in chunk]
        targets = [{key: value.to(device, non_blocking=True) for key, value in target.items()} for _, target in chunk]
        colours = [target["colours"] for target in targets] if getattr(model, "reads_colours", False) else None
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            losses = model(inputs, targets, colours)
        weight = len(chunk) / len(items)
        (sum(losses.values()) * weight).backward()
        for name in LOSS_NAMES:
            totals[name] += float(losses[name].detach()) * weight
    return totals


def fit_detector(model: InstanceSegmenter, dataset: InstanceDataset, out_dir: str | Path, *, config: Mapping[str, Any],
                 digest: str, steps: int, batch_size: int, lr: float, weight_decay: float, warmup_steps: int,
                 seed: int, device: str | None = None, workers: int = 0, checkpoint_every: int = 500,
                 progress: bool = True) -> dict:
    """Train ``model`` for ``steps`` optimiser steps of ``batch_size`` images with AdamW and ViTDet's schedule
    (:func:`learning_rate_factor`); write ``last.pt`` every ``checkpoint_every`` steps and at the end, then
    ``model.pt`` (the last step's weights, the config) and ``log.csv`` (mean losses per logging window, the
    fraction of sampled regions DropLoss dropped, the learning rate).

    The resume key holds ``config``, the loop settings and ``digest`` (the training data as loaded): ``last.pt`` of
    other settings or inputs is never continued. Runs on CUDA when present (bfloat16 autocast); a batch that runs
    out of GPU memory is redone with its gradient accumulated over half-size sub-batches, kept for the rest of the
    run.

    Returns:
        {"steps", "final_loss": the mean loss of the last logging window}.
    """
    device_ = resolve_device(device)
    autocast_dtype = torch.bfloat16 if device_.type == "cuda" else None
    model.to(device_).train()
    optimizer = torch.optim.AdamW(model.parameter_groups(lr), lr=lr, weight_decay=weight_decay)
    for group in optimizer.param_groups:
        group["initial_lr"] = group["lr"]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    key = resume_key({**config, "steps": steps, "batch_size": batch_size, "lr": lr, "weight_decay": weight_decay,
                      "warmup_steps": warmup_steps, "seed": seed}, digest)
    last_path = out_dir / "last.pt"
    start, rows = 0, []
    torch.manual_seed(seed)  # the RPN's and RoI heads' sampling draws
    state = load_resume_state(last_path, key)
    if state is not None:
        model.load_state_dict(state["state_dict"])
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng_state"])
        start, rows = state["step"], state["log"]
    batches = step_batches(len(dataset), batch_size, steps, seed)
    log_every = max(1, steps // 100)
    window: list[dict] = []
    micro_batch = batch_size

    def save(step: int) -> None:
        save_resume_state(last_path, key, {"state_dict": model.state_dict(), "optimizer": optimizer.state_dict(),
                                           "rng_state": torch.get_rng_state(), "step": step, "log": rows,
                                           "config": dict(config)})

    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=[[(index, item_seed(seed, step, position)) for position, index in enumerate(batch)]
                                for step, batch in enumerate(batches)][start:],
        collate_fn=list, num_workers=workers, pin_memory=device_.type == "cuda",
        generator=torch.Generator().manual_seed(seed))  # its base seed must not draw from the restored global RNG
    bar = tqdm(total=steps, initial=start, desc=f"train {config.get('method', '')}", unit="step",
               disable=not progress)
    for step, items in enumerate(loader, start=start):
        factor = learning_rate_factor(step, steps, warmup_steps)
        for group in optimizer.param_groups:
            group["lr"] = group["initial_lr"] * factor
        while True:
            optimizer.zero_grad()
            try:
                losses = detection_losses(model, items, micro_batch, device_, autocast_dtype)
                break
            except torch.cuda.OutOfMemoryError:
                if min(micro_batch, len(items)) <= 1:
                    raise
                micro_batch = min(micro_batch, len(items)) // 2
                torch.cuda.empty_cache()
                print(f"out of GPU memory on a training batch of {len(items)}: accumulating its gradient over "
                      f"sub-batches of {micro_batch}", file=sys.stderr)
        optimizer.step()
        window.append({**losses, "dropped": getattr(model.roi_heads, "last_dropped", 0.0)})
        bar.update(1)
        if (step + 1) % log_every == 0 or step + 1 == steps:
            row = {"step": step + 1, **{name: float(np.mean([w[name] for w in window]))
                                        for name in (*LOSS_NAMES, "dropped")}, "lr": lr * factor}
            row["loss"] = sum(row[name] for name in LOSS_NAMES)
            rows.append(row)
            bar.set_postfix(loss=f"{row['loss']:.3f}")
            window = []
        if (step + 1) % checkpoint_every == 0 or step + 1 == steps:
            save(step + 1)
    bar.close()
    with atomic_output(out_dir / "log.csv") as tmp:
        with open(tmp, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=LOG_FIELDS)
            writer.writeheader()
            writer.writerows(rows)
    state_dict = {name: value.detach().cpu() for name, value in model.state_dict().items()}
    with atomic_output(out_dir / "model.pt") as tmp:
        save_checkpoint({"state_dict": state_dict, "config": dict(config), "log": rows}, tmp)
    return {"steps": steps, "final_loss": rows[-1]["loss"] if rows else None}


# ----------------------------------------------------------------------------------------------------------------
# The built-in method: Mask R-CNN on the ViT (unseg.stages.instance_model).

MODEL_KEYS = ("channels", "scales", "rois_per_image", "detections_per_image", "min_score", "drop_iou")
LOSS_KEYS = ("mask_loss", "pairwise_weight", "pairwise_threshold")  # training only: absent from older checkpoints


def reads_images(settings: Mapping[str, Any]) -> bool:
    """Whether training runs the ViT on images (an augmentation changes the pixels, or blocks are fine-tuned)."""
    return bool(settings.get("hflip") or settings.get("copy_paste") or settings.get("finetune_blocks"))


def build_instance_model(config: Mapping[str, Any], images: bool | None = None) -> InstanceSegmenter:
    """The untrained :class:`~unseg.stages.instance_model.InstanceSegmenter` a ``mask_rcnn`` checkpoint's config
    describes;
    with its ViT (``images``, default: as trained) when it reads images."""
    images = config["reads_images"] if images is None else images
    backbone = None
    if images:
        vit, spec = load_store_backbone(config["backbone"], config["weights"], config["weights_digest"])
        backbone = ImageSegmenter(vit, int(config["finetune_blocks"]), TokenStandardiser(config["embed_dim"]),
                                  spec.patch_size, config["backbone_lr"])
    return build_mask_rcnn(config["embed_dim"], backbone=backbone, **{key: config[key] for key in MODEL_KEYS},
                           detail_channels=config.get("detail_channels", 0),  # these two absent from older
                           mask_level=config.get("mask_level", "by_size"),  # checkpoints
                           **{key: config[key] for key in LOSS_KEYS if key in config})


@register("instances", "mask_rcnn", build_model=build_instance_model, schema={
    "steps": {"type": "integer", "minimum": 1, "default": 60000,
              "description": "optimiser steps (Engstler et al. 2023, A.2.1: 60k steps at batch 4)"},
    "batch_size": {"type": "integer", "minimum": 1, "default": 4, "description": "images per step (Engstler: 4)"},
    "lr": {"type": "number", "exclusiveMinimum": 0, "default": 1e-4,
           "description": "AdamW peak learning rate (ViTDet, Li et al. 2022, section 4.1)"},
    "weight_decay": {"type": "number", "minimum": 0, "default": 0.1, "description": "AdamW weight decay (ViTDet)"},
    "warmup_steps": {"type": "integer", "minimum": 0, "default": 250,
                     "description": "linear warm-up (ViTDet: 250); then x0.1 after 8/9 and 26/27 of the steps"},
    "channels": {"type": "integer", "minimum": 4, "default": 256,
                 "description": "width of the feature pyramid and of the RPN, box (x4) and mask heads (256 as "
                                "ViTDet and torchvision's Mask R-CNN)"},
    "scales": {"type": "array", "items": {"enum": [4, 2, 1, 0.5, 0.25, 0.125]}, "minItems": 1,
               "default": list(PYRAMID_SCALES),
               "description": "the simple feature pyramid's scales of the token grid (ViTDet: 4, 2, 1, 0.5), "
                              "decreasing"},
    "detail_channels": {"type": "integer", "minimum": 0, "default": 0,
                        "description": "> 0: the width of a convolutional stem on the image's colours whose output "
                                       "is added to every pyramid level (ImageDetail), so the mask "
                                       "head sees edges finer than a token; reads the images. 0: tokens only, as "
                                       "ViTDet"},
    "mask_level": {"enum": list(MASK_LEVELS), "default": "by_size",
                   "description": "which pyramid level the mask head reads a region from: by_size, the level of "
                                  "the box's size (FPN, Lin et al. 2017, Eq. 1; a 224-px box at stride 16), as "
                                  "torchvision's Mask R-CNN; finest, the finest level for every box (with "
                                  "detail_channels, the only level finer than a token for a large object)"},
    "rois_per_image": {"type": "integer", "minimum": 1, "default": 512,
                       "description": "regions sampled per image for the box and mask heads (25 % positives)"},
    "detections_per_image": {"type": "integer", "minimum": 1, "default": 100},
    "min_score": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.05,
                  "description": "detections scoring lower are not kept (torchvision's box_score_thresh)"},
    "mask_threshold": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1, "default": 0.5,
                       "description": "a detection's mask: its pasted probability above this"},
    "drop_iou": {"type": ["number", "null"], "minimum": 0, "maximum": 1, "default": 0.01,
                 "description": "DropLoss (CutLER, Eq. 2): a sampled region whose box IoU with every target is at "
                                "most this gives no classification loss; null: the plain loss"},
    "mask_loss": {"enum": list(MASK_LOSSES), "default": "mask",
                  "description": "mask: Mask R-CNN's per-pixel cross-entropy against the pseudo-mask; projection: "
                                 "FreeSOLO's weak supervision (Wang et al. 2022, section 3.3), as Engstler et al. "
                                 "train their SOLOv2 (A.2.1): the Dice of the mask's projections on both axes "
                                 "against the pseudo-mask's, plus BoxInst's pairwise colour term; mask_pairwise: "
                                 "the per-pixel cross-entropy plus that pairwise term. Both read the images' "
                                 "colours. projection learns no masks on the demo or the horses (the RoI head lights "
                                 "its last row and column: docs/benchmarks.md, 'Instances stage')"},
    "pairwise_weight": {"type": "number", "minimum": 0, "default": 1.0,
                        "description": "mask_loss projection, mask_pairwise: weight of the pairwise colour term "
                                       "(BoxInst: 1)"},
    "pairwise_threshold": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.3,
                           "description": "mask_loss projection, mask_pairwise: neighbouring cells whose colour "
                                          "similarity exp(-|dLab| / 2) is at least this are pulled to one label "
                                          "(BoxInst, section 4.1: tau = 0.3)"},
    "min_target_score": {"type": "number", "minimum": 0, "default": 0.0,
                         "description": "round 1: proposals scoring lower are not targets"},
    "copy_paste": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.0,
                   "description": "probability of pasting pseudo-objects of another image (Engstler et al. A.2.1); "
                                  "> 0 runs the ViT on every training image"},
    "copy_paste_scale": {"type": "array", "items": {"type": "number", "exclusiveMinimum": 0}, "minItems": 2,
                         "maxItems": 2, "default": [0.5, 1.0],
                         "description": "the pasted image's size relative to the target image, uniform range"},
    "hflip": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.0,
              "description": "probability of a horizontal flip; > 0 runs the ViT on every training image"},
    "finetune_blocks": {"type": "integer", "minimum": 0, "default": 0,
                        "description": "train the ViT's last N blocks (and final norm) too; > 0 reads images"},
    "backbone_lr": {"type": "number", "exclusiveMinimum": 0, "default": 1e-5,
                    "description": "peak learning rate of the fine-tuned blocks"},
    "seed": {"type": "integer", "default": 0},
    "device": {"type": ["string", "null"], "default": None,
               "description": "torch device; null: cuda when available (bfloat16 autocast), else cpu"},
    "workers": {"type": "integer", "minimum": 0, "default": 0, "description": "DataLoader processes"},
    "checkpoint_every": {"type": "integer", "minimum": 1, "default": 500,
                         "description": "steps between resumable checkpoints (last.pt)"},
})
def mask_rcnn(inputs: InstanceTrainingInputs, *, steps, batch_size, lr, weight_decay, warmup_steps, channels, scales,
              detail_channels, mask_level, rois_per_image, detections_per_image, min_score, mask_threshold,
              drop_iou, mask_loss, pairwise_weight, pairwise_threshold, min_target_score, copy_paste, copy_paste_scale,
              hflip, finetune_blocks, backbone_lr, seed, device, workers, checkpoint_every) -> dict:
    """Class-agnostic Mask R-CNN (torchvision) over a simple feature pyramid of the ViT's tokens (ViTDet), with
    DropLoss (CutLER), trained on the proposals (:mod:`unseg.stages.instance_model`)."""
    detections = {name: [det for det in dets if det.get("score", 1.0) >= min_target_score]
                  for name, dets in inputs.detections.items()}
    store = FeatureStore(inputs.store_path)
    config = {**inputs.config, "embed_dim": int(store.attrs["embed_dim"]), "facet": inputs.facet,
              "channels": channels, "scales": [float(scale) for scale in scales], "detail_channels": detail_channels,
              "mask_level": mask_level,
              "rois_per_image": rois_per_image,
              "detections_per_image": detections_per_image, "min_score": min_score, "mask_threshold": mask_threshold,
              "drop_iou": drop_iou, "mask_loss": mask_loss, "pairwise_weight": pairwise_weight,
              "pairwise_threshold": pairwise_threshold, "finetune_blocks": finetune_blocks, "backbone_lr": backbone_lr,
              "reads_images": reads_images({"hflip": hflip, "copy_paste": copy_paste,
                                            "finetune_blocks": finetune_blocks})}
    config.update({key: store.attrs[key] for key in ("backbone", "weights", "weights_digest")})
    if config["reads_images"] and inputs.facet != "tokens":
        raise ValueError(f"instances.mask_rcnn: augmentations and finetune_blocks run the ViT, whose output is the "
                         f"store's 'tokens' facet; facet {inputs.facet!r} cannot be recomputed from images")
    token_data = InstanceDataset(inputs.store_path, inputs.facet, detections)

    def scanned() -> Iterator[tuple[str, torch.Tensor, dict]]:
        for index, name in enumerate(token_data.names):
            targets = json.dumps([det["segmentation"] for det in detections[name]], sort_keys=True).encode()
            yield name, token_data.tokens(index), {"targets": np.frombuffer(targets, dtype=np.uint8)}

    statistics = scan_tokens(scanned(), len(token_data), inputs.progress)
    torch.manual_seed(seed)  # the initial weights
    model = build_instance_model(config)
    model.set_statistics(statistics.mean, statistics.std)
    dataset = token_data
    colours = mask_loss != "mask" or detail_channels > 0
    if (config["reads_images"] or colours) and inputs.image_paths is None:
        raise ValueError("instances.mask_rcnn: augmentations, finetune_blocks, detail_channels and mask_loss other "
                         "than 'mask' read the images; no image paths")
    if config["reads_images"]:
        spec = get_backbone_spec(config["backbone"])
        dataset = InstanceDataset(inputs.store_path, inputs.facet, detections, inputs.image_paths,
                                  {"hflip": hflip, "copy_paste": copy_paste, "copy_paste_scale": copy_paste_scale},
                                  spec.mean, spec.std, colours=colours)
    elif colours:
        dataset = InstanceDataset(inputs.store_path, inputs.facet, detections, inputs.image_paths,
                                  reads_images=False, colours=True)
    if inputs.initial_model is not None:
        load_initial_model(model, inputs.initial_model, config)
        config["initial_model_digest"] = data_digest(sorted(model.state_dict().items()))  # keys the resume
    return fit_detector(model, dataset, inputs.out_dir, config=config, digest=statistics.digest, steps=steps,
                        batch_size=batch_size, lr=lr, weight_decay=weight_decay, warmup_steps=warmup_steps, seed=seed,
                        device=device, workers=workers, checkpoint_every=checkpoint_every, progress=inputs.progress)


def load_initial_model(model: torch.nn.Module, path: Path, config: Mapping[str, Any]) -> None:
    """Start ``model`` from the checkpoint ``path`` (the previous round's) of the same method and architecture.

    Raises:
        ValueError: naming the file, when the checkpoint is another method or architecture.
    """
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    saved = checkpoint["config"]
    keys = ("method", "embed_dim", "channels", "scales", "finetune_blocks")
    if {key: saved.get(key) for key in keys} != {key: config.get(key) for key in keys}:
        raise ValueError(f"{path}: a {saved.get('method')} model ({ {key: saved.get(key) for key in keys[1:]} }) "
                         f"cannot start a {config.get('method')} training of "
                         f"{ {key: config.get(key) for key in keys[1:]} }; set init_from_previous: false")
    model.load_state_dict(checkpoint["state_dict"])


# ----------------------------------------------------------------------------------------------------------------
# Detection: a trained model's instances at the original resolution.


def load_instance_model(model_path: str | Path, stored_tokens: bool = True) -> tuple[torch.nn.Module, dict]:
    """(model in eval mode, its config) of a checkpoint written by an instances method. With ``stored_tokens``, a
    model whose ViT stayed frozen is built without it: it reads the store's tokens, which are that ViT's output."""
    checkpoint, build_model = read_model_checkpoint(model_path, "instances")
    config = checkpoint["config"]
    without_vit = stored_tokens and not int(config.get("finetune_blocks", 0))
    model = build_model(config, images=False) if without_vit else build_model(config)
    state = checkpoint["state_dict"]
    if without_vit:  # a frozen ViT's trained state is none: only its placeholder head's buffers were saved
        state = {key: value for key, value in state.items() if not key.startswith("backbone.")}
    model.load_state_dict(state)
    return model.eval(), config


def paste_detections(boxes: torch.Tensor, scores: torch.Tensor, masks: torch.Tensor, geometry: ResizeGeometry,
                     patch_size: int, image_id: int, mask_threshold: float = 0.5, chunk: int = 16) -> list[dict]:
    """One image's detections in the model frame → COCO results at its original size.

    Args:
        boxes: (N, 4) float x1, y1, x2, y2 in model pixels; scores: (N,); masks: (N, 1, M, M) probabilities inside
            each box.

    Returns:
        per detection with a non-empty mask: image_id, category_id 1, segmentation (RLE), score, area, bbox
        ([x, y, w, h] of the mask, pycocotools' ``toBbox``), in the order given.
    """
    from torchvision.models.detection.roi_heads import paste_masks_in_image

    original = boxes_to_original(boxes.float().cpu(), geometry, patch_size, FRAME_STRIDE)
    results = []
    for start in range(0, len(original), chunk):  # (chunk, 1, H0, W0) floats at a time, not all N
        pasted = paste_masks_in_image(masks[start : start + chunk].float().cpu(), original[start : start + chunk],
                                      tuple(geometry.original_size))[:, 0] > mask_threshold
        for offset, mask in enumerate(pasted.numpy()):
            if not mask.any():
                continue
            rle = encode_rle(mask)
            compressed = {"size": rle["size"], "counts": rle["counts"].encode("ascii")}
            results.append({"image_id": int(image_id), "category_id": 1, "segmentation": rle,
                            "score": round(float(scores[start + offset]), 6), "area": int(mask.sum()),
                            "bbox": [round(float(v), 2) for v in mask_utils.toBbox(compressed)]})
    return results


RESCORE_RULES = ("coherence", "none")


def rescore_by_coherence(detections: list[dict], unit_features: np.ndarray, geometry: ResizeGeometry) -> list[dict]:
    """Each detection's score × max(0, the coherence of its mask): the mean cosine similarity of the tokens it
    covers, each token weighted by the fraction of its cell the mask covers (:func:`unseg.ops.spectral.
    coverage_coherence`), the quality the spectral masks are scored by. The model's own score is kept as
    ``detector_score``.

    A detector trained on multi-k proposals also learns their merges of touching objects, and scores them as
    confidently as single objects; their tokens are less alike (measured on the demo: AP50 72.3 → 93.0).

    Args:
        unit_features: (h·w, D) unit-norm tokens of the image.
    """
    rescored = []
    for det in detections:
        coherence = coverage_coherence(unit_features, image_to_grid(decode_rle(det["segmentation"]), geometry))
        rescored.append({**det, "detector_score": det["score"], "coherence": round(coherence, 6),
                         "score": round(det["score"] * max(coherence, 0.0), 6)})
    return rescored


def crf_window(mask: np.ndarray, margin: float = 0.25, min_margin: int = 16) -> tuple[slice, slice]:
    """The part of the image a detection's CRF looks at: its mask's bounding box grown on every side by ``margin``
    × its longer side (at least ``min_margin`` px), within the image. (H, W) bool mask → (rows, cols) slices."""
    rows, cols = np.nonzero(mask)
    top, bottom, left, right = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    grow = max(min_margin, int(round(margin * max(bottom - top, right - left))))
    return (slice(max(0, top - grow), min(mask.shape[0], bottom + grow)),
            slice(max(0, left - grow), min(mask.shape[1], right + grow)))


def refine_detections(detections: list[dict], image: np.ndarray) -> list[dict]:
    """Each detection's mask snapped to the image's edges by a dense CRF (:func:`unseg.stages.proposals.
    refine_mask_with_crf`, the proposals stage's ``crf``) inside its :func:`crf_window` (a hundred detections of a
    photo each on the whole image took ~17 s per image on this CPU), area and bbox recomputed, ``"crf": true``; a
    mask the CRF empties is dropped. Needs pydensecrf (the ``crf`` extra)."""
    from unseg.stages.proposals import refine_mask_with_crf

    refined = []
    for det in detections:
        coarse = decode_rle(det["segmentation"])
        rows, cols = crf_window(coarse)
        mask = np.zeros_like(coarse)
        mask[rows, cols] = refine_mask_with_crf(np.ascontiguousarray(image[rows, cols]), coarse[rows, cols])
        if mask.any():
            rle = encode_rle(mask)
            compressed = {"size": rle["size"], "counts": rle["counts"].encode("ascii")}
            refined.append({**det, "segmentation": rle, "area": int(mask.sum()), "crf": True,
                            "bbox": [round(float(v), 2) for v in mask_utils.toBbox(compressed)]})
    return refined


@torch.inference_mode()
def detect_instances(model: torch.nn.Module, config: Mapping[str, Any], store: FeatureStore, names: Sequence[str],
                     image_paths: Mapping[str, str | Path] | None = None, device: torch.device | None = None,
                     progress: bool = True, rescore: str = "coherence", rescore_facet: str = "keys",
                     crf: bool = False) -> list[dict]:
    """The model's detections on the named images (COCO results at each image's original size). A model that reads
    images gets the plain image in the store's geometry, else the stored tokens. ``rescore: coherence`` multiplies
    each score by the coherence of the model's mask on the ``rescore_facet`` (:func:`rescore_by_coherence`); then
    ``crf`` refines every mask with a dense CRF on the image (:func:`refine_detections`)."""
    if rescore not in RESCORE_RULES:
        raise ValueError(f"instances rescore {rescore!r}: one of {RESCORE_RULES}")
    if crf and image_paths is None:
        raise ValueError("instances crf: refining the detections reads the images; no image paths given")
    reads_colours = getattr(model, "reads_colours", False)
    if reads_colours and image_paths is None:
        raise ValueError("instances: a model with detail_channels reads the images; no image paths given")
    device = device or torch.device("cpu")
    model.to(device).eval()
    autocast_dtype = torch.bfloat16 if device.type == "cuda" else None
    reads = getattr(model, "reads_images", False)
    spec = get_backbone_spec(config["backbone"]) if reads else None
    results = []
    for name in tqdm(names, desc="detect instances", unit="img", disable=not progress):
        geometry = store.geometry(name)
        image = resize_and_crop(read_image(image_paths[name]), geometry) if reads or reads_colours else None
        if reads:
            model_input = normalize_batch(image[None], spec.mean, spec.std)[0]
        else:
            model_input = token_tensor(store, name, config["facet"])[0]
        colours = [frame_colours(image, geometry.grid_size).to(device)] if reads_colours else None
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            found = model([model_input.to(device)], colours=colours)[0]
        pasted = paste_detections(found["boxes"], found["scores"], found["masks"], geometry, store.patch_size,
                                  store.image_id(name), config.get("mask_threshold", 0.5))
        if rescore == "coherence":  # of the model's own mask: the CRF's pixel edges are not what tokens judge
            pasted = rescore_by_coherence(pasted, unit_rows(store.facet(name, rescore_facet)), geometry)
        if crf:
            pasted = refine_detections(pasted, read_image(image_paths[name]))
        results += pasted
    return results


# ----------------------------------------------------------------------------------------------------------------
# Rounds: what round r trains on.


def mask_ious(first: Sequence[dict], second: Sequence[dict]) -> np.ndarray:
    """(len(first), len(second)) mask IoU of two lists of COCO results of one image (pycocotools)."""
    if not first or not second:
        return np.zeros((len(first), len(second)))

    def rles(dets):
        return [{"size": det["segmentation"]["size"], "counts": det["segmentation"]["counts"].encode("ascii")}
                for det in dets]

    return np.asarray(mask_utils.iou(rles(first), rles(second), [0] * len(second))).reshape(len(first), len(second))


def merge_round_targets(predictions: Sequence[dict], proposals: Sequence[dict], score_threshold: float,
                        overlap_iou: float, keep_proposals: bool) -> list[dict]:
    """The targets of the next self-training round, per image: the predictions scoring at least
    ``score_threshold`` (deduplicated by mask NMS at ``overlap_iou``), and each proposal whose best mask IoU with
    those is below ``overlap_iou`` (an NMS in which the model's confident detections rank first; CutLER,
    ``get_self_training_ann.py``, keeps the predictions as they are). ``keep_proposals`` False: the confident
    predictions alone. Each target carries ``source`` ("prediction" or "proposal")."""
    from unseg.stages.proposals import mask_nms

    confident: dict[int, list[dict]] = {}
    for det in predictions:
        if det["score"] >= score_threshold:
            confident.setdefault(int(det["image_id"]), []).append({**det, "source": "prediction"})
    confident = {image_id: mask_nms(dets, overlap_iou) for image_id, dets in confident.items()}
    pseudo: dict[int, list[dict]] = {}
    for det in proposals if keep_proposals else ():
        pseudo.setdefault(int(det["image_id"]), []).append(det)
    merged = []
    for image_id in sorted(set(confident) | set(pseudo)):
        kept = confident.get(image_id, [])
        candidates = pseudo.get(image_id, [])
        overlap = mask_ious(candidates, kept)
        merged += kept + [{**det, "source": "proposal"} for det, row in zip(candidates, overlap)
                          if not len(row) or row.max() < overlap_iou]
    return merged


# The variant's settings that make round r's targets from round r-1's detections (and the proposals).
MERGE_KEYS = ("self_training_score", "self_training_iou", "keep_proposals")


def run_round_targets(predictions_json: str | Path, proposals_json: str | Path, out_json: str | Path,
                      settings: Mapping[str, Any]) -> dict:
    """Write round r's ``targets.json`` from round r-1's ``instances.json`` and the proposals
    (:func:`merge_round_targets` with the variant's ``self_training_score``, ``self_training_iou`` and
    ``keep_proposals``); returns the counts by source."""
    merged = merge_round_targets(read_json(predictions_json), read_json(proposals_json),
                                 settings["self_training_score"], settings["self_training_iou"],
                                 settings["keep_proposals"])
    write_json(out_json, merged, indent=None)
    counts = {source: sum(det["source"] == source for det in merged) for source in ("prediction", "proposal")}
    print(f"round targets: {counts['prediction']} confident detections (score >= {settings['self_training_score']}) "
          f"+ {counts['proposal']} proposals they do not cover", file=sys.stderr)
    return counts


# ----------------------------------------------------------------------------------------------------------------
# Stage runners.


# The variant's settings about its rounds, not about one round's training.
ROUND_KEYS = ("rounds", "round_settings", "init_from_previous", *MERGE_KEYS, "rescore", "rescore_facet", "crf")


def settings_of_round(settings: Mapping[str, Any], round_index: int) -> dict[str, Any]:
    """The settings round ``round_index`` of an instances variant trains with
    (:func:`unseg.stages.train.settings_of_round`
    with this stage's round keys)."""
    return train_settings_of_round(settings, round_index, ROUND_KEYS)


def run_instances_train(store_path: str | Path, targets_json: str | Path, names_by_id: Mapping[int, str],
                        out_dir: str | Path, settings: Mapping[str, Any], image_paths: Mapping[str, str | Path] | None
                        = None, initial_model: str | Path | None = None, progress: bool = True) -> dict:
    """Train one round of the variant's method on ``targets_json`` (COCO results of the images of
    ``names_by_id``; an image without a target trains as background).

    Args:
        settings: the round's settings (:func:`settings_of_round`): ``method``, ``facet`` and the method's own.
    """
    method = REGISTRIES["instances"].get(settings["method"])
    config = {"method": method.name, "facet": settings["facet"], **method.settings(settings)}
    detections: dict[str, list[dict]] = {name: [] for _, name in sorted(names_by_id.items(), key=lambda kv: kv[1])}
    for det in read_json(targets_json):
        name = names_by_id.get(int(det["image_id"]))
        if name is not None:
            detections[name].append(det)
    inputs = InstanceTrainingInputs(Path(store_path), settings["facet"], detections, Path(out_dir), config,
                                    {name: Path(path) for name, path in image_paths.items()} if image_paths else None,
                                    Path(initial_model) if initial_model else None, progress)
    return method(inputs, settings=settings)


def run_instances_predict(model_path: str | Path, store_path: str | Path, names: Sequence[str], out_json: str | Path,
                          image_paths: Mapping[str, str | Path] | None = None, device: str | None = None,
                          progress: bool = True, rescore: str = "coherence", rescore_facet: str = "keys",
                          crf: bool = False) -> int:
    """Detect the instances of every named image with a round's model → ``out_json`` (refined and rescored as
    :func:`detect_instances` says); returns the count."""
    model, config = load_instance_model(model_path)
    store = FeatureStore(store_path)
    detections = detect_instances(model, config, store, names, image_paths, resolve_device(device), progress,
                                  rescore, rescore_facet, crf)
    write_json(out_json, detections, indent=None)
    return len(detections)


REPORT_KEYS = ("AP", "AP50", "AP75", "AR1", "AR10", "AR100")


def write_rounds_report(rows: Sequence[tuple[str, str | Path]], out_md: str | Path, out_json: str | Path) -> dict:
    """One table of the proposals and every round: ``rows`` are (label, metrics.json) in order, the first the
    proposals'. Writes ``out_md`` and ``out_json`` ({label: the numbers}); ratios are against the first row."""
    table: dict[str, dict] = {}
    for label, path in rows:
        metrics = read_json(path)
        entry = {key: metrics.get(key) for key in REPORT_KEYS}
        entry["single_AP50"] = (metrics.get("single") or {}).get("AP50")
        entry["num_detections"] = metrics.get("num_detections")
        entry["recall_by_instance_count"] = (metrics.get("recall_by_instance_count") or {}).get("recall")
        entry["best_object_iou"] = (metrics.get("object_iou") or {}).get("best_proposal_iou")
        table[label] = entry
    first = table[rows[0][0]]

    def number(value) -> str:
        return "–" if value is None else f"{value:.1f}"

    def ratio(value, reference) -> str:
        return "–" if value is None or not reference else f"{value / reference:.2f}×"

    groups = next((list(entry["recall_by_instance_count"]) for entry in table.values()
                   if entry["recall_by_instance_count"]), [])
    header = ["", *REPORT_KEYS, "AR100 vs proposals", "single AP50", *[f"recall n={g}" for g in groups],
              "best object IoU", "detections"]
    lines = ["# Instances: proposals and each self-training round", "",
             "Class-agnostic mask AP / AR (pycocotools, percent) of every round's detections on the proposals "
             "report's images and ground truth; recall by the number of same-class instances in the image (IoU ≥ "
             "0.5).", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, entry in table.items():
        recall = entry["recall_by_instance_count"] or {}
        cells = [label, *[number(entry[key]) for key in REPORT_KEYS], ratio(entry["AR100"], first["AR100"]),
                 number(entry["single_AP50"]), *[number(recall.get(g)) for g in groups],
                 number(entry["best_object_iou"]), str(entry["num_detections"])]
        lines.append("| " + " | ".join(cells) + " |")
    write_json(out_json, table)
    with atomic_output(out_md) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    return table


def rounds_needed(settings: Mapping[str, Any]) -> list[int]:
    """1..rounds of a variant."""
    return list(range(1, int(settings.get("rounds", 1)) + 1))


def check_round_chain(settings: Mapping[str, Any], variant: str) -> None:
    """Raise a ValueError naming ``instances.{variant}`` when a round that starts from the previous one cannot (a
    different architecture or number of fine-tuned blocks)."""
    if not settings.get("init_from_previous", True):
        return
    keys = ("method", "channels", "scales", "finetune_blocks")
    rounds = [settings_of_round(settings, r) for r in rounds_needed(settings)]
    for index in range(1, len(rounds)):
        before = {key: rounds[index - 1].get(key) for key in keys}
        after = {key: rounds[index].get(key) for key in keys}
        if before != after:
            raise ValueError(f"instances.{variant}.round_settings: round {index + 1} ({after}) starts from round "
                             f"{index} ({before}); keep them equal or set init_from_previous: false")

