"""Declarations of the saliency methods (:mod:`unseg.stages.saliency`: a method takes a ``SaliencyBatch`` and returns
each image's soft foreground map)."""

from __future__ import annotations

from unseg.config.registry import declare
from unseg.methods.masks import READS_GRID, SOLVER_PRECISION

declare("saliency", "spectral_bipartition", "unseg.stages.saliency:spectral_bipartition",
        description=('Engstler et al. 2023 (after Deep Spectral Methods): the k = 2 bipartition of the token affinity;'
                     ' the side touching the image border less is foreground. Soft map: 0.5 + 0.5 × generalised '
                     'Fiedler vector / its max magnitude, oriented by that border rule; with ``partition: kmeans``, '
                     "0.5 + 0.5 × (d_bg − d_fg) / (d_bg + d_fg) of each token's distances to the two k-means "
                     'centroids.'),
        reads=READS_GRID,
        schema={
    "solver_precision": SOLVER_PRECISION,
    "partition": {"enum": ["fiedler_sign", "kmeans"], "default": "fiedler_sign",
                  "description": "fiedler_sign: the sign of the generalised Fiedler vector (Deep Spectral Methods, "
                                 "Engstler et al.); kmeans: k = 2 k-means on the row-normalised first two "
                                 "eigenvectors (Ng-Jordan-Weiss)"}})


declare("saliency", "border_background", "unseg.stages.saliency:border_background",
        description=('Background prior (Wei et al., ECCV 2012, "Geodesic saliency using background priors"; the idea '
                     'FOUND, Siméoni et al. CVPR 2023, builds on: observe the background to find the object): the '
                     'image border is mostly background, so a token is background as much as it resembles the border '
                     'tokens. Score per token: 1 − the mean of its cosine similarities to every token of the '
                     'outermost ring, min-max scaled per image; the soft map is that score split at its own Otsu '
                     'threshold (:func:`split_at`), so > 0.5 is foreground.'),
        reads=READS_GRID,
        schema={})


declare("saliency", "mask_folder", "unseg.stages.saliency:mask_folder",
        description=('Masks made elsewhere, one PNG per image: grey values / 255, or a 0/1 (or palette 0/1) mask as '
                     'is.'),
        pixel_maps=True,
        required=["path"],
        schema={
    "path": {"type": "string", "description": "a folder of {image name}.png masks at each image's size (read only): "
                                               "grey 0-255 (soft, foreground > 127) or 0/1 binary, e.g. the "
                                               "precomputed saliency masks MaskContrast trains on"}})


declare("saliency", "foreground_head", "unseg.stages.saliency:foreground_head",
        description=('A light foreground head trained across the whole dataset (FOUND, Siméoni et al. CVPR 2023, '
                     "section 3.2 and its configs/found_DUTS-TR.yaml; SelfMask's idea of learning saliency from "
                     'unsupervised masks).'),
        dataset_level=True,
        reads=READS_GRID,
        schema={
    "teacher": {"type": "string", "default": "border_background",
                "description": "the registered saliency method whose maps (> 0.5, on the token grid) are the head's "
                               "targets for its first teacher_iterations"},
    "teacher_settings": {"type": "object", "default": {}, "description": "the teacher method's own settings"},
    "iterations": {"type": "integer", "minimum": 1, "default": 500, "description": "FOUND's max_iter"},
    "batch_images": {"type": "integer", "minimum": 1, "default": 50, "description": "images per iteration (FOUND)"},
    "lr": {"type": "number", "exclusiveMinimum": 0, "default": 0.05, "description": "AdamW learning rate (FOUND)"},
    "lr_step": {"type": "integer", "minimum": 1, "default": 50, "description": "StepLR step in iterations (FOUND)"},
    "lr_gamma": {"type": "number", "exclusiveMinimum": 0, "maximum": 1, "default": 0.95,
                 "description": "StepLR factor (FOUND)"},
    "teacher_iterations": {"type": ["integer", "null"], "minimum": 0, "default": None,
                           "description": "iterations on the teacher's targets, after which the head trains on its own "
                                          "binarised predictions (FOUND's stop_bkg_loss: 100); null: all of them. "
                                          "Without FOUND's bilateral-solver loss that self-training costs 2.0 IoU on "
                                          "the shared horses (docs/benchmarks.md), so it is off by default"},
    "self_weight": {"type": "number", "minimum": 0, "default": 4.0,
                    "description": "weight of the self-training loss (FOUND's w_self_loss)"},
    "train_images": {"type": "integer", "minimum": 1, "default": 2048,
                     "description": "at most this many images (a seeded sample) are held in memory and trained on "
                                    "(~1.4 GB of float16 tokens at 448 px, ViT-S/14); every image is predicted"},
    "seed": {"type": "integer", "default": 0}})
