"""Self-training a segmentation head over frozen ViT features, and predicting with it.

The head is a per-token linear classifier (a 1×1 convolution) over standardised tokens; its logits are upsampled
bilinearly to the label resolution for the loss and to the original image size for prediction. This is the
linear-probe-style head of MaskContrast / MaskDistill; deeper heads can be added as other ``method`` values.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from tqdm.auto import tqdm

from .checkpoints import data_digest, load_resume_state, resume_key, save_resume_state
from .geometry import ResizeGeometry, grid_to_image
from .io import (
    IGNORE_LABEL,
    atomic_output,
    encode_rle,
    read_label_png,
    write_json,
    write_label_png,
)
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


def _token_tensor(store: FeatureStore, name: str, facet: str) -> torch.Tensor:
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


def train_head(
    store_path: str | Path,
    label_paths: dict[str, str | Path],
    out_dir: str | Path,
    num_classes: int,
    facet: str = "tokens",
    epochs: int = 60,
    learning_rate: float = 0.01,
    weight_decay: float = 1e-4,
    label_scale: int = 4,
    seed: int = 0,
    config: dict | None = None,
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
    tokens = {name: _token_tensor(store, name, facet) for name in names}
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
    checkpoint_config = {"num_classes": num_classes, "facet": facet, "embed_dim": all_tokens.shape[1], **(config or {})}
    # Resume only the same experiment on the same data: the key digests the settings and every array trained on.
    key = resume_key(
        {**checkpoint_config, "weight_decay": weight_decay, "label_scale": label_scale, "seed": seed,
         "epochs": epochs, "learning_rate": learning_rate},
        data_digest([item for name in names for item in ((f"{name}/tokens", tokens[name]), (f"{name}/labels", labels[name]))]),
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
        rows.append({"epoch": epoch + 1, "loss": total_loss / max(counted, 1), "pseudo_label_accuracy": correct / max(counted, 1)})
        save_resume_state(last_path, key, {"state_dict": head.state_dict(), "optimizer": optimizer.state_dict(),
                                           "epoch": epoch + 1, "log": rows, "rng_state": torch.get_rng_state()})

    with atomic_output(out_dir / "log.csv") as tmp:
        with open(tmp, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=["epoch", "loss", "pseudo_label_accuracy"])
            writer.writeheader()
            writer.writerows(rows)
    with atomic_output(out_dir / "model.pt") as tmp:
        torch.save({"state_dict": head.state_dict(), "config": checkpoint_config, "log": rows}, tmp)
    return rows[-1] if rows else {}


def load_head(model_path: str | Path) -> tuple[LinearHead, dict]:
    """Load a head written by :func:`train_head`; returns (head in eval mode, its config)."""
    checkpoint = torch.load(model_path, map_location="cpu", weights_only=False)
    config = checkpoint["config"]
    head = LinearHead(config["embed_dim"], config["num_classes"])
    head.load_state_dict(checkpoint["state_dict"])
    return head.eval(), config


def instances_from_probabilities(probabilities: np.ndarray, min_area: int) -> list[tuple[np.ndarray, int, float]]:
    """Connected components of each predicted foreground class as instances.

    Args:
        probabilities: (C, H, W) float softmax output; class 0 is background.
        min_area: drop components with fewer pixels.

    Returns:
        (mask (H, W) bool, class index ≥ 1, score = mean probability of that class inside the mask).
    """
    prediction = probabilities.argmax(0)
    instances = []
    for class_index in range(1, probabilities.shape[0]):
        labelled, count = ndimage.label(prediction == class_index)
        for component in range(1, count + 1):
            mask = labelled == component
            if mask.sum() >= min_area:
                instances.append((mask, class_index, float(probabilities[class_index][mask].mean())))
    return instances


@torch.inference_mode()
def predict(
    model_path: str | Path,
    store_path: str | Path,
    names: Sequence[str],
    out_dir: str | Path,
    min_instance_area_fraction: float = 0.002,
    progress: bool = True,
) -> int:
    """Predict label PNGs (``out_dir/{name}.png``) and instances (``out_dir/instances.json``, COCO results with
    ``category_id`` = predicted class) for the named images. Returns the instance count."""
    head, config = load_head(model_path)
    store = FeatureStore(store_path)
    detections = []
    with atomic_output(out_dir) as tmp:
        tmp.mkdir(parents=True)
        for name in tqdm(names, desc="predict", unit="img", disable=not progress):
            geometry = store.geometry(name)
            logits = head(_token_tensor(store, name, config["facet"]))[0].numpy()
            probabilities = torch.from_numpy(grid_to_image(logits, geometry)).softmax(0).numpy()
            write_label_png(tmp / f"{name}.png", probabilities.argmax(0).astype(np.uint8))
            min_area = max(1, int(min_instance_area_fraction * probabilities.shape[1] * probabilities.shape[2]))
            for mask, class_index, score in instances_from_probabilities(probabilities, min_area):
                detections.append({"image_id": store.image_id(name), "category_id": class_index,
                                   "segmentation": encode_rle(mask), "score": round(score, 6), "area": int(mask.sum())})
        write_json(tmp / "instances.json", detections, indent=None)
    return len(detections)
