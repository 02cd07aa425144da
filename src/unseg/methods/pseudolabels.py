"""Declarations of the pseudo-label methods (:mod:`unseg.stages.pseudolabels`: a method takes the stage's
``PseudolabelInputs`` and returns ``PseudoLabels``)."""

from __future__ import annotations

from unseg.config.registry import declare
from unseg.methods.masks import READS_GRID

declare("pseudolabels", "mask_kmeans", "unseg.stages.pseudolabels:mask_kmeans",
        description=('MaskDistill-style: k-means of coverage-weighted proposal features into pseudo-classes, '
                     'background-like clusters painted as background, the most confident mask on top (module '
                     'docstring).'),
        reads=READS_GRID,
        schema={
    "background_clusters": {"type": "integer", "minimum": 0, "default": 1,
                            "description": "extra k-means clusters nearest the non-salient feature prototype, painted "
                                           "as background"},
    "min_score": {"type": "number", "minimum": 0, "default": 0.8,
                  "description": "proposals scoring lower are not clustered, and their pixels that no "
                                 "confident one covers are background"},
    "seed": {"type": "integer", "default": 0, "description": "first k-means seed"},
    "num_restarts": {"type": "integer", "minimum": 1, "default": 5,
                     "description": "k-means runs, seeds seed..seed+num_restarts-1; the lowest inertia wins (every "
                                    "run's inertia is in the summary)"},
    "device": {"type": ["string", "null"], "default": None,
               "description": "k-means (and masked-crop encoder) device: null = cuda when available (torch "
                              "k-means), else faiss on the cpu"},
    "candidate_feature": {"enum": ["mask_pooled", "masked_crop_cls"], "default": "mask_pooled",
                          "description": "what is clustered: the coverage-weighted mean of the stored tokens, or the "
                                         "backbone's CLS token of the masked crop (MaskDistill; reads the images)"},
    "crop_resolution": {"type": "integer", "minimum": 14, "default": 224,
                        "description": "masked_crop_cls: the crop's side at the backbone's input (the backbones' "
                                       "pre-training resolution)"},
    "crop_margin": {"type": "number", "minimum": 0, "default": 0.1,
                    "description": "masked_crop_cls: the square box is this much wider than the mask's longer side"},
    "crop_batch_size": {"type": "integer", "minimum": 1, "default": 32,
                        "description": "masked_crop_cls: crops per forward pass"},
})


declare("pseudolabels", "transfgu", "unseg.stages.pseudolabels:transfgu",
        description=("TransFGU's top-down pseudo-labels (:mod:`unseg.stages.transfgu`): concepts by k-means over the "
                     "crops' CLS tokens, each image's Grad-CAM response map per concept, the arg max with Eq. 8's "
                     'background.'),
        needs_proposals=False,
        schema={
    "mode": {"enum": ["object", "scene", "all_foreground"], "default": "object",
             "description": "TransFGU sec. 4.2: object (PASCAL VOC, COCO-80): crops split by the attention prior, "
                            "Eq. 8 background; scene (Cityscapes): every crop clustered, no background; "
                            "all_foreground (LIP): every crop clustered, Eq. 8 background"},
    "background_concepts": {"type": "integer", "minimum": 0, "default": 0,
                            "description": "object mode: this many of the clusters come from k-means on the "
                                           "background crops (TransFGU's stuff concepts, COCO-Stuff); the rest from "
                                           "the foreground crops"},
    "foreground_fraction": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.5,
                            "description": "a crop is foreground when more than this fraction is attended (sec. 4.2)"},
    "background_fraction": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.8,
                            "description": "a crop is background when more than this fraction is not attended "
                                           "(sec. 4.2)"},
    "background_threshold": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.1,
                             "description": "T_bg of Eq. 8 (sec. 3.2: 0.1)"},
    "gradient_mass": {"type": "number", "exclusiveMinimum": 0, "maximum": 1, "default": 0.8,
                      "description": "the positive Grad-CAM gradient is added on the cells holding this fraction of "
                                     "it (the authors' code, get_grad_mask: 0.8)"},
    "seed": {"type": "integer", "default": 0, "description": "first k-means seed"},
    "num_restarts": {"type": "integer", "minimum": 1, "default": 5,
                     "description": "k-means runs per group; the lowest inertia wins"},
    "device": {"type": ["string", "null"], "default": None,
               "description": "k-means and Grad-CAM device: null = cuda when available, else cpu (faiss k-means)"},
})
