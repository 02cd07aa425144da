"""The ``mask_rcnn`` method of the instances stage (declared in :mod:`unseg.methods.instances`): its function
(:func:`mask_rcnn`), the model a checkpoint's config describes (:func:`build_instance_model`), and its part of the
training engine (:func:`fit_detector`, :class:`DetectorTraining`: AdamW, ViTDet's schedule; the engine's resumable
``last.pt``, ``model.pt``, ``log.csv``).

It trains on the stored tokens (the frozen ViT's exact output, no image decode) unless an augmentation or
``finetune_blocks`` needs the ViT on images: horizontal flips and copy-paste
(:func:`unseg.stages.instances.targets.copy_paste`: pseudo-masks of another image pasted on this one, Engstler et al.
2023, A.2.1; Ghiasi et al. CVPR 2021) change the pixels, so their tokens come from running the ViT on the augmented
image.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unseg.core.checkpoints import data_digest
from unseg.core.devices import resolve_device
from unseg.features.backbones import get_backbone_spec
from unseg.features.store import FeatureStore
from unseg.methods.instances import reads_images
from unseg.stages.instances.data import InstanceDataset, InstanceTrainingInputs, step_batches
from unseg.stages.instances.model import InstanceSegmenter, TokenStandardiser, build_mask_rcnn
from unseg.training.data import item_seed
from unseg.training.engine import TrainingTask, autocast, run_training
from unseg.training.finetune import ImageSegmenter, load_store_backbone
from unseg.training.statistics import scan_tokens

LOSS_NAMES = ("loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg", "loss_mask")
LOG_FIELDS = ("step", "loss", *LOSS_NAMES, "dropped", "lr")


def learning_rate_factor(step: int, steps: int, warmup_steps: int) -> float:
    """ViTDet's schedule (Li et al. 2022, section 4.1; detectron2's multi-step): linear warm-up from 0.001 over
    ``warmup_steps``, then 1, × 0.1 after 8/9 of the steps and × 0.01 after 26/27."""
    warmup = min(1.0, 0.001 + (1 - 0.001) * step / warmup_steps) if warmup_steps > 0 else 1.0
    decay = 0.01 if step >= steps * 26 / 27 else 0.1 if step >= steps * 8 / 9 else 1.0
    return warmup * decay


def detection_losses(model: torch.nn.Module, items: Sequence[tuple[torch.Tensor, dict]], micro_batch: int,
                     device: torch.device) -> dict[str, float]:
    """Back-propagate the batch's summed losses in sub-batches of ``micro_batch`` items (each sub-batch's mean
    losses weighted by its share of the batch); returns the batch's losses."""
    totals = dict.fromkeys(LOSS_NAMES, 0.0)
    for start in range(0, len(items), micro_batch):
        chunk = items[start : start + micro_batch]
        inputs = [item.to(device, non_blocking=True) for item, _ in chunk]
        targets = [{key: value.to(device, non_blocking=True) for key, value in target.items()} for _, target in chunk]
        with autocast(device):
            losses = model(inputs, targets)
        weight = len(chunk) / len(items)
        (sum(losses.values()) * weight).backward()
        for name in LOSS_NAMES:
            totals[name] += float(losses[name].detach()) * weight
    return totals


class DetectorTraining(TrainingTask):
    """The detector's part of the training engine: an engine epoch is one logging window of ``log_every`` optimiser
    steps (the last one may be shorter), each step a batch of :func:`~unseg.stages.instances.data.step_batches`;
    a step splits into sub-batches (out-of-memory halving), and the window's row holds its mean losses, the fraction
    of sampled regions DropLoss dropped, and the learning rate of its last step."""

    log_fields = LOG_FIELDS

    def __init__(self, model: InstanceSegmenter, dataset: InstanceDataset, batches: Sequence[Sequence[int]], *,
                 log_every: int, lr: float, warmup_steps: int, seed: int, workers: int, device: torch.device):
        self.model, self.dataset, self.all_batches = model, dataset, batches
        self.log_every, self.lr, self.warmup_steps, self.seed = log_every, lr, warmup_steps, seed
        self.workers, self.device = workers, device
        self.window: list[dict[str, float]] = []

    def batches(self, epoch: int) -> Iterable[list]:
        self.window = []
        first = epoch * self.log_every
        steps = range(first, min(first + self.log_every, len(self.all_batches)))
        loader = torch.utils.data.DataLoader(
            self.dataset, batch_sampler=[[(index, item_seed(self.seed, step, position))
                                          for position, index in enumerate(self.all_batches[step])] for step in steps],
            collate_fn=list, num_workers=self.workers, pin_memory=self.device.type == "cuda",
            generator=torch.Generator().manual_seed(self.seed))  # its base seed must not draw from the global RNG
        return loader

    def batch_items(self, items: list) -> int:
        return len(items)

    def step(self, items: list, micro_batch: int | None) -> dict[str, float]:
        losses = detection_losses(self.model, items, micro_batch or len(items), self.device)
        self.window.append({**losses, "dropped": getattr(self.model.roi_heads, "last_dropped", 0.0)})
        return {"loss": sum(losses.values())}

    def end_epoch(self, epoch: int) -> dict[str, Any]:
        last_step = min((epoch + 1) * self.log_every, len(self.all_batches)) - 1
        row = {"step": last_step + 1, **{name: float(np.mean([w[name] for w in self.window]))
                                         for name in (*LOSS_NAMES, "dropped")},
               "lr": self.lr * learning_rate_factor(last_step, len(self.all_batches), self.warmup_steps)}
        row["loss"] = sum(row[name] for name in LOSS_NAMES)
        return row


