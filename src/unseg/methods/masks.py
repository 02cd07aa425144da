"""Declarations of the masks methods (:mod:`unseg.stages.masks`: a method takes a ``MaskBatch`` and returns each
image's grid masks)."""

from __future__ import annotations

from typing import Any

from unseg.config.registry import GRID, declare

# JSON Schema of the solver_precision setting, shared by the masks and saliency methods that call the eigensolver
# (unseg.ops.eigensolver.pass_dtype reads it).
SOLVER_PRECISION = {
    "type": "string",
    "enum": ["auto", "bfloat16", "float32"],
    "default": "auto",
    "description": "eigensolver's passes over the features: auto = bfloat16 on CUDA and on CPUs with native bfloat16 "
                   "(AVX512-BF16/AMX), else float32; float32 gives the same masks on every machine, ~30 % slower",
}

# Settings both spectral methods share (Engstler et al. 2023, Sec. 3: k = 2..5 clusters, components split).
SPECTRAL_SCHEMA: dict[str, Any] = {
    "k": {"type": "array", "items": {"type": "integer", "minimum": 2}, "minItems": 1, "default": [2, 3, 4, 5],
          "description": "the numbers of clusters (spectral_multik) / of eigenvector k-means segments (deep_spectral)"},
    "split_components": {"type": "boolean", "default": True,
                         "description": "split each mask into its 4-connected components"},
    "min_area_fraction": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.015,
                          "description": "drop masks smaller than this fraction of the token grid (unless "
                                         "min_area_patches is set)"},
    "min_area_patches": {"type": ["integer", "null"], "minimum": 1, "default": None,
                         "description": "drop masks of fewer token cells than this (replaces min_area_fraction, "
                                        "which at 448 px drops every object under ~20 patches; Engstler et al.'s "
                                        "re-implementation keeps 4)"},
    "seed": {"type": "integer", "default": 0, "description": "k-means seed"},
    "solver_precision": SOLVER_PRECISION,
}

# Every masks method reads its variant's ``facet``: one (h, w, D) token grid per image.
READS_GRID = {"facet": "facet", "shape": GRID}

declare("masks", "spectral_multik", "unseg.stages.masks:spectral_multik",
        description=('Engstler et al. 2023: NJW spectral clustering of the tokens for every k, every cluster '
                     '(component) a mask.'),
        reads=READS_GRID,
        schema=SPECTRAL_SCHEMA)


declare("masks", "deep_spectral", "unseg.stages.masks:deep_spectral",
        description=('Deep Spectral Methods (Melas-Kyriazi et al. 2022): sign splits of the first eigenvectors (border'
                     ' rule) and k-means segments of eigenvectors 1..K-1, the border-most segment dropped as '
                     'background.'),
        reads=READS_GRID,
        schema={
    **SPECTRAL_SCHEMA,
    "num_eigenvectors": {"type": "integer", "minimum": 2, "default": 10,
                         "description": "K smallest Laplacian eigenvectors"},
    "eigen_masks": {"type": "integer", "minimum": 0, "default": 3,
                    "description": "split eigenvectors 1..this by sign into masks"},
    "drop_background": {"type": "boolean", "default": True,
                        "description": "drop the segment covering most of the image border"},
    "color_weight": {"type": "number", "minimum": 0, "default": 0.0,
                     "description": "lambda of the KNN colour (image-matting) affinity added to the feature affinity; "
                                    "0 = features only"},
})


declare("masks", "maskcut", "unseg.stages.masks:maskcut",
        description=("MaskCut (Wang et al., CutLER, CVPR 2023, section 3.1): up to N normalized cuts per image on the "
                     "keys' affinity thresholded at tau, each cut's foreground (the side of the eigenvector's peak, "
                     "not three corners; its component holding the peak) removed from the next cut's graph."),
        reads=READS_GRID,
        schema={
    "num_cuts": {"type": "integer", "minimum": 1, "default": 3,
                 "description": "N, the most masks per image (CutLER section 3.1: 3)"},
    "tau": {"type": "number", "minimum": -1, "maximum": 1, "default": 0.15,
            "description": "affinity threshold: edges of weight 1 where the keys' cosine similarity is above tau, "
                           "1e-5 elsewhere (CutLER section 3.1: 0.15)"},
    "min_area_fraction": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.01,
                          "description": "a cut whose mask covers at most this fraction of the grid ends the image's "
                                         "cuts (CutLER's maskcut.py: 0.01)"},
    "max_previous_iou": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.5,
                         "description": "a cut whose mask overlaps the previous one above this IoU ends the image's "
                                        "cuts (CutLER's maskcut.py: 0.5)"},
    "center": {"type": "boolean", "default": True,
               "description": "subtract each image's mean token before the cosine similarities: DINOv2's keys share "
                              "a component of ~93 % of their norm, so at tau 0.15 every edge is 1 (docs/benchmarks.md, "
                              "'Objects in 500 COCO photos'); false = CutLER's graph as is (DINO keys)"},
})
