"""The train stage: a segmentation model trained on the pseudo-labels → ``train/{variant}/model.pt``.

Trainers are registered with ``@register("train", name, schema=..., build_model=...)`` (:mod:`unseg.registry`): the
function takes :class:`TrainingInputs` and its settings as keywords, writes ``model.pt`` (a checkpoint whose
``config`` names its ``method``), ``last.pt`` and ``log.csv``; ``build_model(config)`` rebuilds the model from a
checkpoint's config, so prediction (:mod:`unseg.predict`) builds the right model for any trainer.

``linear_head``: a per-token linear classifier (a 1×1 convolution) over standardised frozen tokens; its logits are
upsampled bilinearly to the label resolution for the loss and to the original image size for prediction (the
linear-probe-style head of MaskContrast / MaskDistill).
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .checkpoints import data_digest, load_resume_state, resume_key, save_checkpoint, save_resume_state
from .geometry import ResizeGeometry
from .io import (
    IGNORE_LABEL,
    atomic_output,
    read_label_png,
)
from .registry import REGISTRIES, register
from .store import FeatureStore


class LinearHead(torch.nn.Module):
    """Standardise tokens, then a 1×1 convolution to class logits.

    Input (B, D, h, w) float32 → logits (B, C, h, w).
    """

    def __init__(self, embed_dim: int, num_classes: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(embed_dim))
        self.register_buffer("std", torch.ones(embed_dim))
        self.classifier = torch.nn.Conv2d(embed_dim, num_classes, kernel_size=1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        tokens = (tokens - self.mean[None, :, None, None]) / self.std[None, :, None, None]
        return self.classifier(tokens)


def token_tensor(store: FeatureStore, name: str, facet: str) -> torch.Tensor:
    """(1, D, h, w) float32 from the store's (h, w, D) grid."""
    return torch.from_numpy(store.facet(name, facet)).permute(2, 0, 1)[None]


def _label_tensor(label_map: np.ndarray, geometry: ResizeGeometry, scale: int) -> torch.Tensor:
    """An (H0, W0) uint8 label map seen through the feature geometry: nearest-resized to the ViT input, cropped to
    the crop box (``"crop"`` layout), then nearest-resized to ``scale`` × the token grid; (1, h·s, w·s) int64."""
    labels = torch.from_numpy(label_map.astype(np.int64))[None, None].float()
    labels = F.interpolate(labels, size=tuple(geometry.resized_size), mode="nearest")
    top, left, crop_h, crop_w = geometry.box
    labels = labels[..., top : top + crop_h, left : left + crop_w]
    grid_h, grid_w = geometry.grid_size
    return F.interpolate(labels, size=(grid_h * scale, grid_w * scale), mode="nearest")[0].long()


@dataclass(frozen=True)
class TrainingInputs:
    """What a trainer reads and where it writes.

    Attributes:
        store_path: the feature store of the variant's ``features``; ``facet`` is the facet trained on.
        label_paths: image name → pseudo-label PNG (0 background, 1..num_classes-1 pseudo-classes, 255 ignored).
        out_dir: the variant's folder (``model.pt``, ``last.pt``, ``log.csv``).
        num_classes: output classes including background.
        config: the variant's settings, stored in the checkpoint (with ``method``).
    """

    store_path: Path
    label_paths: Mapping[str, Path]
    out_dir: Path
    num_classes: int
    facet: str
    config: Mapping[str, Any]
    progress: bool = True


def build_linear_head(config: Mapping[str, Any]) -> LinearHead:
    """The (untrained) model a ``linear_head`` checkpoint's config describes."""
    return LinearHead(int(config["embed_dim"]), int(config["num_classes"]))


@register("train", "linear_head", build_model=build_linear_head, schema={
    "epochs": {"type": "integer", "minimum": 1, "default": 60},
    "lr": {"type": "number", "exclusiveMinimum": 0, "default": 0.01, "description": "AdamW learning rate"},
    "weight_decay": {"type": "number", "minimum": 0, "default": 1e-4, "description": "AdamW weight decay"},
    "label_scale": {"type": "integer", "minimum": 1, "default": 4,
                    "description": "the loss is computed at this many times the token grid (labels resized by "
                                   "nearest)"},
    "seed": {"type": "integer", "default": 0},
})
def linear_head(inputs: TrainingInputs, *, epochs, lr, weight_decay, label_scale, seed) -> dict:
    """A linear 1×1 head on frozen standardised tokens, trained with AdamW and cross-entropy on the pseudo-labels."""
    return train_head(inputs.store_path, inputs.label_paths, inputs.out_dir, inputs.num_classes, facet=inputs.facet,
                      epochs=epochs, learning_rate=lr, weight_decay=weight_decay, label_scale=label_scale, seed=seed,
                      config=inputs.config, progress=inputs.progress)