def fit_detector(model: InstanceSegmenter, dataset: InstanceDataset, out_dir: str | Path, *, config: Mapping[str, Any],
                 digest: str, steps: int, batch_size: int, lr: float, weight_decay: float, warmup_steps: int,
                 seed: int, device: str | None = None, workers: int = 0, checkpoint_every: int = 500,
                 progress: bool = True) -> dict:
    """Train ``model`` for ``steps`` optimiser steps of ``batch_size`` images with AdamW and ViTDet's schedule
    (:func:`learning_rate_factor`) on the training engine (:mod:`unseg.training.engine`, :class:`DetectorTraining`):
    ``log.csv`` gets a row of mean losses every 1 % of the steps; ``last.pt`` is written at the end of the first
    such window after every ``checkpoint_every`` steps and at the end, then ``model.pt`` (the last step's weights,
    the config).

    The resume key holds ``config``, the loop settings and ``digest`` (the training data as loaded): ``last.pt`` of
    other settings or inputs is never continued. Runs on CUDA when present (bfloat16 autocast); a batch that runs
    out of GPU memory is redone with its gradient accumulated over half-size sub-batches, kept for the rest of the
    run.

    Returns:
        {"steps", "final_loss": the mean loss of the last logging window}.
    """
    device_ = resolve_device(device)
    model.to(device_).train()
    optimizer = torch.optim.AdamW(model.parameter_groups(lr), lr=lr, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: learning_rate_factor(step, steps, warmup_steps))
    log_every = max(1, steps // 100)
    task = DetectorTraining(model, dataset, step_batches(len(dataset), batch_size, steps, seed), log_every=log_every,
                            lr=lr, warmup_steps=warmup_steps, seed=seed, workers=workers, device=device_)
    settings = {**config, "steps": steps, "batch_size": batch_size, "lr": lr, "weight_decay": weight_decay,
                "warmup_steps": warmup_steps, "seed": seed}
    rows = run_training(task, model, optimizer, out_dir, epochs=-(-steps // log_every), config=config,
                        settings=settings, inputs_digest=digest, scheduler=scheduler, scheduler_interval="step",
                        seed=seed,  # the RPN's and RoI heads' sampling draws
                        checkpoint_every=-(-checkpoint_every // log_every), progress=progress,
                        desc=f"train {config.get('method', '')} ({log_every} steps per window)", unit="window")
    return {"steps": steps, "final_loss": rows[-1]["loss"] if rows else None}


# ----------------------------------------------------------------------------------------------------------------
# The built-in method: Mask R-CNN on the ViT (unseg.stages.instances.model).

MODEL_KEYS = ("channels", "scales", "rois_per_image", "detections_per_image", "min_score", "drop_iou")
LOSS_KEYS = ("mask_loss", "pairwise_weight", "pairwise_threshold")  # training only: absent from older checkpoints
# Settings of older checkpoints since removed, each with its value that means "off".
REMOVED_SETTINGS = {"detail_channels": 0, "mask_level": "by_size"}


def build_instance_model(config: Mapping[str, Any], images: bool | None = None) -> InstanceSegmenter:
    """The untrained :class:`~unseg.stages.instances.model.InstanceSegmenter` a ``mask_rcnn`` checkpoint's config
    describes; with its ViT (``images``, default: as trained) when it reads images.

    Raises:
        ValueError: for a checkpoint trained with a setting since removed (``detail_channels``, ``mask_level:
            finest``, ``mask_loss: projection``; docs/benchmarks.md).
    """
    removed = {key: config[key] for key, off in REMOVED_SETTINGS.items() if config.get(key, off) != off}
    if config.get("mask_loss") == "projection":
        removed["mask_loss"] = "projection"
    if removed:
        raise ValueError(f"instances.mask_rcnn: a model trained with {removed}, settings that measured no gain and "
                         "were removed; retrain without them")
    images = config["reads_images"] if images is None else images
    backbone = None
    if images:
        vit, spec = load_store_backbone(config["backbone"], config["weights"], config["weights_digest"])
        backbone = ImageSegmenter(vit, int(config["finetune_blocks"]), TokenStandardiser(config["embed_dim"]),
                                  spec.patch_size, config["backbone_lr"])
    return build_mask_rcnn(config["embed_dim"], backbone=backbone, **{key: config[key] for key in MODEL_KEYS},
                           **{key: config[key] for key in LOSS_KEYS if key in config})


def mask_rcnn(inputs: InstanceTrainingInputs, *, steps, batch_size, lr, weight_decay, warmup_steps, channels, scales,
              rois_per_image, detections_per_image, min_score, mask_threshold,
              drop_iou, mask_loss, pairwise_weight, pairwise_threshold, min_target_score, copy_paste, copy_paste_scale,
              hflip, finetune_blocks, backbone_lr, seed, device, workers, checkpoint_every) -> dict:
    """Class-agnostic Mask R-CNN (torchvision) over a simple feature pyramid of the ViT's tokens (ViTDet), with
    DropLoss (CutLER), trained on the proposals (:mod:`unseg.stages.instances.model`)."""
    detections = {name: [det for det in dets if det.get("score", 1.0) >= min_target_score]
                  for name, dets in inputs.detections.items()}
    store = FeatureStore(inputs.store_path)
    config = {**inputs.config, "embed_dim": int(store.attrs["embed_dim"]), "facet": inputs.facet,
              "channels": channels, "scales": [float(scale) for scale in scales],
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
    colours = mask_loss != "mask"
    if (config["reads_images"] or colours) and inputs.image_paths is None:
        raise ValueError("instances.mask_rcnn: augmentations, finetune_blocks and mask_loss other than 'mask' read "
                         "the images; no image paths")
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


