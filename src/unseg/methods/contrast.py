"""Declarations of the contrast methods (:mod:`unseg.stages.contrast`: learned pixel embeddings, a feature store)."""

from __future__ import annotations

from unseg.config.registry import declare

# MaskContrast's settings (Van Gansbeke et al. 2021; 'the code': its unsupervised-saliency config).
CONTRAST_SCHEMA: dict[str, dict] = {
    "epochs": {"type": "integer", "minimum": 1, "default": 40, "description": "MaskContrast's unsupervised-saliency "
               "config trains 40 epochs"},
    "batch_size": {"type": "integer", "minimum": 1, "default": 128,
                   "description": "images per step (the config's 128); each step's prototypes enter the queue"},
    "lr": {"type": "number", "exclusiveMinimum": 0, "default": 0.004,
           "description": "SGD peak learning rate of the head, poly schedule (1 - epoch/epochs)^0.9 (the config's)"},
    "sgd_momentum": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.9},
    "weight_decay": {"type": "number", "minimum": 0, "default": 1e-4},
    "temperature": {"type": "number", "exclusiveMinimum": 0, "default": 0.5, "description": "T of the logits"},
    "key_momentum": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.999,
                     "description": "m of the key (momentum) encoder"},
    "queue_size": {"type": "integer", "minimum": 0, "default": 256,
                   "description": "K, negatives: prototypes of earlier batches"},
    "embedding_dim": {"type": "integer", "minimum": 2, "default": 32, "description": "the code's ndim"},
    "saliency_loss_weight": {"type": "number", "minimum": 0, "default": 1.0,
                             "description": "weight of the balanced BCE of the saliency logit (the code's 1)"},
    "head": {"enum": ["linear", "aspp"], "default": "aspp",
             "description": "the projection head over the token grid: DeepLab-v3's ASPP (the code's deeplab head) or "
                            "a 1x1 convolution"},
    "finetune_blocks": {"type": "integer", "minimum": 0, "default": 0,
                        "description": "train the ViT's last N blocks (and final norm) too; 0: frozen ViT"},
    "backbone_lr": {"type": "number", "exclusiveMinimum": 0, "default": 1e-5,
                    "description": "learning rate of the fine-tuned blocks (finetune_blocks > 0)"},
    "crop_scale": {"type": "array", "items": {"type": "number", "exclusiveMinimum": 0, "maximum": 1}, "minItems": 2,
                   "maxItems": 2, "default": [0.2, 1.0], "description": "random resized crop area range (the code's)"},
    "hflip": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.5},
    "color_jitter": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.8,
                     "description": "probability of colour jitter 0.4/0.4/0.4/0.1"},
    "grayscale": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.2},
    "blur": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.0,
             "description": "probability of a Gaussian blur (MaskContrast uses none)"},
    "min_area": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.01,
                 "description": "a view whose foreground fraction is not in (min_area, max_area) is redrawn"},
    "max_area": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.99},
    "label_scale": {"type": "integer", "minimum": 1, "default": 4,
                    "description": "embeddings are upsampled to this many times the token grid for the loss"},
    "seed": {"type": "integer", "default": 0},
    "device": {"type": ["string", "null"], "default": None,
               "description": "torch device; null: cuda when available (bfloat16 autocast), else cpu"},
    "workers": {"type": "integer", "minimum": 0, "default": 0, "description": "DataLoader processes"},
}


declare("contrast", "maskcontrast", "unseg.stages.contrast:maskcontrast",
        description=('MaskContrast: pixel embeddings contrasted over saliency masks, with a momentum encoder and a '
                     'queue (see the module docstring); writes the model, and the embeddings of every image of the '
                     'store as a feature store.'),
        schema=CONTRAST_SCHEMA)