def train_head(
    store_path: str | Path,
    label_paths: Mapping[str, str | Path],
    out_dir: str | Path,
    num_classes: int,
    *,
    facet: str,
    epochs: int,
    learning_rate: float,
    weight_decay: float,
    label_scale: int,
    seed: int,
    config: Mapping[str, Any],
    progress: bool = True,
) -> dict:
    """Train a :class:`LinearHead` on pseudo-label PNGs; write ``model.pt``, ``last.pt`` and ``log.csv``.

    ``last.pt`` (written after every epoch) is resumed only when it was saved for the same settings *and* the same
    tokens and labels (:mod:`unseg.checkpoints`); anything else trains from scratch.

    Args:
        label_paths: image name → label PNG (0 = background, 1..num_classes-1 pseudo-classes, 255 ignored).
        num_classes: number of output classes including background.
        label_scale: the loss is computed at ``label_scale`` × the token grid (labels resized by nearest).

    Returns:
        the final epoch's log row.
    """
    torch.manual_seed(seed)
    store = FeatureStore(store_path)
    names = sorted(label_paths)
    tokens = {name: token_tensor(store, name, facet) for name in names}
    labels = {}
    for name in names:
        label_map = read_label_png(label_paths[name])
        too_large = (label_map >= num_classes) & (label_map != IGNORE_LABEL)
        if too_large.any():
            raise ValueError(f"{label_paths[name]}: label {label_map[too_large].max()} ≥ num_classes={num_classes}")
        labels[name] = _label_tensor(label_map, store.geometry(name), label_scale)

    all_tokens = torch.cat([t.flatten(2)[0].T for t in tokens.values()])  # (total tokens, D)
    head = LinearHead(all_tokens.shape[1], num_classes)
    head.mean.copy_(all_tokens.mean(0))
    head.std.copy_(all_tokens.std(0).clamp(min=1e-6))
    optimizer = torch.optim.AdamW(head.parameters(), lr=learning_rate, weight_decay=weight_decay)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    checkpoint_config = {"method": "linear_head", **config, "num_classes": num_classes, "facet": facet,
                         "embed_dim": all_tokens.shape[1]}
    # Resume only the same experiment on the same data: the key digests the settings and every array trained on.
    key = resume_key(
        {**checkpoint_config, "weight_decay": weight_decay, "label_scale": label_scale, "seed": seed,
         "epochs": epochs, "learning_rate": learning_rate},
        data_digest([item for name in names
                     for item in ((f"{name}/tokens", tokens[name]), (f"{name}/labels", labels[name]))]),
    )
    start_epoch, rows = 0, []
    last_path = out_dir / "last.pt"
    state = load_resume_state(last_path, key)
    if state is not None:
        head.load_state_dict(state["state_dict"])
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng_state"])  # the same shuffles as an uninterrupted run
        start_epoch, rows = state["epoch"], state["log"]

    for epoch in tqdm(range(start_epoch, epochs), desc="train head", unit="epoch", disable=not progress):
        order = torch.randperm(len(names)).tolist()
        total_loss, correct, counted = 0.0, 0, 0
        for index in order:
            name = names[index]
            target = labels[name]
            logits = F.interpolate(head(tokens[name]), size=target.shape[-2:], mode="bilinear", align_corners=False)
            loss = F.cross_entropy(logits, target, ignore_index=IGNORE_LABEL)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            valid = target != IGNORE_LABEL
            total_loss += loss.item() * int(valid.sum())
            correct += int((logits.argmax(1) == target)[valid].sum())
            counted += int(valid.sum())
        rows.append({"epoch": epoch + 1, "loss": total_loss / max(counted, 1),
                     "pseudo_label_accuracy": correct / max(counted, 1)})
        save_resume_state(last_path, key, {"state_dict": head.state_dict(), "optimizer": optimizer.state_dict(),
                                           "epoch": epoch + 1, "log": rows, "rng_state": torch.get_rng_state()})

    with atomic_output(out_dir / "log.csv") as tmp:
        with open(tmp, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=["epoch", "loss", "pseudo_label_accuracy"])
            writer.writeheader()
            writer.writerows(rows)
    with atomic_output(out_dir / "model.pt") as tmp:
        save_checkpoint({"state_dict": head.state_dict(), "config": checkpoint_config, "log": rows}, tmp)
    return rows[-1] if rows else {}


def run_train(
    store_path: str | Path,
    label_dir: str | Path,
    names: Sequence[str],
    out_dir: str | Path,
    num_classes: int,
    settings: Mapping[str, Any],
    progress: bool = True,
) -> dict:
    """Train the variant's method on the pseudo-labels ``label_dir/{name}.png`` of ``names``.

    Args:
        num_classes: output classes including background (the pseudolabels variant's ``clusters`` + 1).
        settings: the train variant: ``method``, ``facet`` and the method's own settings.

    Returns:
        the trainer's final log row.
    """
    method = REGISTRIES["train"].get(settings["method"])
    config = {"method": method.name, "facet": settings["facet"], **method.settings(settings)}
    inputs = TrainingInputs(Path(store_path), {name: Path(label_dir) / f"{name}.png" for name in names}, Path(out_dir),
                            int(num_classes), settings["facet"], config, progress)
    return method(inputs, settings=settings)
