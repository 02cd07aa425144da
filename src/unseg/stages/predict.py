"""The predict stage: a trained model's label maps and instances for every image → ``predict/{variant}/``.

Artifact: ``{name}.png`` label maps (palette PNG, the model's classes) and ``instances.json`` (COCO results: the
connected components of each predicted foreground class, ``category_id`` = that class, score = its mean
probability). The model is rebuilt by the ``build_model`` of the trainer its checkpoint names
(:mod:`unseg.stages.train`).

:func:`refine_labels` makes the training labels of a self-training round: the previous round's predictions, refined
by a dense CRF on the image (:mod:`unseg.ops.crf`) when asked. :func:`bootstrap_labels` makes those of a TransFGU
round (teacher-student trainers, :func:`unseg.training.rounds.is_teacher_student`): the initial pseudo-labels averaged
with the teacher's probabilities (section 3.3, Eq. 12). Both also keep the previous round's own predictions, before
the CRF or the average, in ``prediction/{name}.png`` (:data:`PREDICTION_FOLDER`): the audit shows every round's
predictions side by side.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage
from tqdm.auto import tqdm

from unseg.core.checkpoints import read_model_checkpoint
from unseg.core.devices import resolve_device
from unseg.core.geometry import grid_to_image
from unseg.core.io import IGNORE_LABEL, atomic_output, encode_rle, read_image, write_json, write_label_png
from unseg.core.provenance import file_digest
from unseg.features.store import FeatureStore
from unseg.ops.crf import CrfParams, dense_crf
from unseg.stages.train import model_input  # importing train registers the built-in trainers
from unseg.training.bootstrap import bootstrapped_scores
from unseg.training.data import PREDICTION_FOLDER, SOFT_FOLDER, TEACHER_FILE, class_scores


def load_model(model_path: str | Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Load a checkpoint written by a trainer: (model in eval mode, its config). The config's ``method`` names the
    trainer whose ``build_model`` makes the model."""
    checkpoint, build_model = read_model_checkpoint(model_path, "train")
    config = checkpoint["config"]
    model = build_model(config)
    model.load_state_dict(checkpoint["state_dict"])
    return model.eval(), config


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
def image_probabilities(model: torch.nn.Module, config: dict[str, Any], store: FeatureStore, name: str,
                        device: torch.device | None = None, image_path: str | Path | None = None) -> np.ndarray:
    """The model's class probabilities of one stored image at its original size: (C, H0, W0) float32 (softmax of
    the logits interpolated from the token grid). A model that fine-tuned the backbone reads ``image_path``."""
    device = device or torch.device("cpu")
    logits = model(model_input(config, store, name, image_path).to(device))[0].float().cpu().numpy()
    return torch.from_numpy(grid_to_image(logits, store.geometry(name))).softmax(0).numpy()


@torch.inference_mode()
def predict(
    model_path: str | Path,
    store_path: str | Path,
    image_paths: Mapping[str, str | Path],
    out_dir: str | Path,
    min_instance_area_fraction: float = 0.002,
    progress: bool = True,
) -> int:
    """Predict label PNGs (``out_dir/{name}.png``) and instances (``out_dir/instances.json``, COCO results with
    ``category_id`` = predicted class) for the images ``image_paths`` names (the files are read only by a model
    that fine-tuned the backbone). Returns the instance count."""
    model, config = load_model(model_path)
    device = resolve_device(None)
    model.to(device)
    store = FeatureStore(store_path)
    detections = []
    with atomic_output(out_dir) as tmp:
        tmp.mkdir(parents=True)
        for name in tqdm(list(image_paths), desc="predict", unit="img", disable=not progress):
            probabilities = image_probabilities(model, config, store, name, device, image_paths[name])
            write_label_png(tmp / f"{name}.png", probabilities.argmax(0).astype(np.uint8), atomic=False)
            min_area = max(1, int(min_instance_area_fraction * probabilities.shape[1] * probabilities.shape[2]))
            for mask, class_index, score in instances_from_probabilities(probabilities, min_area):
                detections.append({"image_id": store.image_id(name), "category_id": class_index,
                                   "segmentation": encode_rle(mask), "score": round(score, 6), "area": int(mask.sum())})
        write_json(tmp / "instances.json", detections, indent=None)
    return len(detections)


