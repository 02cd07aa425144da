"""Declarations of the instance segmenters (:mod:`unseg.stages.instances`: a method trains one self-training round on
``InstanceTrainingInputs``)."""

from __future__ import annotations

from unseg.config.registry import Reference, declare
from unseg.methods.masks import READS_GRID

# ViTDet's simple feature pyramid: strides 4, 8, 16, 32 in the model frame (unseg.stages.instance_model's default).
PYRAMID_SCALES = (4.0, 2.0, 1.0, 0.5)
# The mask losses and the pyramid levels a mask is pooled from (unseg.stages.instance_model's choices).
MASK_LOSSES = ("mask", "projection", "mask_pairwise")
MASK_LEVELS = ("by_size", "finest")


declare("instances", "mask_rcnn", "unseg.stages.instances:mask_rcnn",
        description=("Class-agnostic Mask R-CNN (torchvision) over a simple feature pyramid of the ViT's tokens "
                     "(ViTDet), with DropLoss (CutLER), trained on the proposals "
                     "(:mod:`unseg.stages.instance_model`)."),
        build_model=Reference("unseg.stages.instances:build_instance_model"),
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
