"""How well a trained instance model fits its own training targets, beside how well it fits the ground truth.

For a one-object dataset (the Weizmann horses) and a variant trained on proposals, this runs the round's model on
the first ``--images`` training photos (no CRF; scores rescored by coherence, as the stage does) and prints, each
as a mean over images of an IoU in %:

- ``target``: against the image's *target*, the training proposal of ``--target-source`` (``saliency_component``:
  the components proposals' foreground pieces) that best overlaps the ground truth, i.e. the one mask the model was
  taught for this horse;
- ``ground truth``: against the human mask;

each for the top-scored detection (``top``) and for the best of all detections (``best``), with the AR@100 the
best masks give (the mean over IoU thresholds 0.50:0.05:0.95 of the fraction of images whose best mask reaches it:
COCO's AR@100 for one object per image). A model that fits its targets reads ``target best`` near 100; the gap
between ``target best`` and the targets' own ground-truth IoU (``targets vs ground truth``) is what the model
loses against what it was taught.

Then the mask head alone, read on every training proposal in that proposal's own box (so the detector's boxes play
no part), as in training: the mean binary cross-entropy of its M x M logits against the proposal's mask projected
on the box (torchvision's ``project_masks_on_boxes``) and the IoU of the two at M x M (> 0.5), by kind of proposal:
the targets (every proposal of ``--target-source``), the other proposals whose box overlaps a target's by IoU > 0.8
(the same object, cut otherwise), and the rest (its parts, other things, background pieces).

Usage (from the project root, after the variant's round was trained)::

    .venv/bin/python benchmarks/instance_fit.py --results results/horses --variant maskrcnn-comp --round 1 \\
        --proposals components --images 40

(``--proposals`` may name other proposals than the variant trained on: ``--variant maskrcnn-componly --proposals
components`` reads the head trained on the components alone on the multi-k masks it never saw.)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.models.detection.roi_heads import project_masks_on_boxes
from torchvision.ops import box_iou

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from unseg.core.io import decode_rle, read_json  # noqa: E402
from unseg.data.index import image_paths, read_index  # noqa: E402
from unseg.features.store import FeatureStore  # noqa: E402
from unseg.stages.instances.detect import detect_instances, load_instance_model  # noqa: E402
from unseg.stages.instances.model import FRAME_STRIDE  # noqa: E402
from unseg.stages.instances.targets import frame_targets, masks_in_frame  # noqa: E402
from unseg.training.data import token_tensor  # noqa: E402

THRESHOLDS = np.linspace(0.5, 0.95, 10)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


def recall_over_thresholds(best: np.ndarray) -> float:
    """COCO's AR@100 for one object per image whose best masks overlap it by ``best`` (n,) IoUs."""
    return float(np.mean([(best >= threshold).mean() for threshold in THRESHOLDS]))