@torch.inference_mode()
def refine_labels(
    model_path: str | Path,
    store_path: str | Path,
    image_paths: Mapping[str, str | Path],
    out_dir: str | Path,
    crf: bool = True,
    crf_params: CrfParams = CrfParams(),
    progress: bool = True,
) -> dict[str, Any]:
    """The next self-training round's labels: each image's predicted classes, refined by a dense CRF on the image
    when ``crf`` (MaskDistill, Part 2), as ``out_dir/{name}.png`` (one atomic folder); with the CRF, the predictions
    before it too, as ``out_dir/prediction/{name}.png`` (:data:`PREDICTION_FOLDER`; without it they are the labels).

    Args:
        image_paths: image name → image file (for the CRF's colour kernel), every image to label.

    Returns:
        {"num_images", "changed_by_crf"}: the fraction of pixels whose label the CRF changed.
    """
    model, config = load_model(model_path)
    device = resolve_device(None)
    model.to(device)
    store = FeatureStore(store_path)
    changed = total = 0
    with atomic_output(out_dir) as tmp:
        tmp.mkdir(parents=True)
        if crf:
            (tmp / PREDICTION_FOLDER).mkdir()
        for name in tqdm(sorted(image_paths), desc="refine labels", unit="img", disable=not progress):
            probabilities = image_probabilities(model, config, store, name, device, image_paths[name])
            labels = probabilities.argmax(0)
            if crf:
                write_label_png(tmp / PREDICTION_FOLDER / f"{name}.png", labels.astype(np.uint8), atomic=False)
                refined = dense_crf(read_image(image_paths[name]), probabilities, crf_params).argmax(0)
                changed += int((refined != labels).sum())
                labels = refined
            total += labels.size
            write_label_png(tmp / f"{name}.png", labels.astype(np.uint8), atomic=False)
    return {"num_images": len(image_paths), "changed_by_crf": changed / max(total, 1)}


@torch.inference_mode()
def bootstrap_labels(
    teacher_path: str | Path,
    store_path: str | Path,
    initial_dir: str | Path,
    image_paths: Mapping[str, str | Path],
    out_dir: str | Path,
    progress: bool = True,
) -> dict[str, Any]:
    """The labels of a TransFGU round r ≥ 2 (Yin et al., section 3.3, "Teacher-Student Network"): the bootstrapped
    pseudo-labels M̂ = 0.5·(M + P̂) of each image on its token grid (Eq. 10-12, :func:`unseg.training.bootstrap.
    bootstrapped_scores`), M the initial pseudo-labels (always round 1's: ``initial_dir``, its soft maps or the
    one-hot of its PNGs, :func:`unseg.training.data.class_scores`) and P̂ the softmax of the teacher, round r-1's
    model, on the grid ("before upsampled"). No CRF.

    Writes, as one atomic folder ``out_dir``:

    * ``soft/{name}.npy`` — M̂, (C, h, w) float16, NaN where M is ignored: what the student trains on;
    * ``{name}.png`` — argmax of M̂ bilinearly upsampled to the original image size (Eq. 11; 255 where the ignored
      cells cover the pixel), for the audit pages and the label-agnostic trainers;
    * ``teacher.json`` — the teacher's method and file digest, read by the trainer (its α ramp and its config);
    * ``prediction/{name}.png`` — the teacher's own label maps (argmax of P̂ bilinearly upsampled), for the audit.

    Args:
        image_paths: image name → image file, every image to label (files read only by a model that fine-tuned the
            backbone).

    Returns:
        {"num_images", "changed_by_teacher"}: the fraction of labelled cells whose argmax the teacher changed.
    """
    model, config = load_model(teacher_path)
    device = resolve_device(None)
    model.to(device)
    store = FeatureStore(store_path)
    num_classes = int(config["num_classes"])
    changed = total = 0
    with atomic_output(out_dir) as tmp:
        (tmp / SOFT_FOLDER).mkdir(parents=True)
        (tmp / PREDICTION_FOLDER).mkdir()
        for name in tqdm(sorted(image_paths), desc="bootstrap labels", unit="img", disable=not progress):
            geometry = store.geometry(name)
            initial = torch.from_numpy(class_scores(Path(initial_dir) / f"{name}.png", geometry, num_classes))
            logits = model(model_input(config, store, name, image_paths[name]).to(device))[0].float().cpu()
            scores = bootstrapped_scores(initial, logits)  # (C, h, w), NaN where M is ignored
            np.save(tmp / SOFT_FOLDER / f"{name}.npy", scores.numpy().astype(np.float16))
            ignored = scores.isnan().any(0)
            before, after = initial.nan_to_num(0.0).argmax(0), scores.nan_to_num(0.0).argmax(0)
            changed += int(((before != after) & ~ignored).sum())
            total += int((~ignored).sum())
            labels = grid_to_image(scores.nan_to_num(0.0).numpy(), geometry).argmax(0).astype(np.uint8)
            labels[grid_to_image(ignored.float().numpy(), geometry) > 0.5] = IGNORE_LABEL
            write_label_png(tmp / f"{name}.png", labels, atomic=False)
            write_label_png(tmp / PREDICTION_FOLDER / f"{name}.png",
                            grid_to_image(logits.numpy(), geometry).argmax(0).astype(np.uint8), atomic=False)
        write_json(tmp / TEACHER_FILE, {"method": config["method"], "model_digest": file_digest(teacher_path),
                                        "rule": "TransFGU Eq. 12: 0.5 * (M + softmax(teacher))"})
    return {"num_images": len(image_paths), "changed_by_teacher": changed / max(total, 1)}

