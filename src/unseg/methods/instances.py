"""Declarations of the instance segmenters (:mod:`unseg.stages.instances`: a method trains one self-training round on
``InstanceTrainingInputs``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from unseg.config.registry import Reference, declare
from unseg.methods.masks import READS_GRID

# ViTDet's simple feature pyramid: strides 4, 8, 16, 32 in the model frame (unseg.stages.instances.model's default).
PYRAMID_SCALES = (4.0, 2.0, 1.0, 0.5)
# The mask losses (unseg.stages.instances.model.DropLossRoIHeads).
MASK_LOSSES = ("mask", "mask_pairwise")


def reads_images(settings: Mapping[str, Any]) -> bool:
    """Whether training runs the ViT on images (an augmentation changes the pixels, or blocks are fine-tuned)."""
    return bool(settings.get("hflip") or settings.get("copy_paste") or settings.get("finetune_blocks"))


declare("instances", "mask_rcnn", "unseg.stages.instances.training:mask_rcnn",
        description=("Class-agnostic Mask R-CNN (torchvision) over a simple feature pyramid of the ViT's tokens "
                     "(ViTDet), with DropLoss (CutLER), trained on the proposals "
                     "(:mod:`unseg.stages.instances.model`)."),
        build_model=Reference("unseg.stages.instances.training:build_instance_model"),
        reads=READS_GRID,
        schema={
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
                  "description": "mask: Mask R-CNN's per-pixel cross-entropy against the pseudo-mask; "
                                 "mask_pairwise: the per-pixel cross-entropy plus BoxInst's pairwise colour term "
                                 "(Tian et al. 2021, section 3.3), after Engstler et al.'s loss (A.2.1); reads the "
                                 "images' colours (docs/benchmarks.md, 'Instances stage')"},
    "pairwise_weight": {"type": "number", "minimum": 0, "default": 1.0,
                        "description": "mask_loss mask_pairwise: weight of the pairwise colour term "
                                       "(BoxInst: 1)"},
    "pairwise_threshold": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.3,
                           "description": "mask_loss mask_pairwise: neighbouring cells whose colour "
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
                         "description": "steps between resumable checkpoints (last.pt), written at the end of a "
                                        "logging window (1 % of the steps)"},
})
