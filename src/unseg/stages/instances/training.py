"""The ``mask_rcnn`` method of the instances stage: its registration and schema (:func:`mask_rcnn`), the model a
checkpoint's config describes (:func:`build_instance_model`), and the training loop (:func:`fit_detector`: AdamW,
ViTDet's schedule, resumable ``last.pt``, ``model.pt``, ``log.csv``).

It trains on the stored tokens (the frozen ViT's exact output, no image decode) unless an augmentation or
``finetune_blocks`` needs the ViT on images: horizontal flips and copy-paste
(:func:`unseg.stages.instances.targets.copy_paste`: pseudo-masks of another image pasted on this one, Engstler et al.
2023, A.2.1; Ghiasi et al. CVPR 2021) change the pixels, so their tokens come from running the ViT on the augmented
image.
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from unseg.core.checkpoints import data_digest, load_resume_state, resume_key, save_checkpoint, save_resume_state
from unseg.core.devices import resolve_device
from unseg.core.io import atomic_output
from unseg.features.backbones import get_backbone_spec
from unseg.features.store import FeatureStore
from unseg.methods.instances import reads_images
from unseg.stages.instances.data import InstanceDataset, InstanceTrainingInputs, step_batches
from unseg.stages.instances.model import InstanceSegmenter, TokenStandardiser, build_mask_rcnn
from unseg.training.data import item_seed
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
                     device: torch.device, autocast_dtype: torch.dtype | None) -> dict[str, float]:
    """Back-propagate the batch's summed losses in sub-batches of ``micro_batch`` items (each sub-batch's mean
    losses weighted by its share of the batch); returns the batch's losses."""
    totals = dict.fromkeys(LOSS_NAMES, 0.0)
    for start in range(0, len(items), micro_batch):
        chunk = items[start : start + micro_batch]
        inputs = [item.to(device, non_blocking=True) for item, _ in chunk]
        targets = [{key: value.to(device, non_blocking=True) for key, value in target.items()} for _, target in chunk]
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            losses = model(inputs, targets)
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