def head_in_own_boxes(model, config: dict, store: FeatureStore, name: str,
                      targets: dict[str, torch.Tensor]) -> tuple[np.ndarray, np.ndarray]:
    """(N,) mean BCE and (N,) M x M IoU of the mask head on each of one image's ``targets`` (:func:`frame_targets`
    of its proposals: ``boxes`` and ``masks`` in the model frame), each read in its own box."""
    boxes = targets["boxes"]
    with torch.no_grad():
        tokens, sizes = model.encode([token_tensor(store, name, config["facet"])[0]])
        features = model.pyramid(tokens)
        heads = model.roi_heads
        logits = heads.mask_predictor(heads.mask_head(heads.mask_roi_pool(features, [boxes], sizes)))[:, 1]
    wanted = project_masks_on_boxes(targets["masks"], boxes, torch.arange(len(boxes)), logits.shape[-1])
    loss = F.binary_cross_entropy_with_logits(logits, wanted, reduction="none").mean((1, 2))
    found, truth = logits > 0, wanted > 0.5
    iou_cells = (found & truth).sum((1, 2)) / (found | truth).sum((1, 2)).clamp(min=1)
    return loss.numpy(), iou_cells.numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, default=ROOT / "results" / "horses")
    parser.add_argument("--variant", default="maskrcnn-comp")
    parser.add_argument("--round", type=int, default=1)
    parser.add_argument("--proposals", default="components", help="the proposals variant the model trained on")
    parser.add_argument("--target-source", default="saliency_component",
                        help="which training proposals are targets (their 'source'; 'any' for all)")
    parser.add_argument("--features", default="dinov2-s14")
    parser.add_argument("--masks", type=Path, default=ROOT.parent / "shared/data/weizmann-horse/masks",
                        help="ground truth: <name>.png, object > 127")
    parser.add_argument("--images", type=int, default=40)
    args = parser.parse_args()

    index = args.results / "index" / "images.csv"
    names = list(read_index(index)["name"])[: args.images]
    store = FeatureStore(args.results / "features" / f"{args.features}.zarr")
    model, config = load_instance_model(args.results / "instances" / args.variant / f"round-{args.round}" / "model.pt")
    detections = detect_instances(model, config, store, names, image_paths(index))
    by_image: dict[int, list[dict]] = {}
    for det in detections:
        by_image.setdefault(int(det["image_id"]), []).append(det)
    targets: dict[int, list[dict]] = {}
    every_proposal: dict[int, list[dict]] = {}
    for proposal in read_json(args.results / "proposals" / args.proposals / "proposals.json"):
        every_proposal.setdefault(int(proposal["image_id"]), []).append(proposal)
        if args.target_source == "any" or proposal.get("source") == args.target_source:
            targets.setdefault(int(proposal["image_id"]), []).append(proposal)
    kinds = ("a target", "same box as a target (IoU > 0.8)", "the other proposals")
    by_kind: dict[str, list[tuple[float, float]]] = {kind: [] for kind in kinds}

    rows = {"target": [], "ground truth": []}
    target_vs_truth = []
    for name in names:
        image_id = store.image_id(name)
        truth = np.asarray(Image.open(args.masks / f"{name}.png").convert("L")) > 127
        found = sorted(by_image.get(image_id, []), key=lambda det: -det["score"])
        masks = [decode_rle(det["segmentation"]).astype(bool) for det in found]
        candidates = [decode_rle(p["segmentation"]).astype(bool) for p in targets.get(image_id, [])]
        target = max(candidates, key=lambda mask: iou(mask, truth)) if candidates else None
        ious = [iou(mask, truth) for mask in masks] or [0.0]
        rows["ground truth"].append((ious[0], max(ious)))
        if target is not None:
            target_vs_truth.append(iou(target, truth))
            ious = [iou(mask, target) for mask in masks] or [0.0]
            rows["target"].append((ious[0], max(ious)))
        # the head in each proposal's own box; the kind comes from the boxes in the model frame. frame_targets drops
        # a mask the frame empties: the same proposals are dropped here, so the two lists stay aligned.
        proposals = every_proposal.get(image_id, [])
        in_frame = masks_in_frame(proposals, store.geometry(name), store.patch_size, FRAME_STRIDE)
        proposals = [p for p, present in zip(proposals, in_frame.flatten(1).any(1).tolist()) if present]
        if proposals:
            frame = frame_targets(in_frame)
            loss, cells = head_in_own_boxes(model, config, store, name, frame)
            is_target = np.array([args.target_source == "any" or p.get("source") == args.target_source
                                  for p in proposals])
            boxes = frame["boxes"]
            overlap = box_iou(boxes, boxes[torch.from_numpy(is_target)]) if is_target.any() else None
            for position in range(len(proposals)):
                if is_target[position]:
                    kind = kinds[0]
                elif overlap is not None and float(overlap[position].max()) > 0.8:
                    kind = kinds[1]
                else:
                    kind = kinds[2]
                by_kind[kind].append((float(loss[position]), float(cells[position])))

    print(f"{args.variant} round {args.round}, first {len(names)} images of {args.results} "
          f"({len(rows['target'])} with a {args.target_source} target)")
    for key, values in rows.items():
        values = np.asarray(values)
        print(f"  vs {key:13s} top {100 * values[:, 0].mean():5.1f}  best {100 * values[:, 1].mean():5.1f}  "
              f"AR@100 {100 * recall_over_thresholds(values[:, 1]):5.1f}")
    truth_ious = np.asarray(target_vs_truth)
    print(f"  targets vs ground truth: IoU {100 * truth_ious.mean():5.1f}, AR@100 "
          f"{100 * recall_over_thresholds(truth_ious):5.1f}")
    print(f"the mask head in each training proposal's own box ({args.proposals} proposals):")
    for kind, values in by_kind.items():
        if values:
            values = np.asarray(values)
            print(f"  {kind:33s} n {len(values):4d}  BCE {values[:, 0].mean():.3f}  "
                  f"IoU at the head's resolution {100 * values[:, 1].mean():5.1f}")


if __name__ == "__main__":
    main()
