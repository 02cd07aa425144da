"""Declarations of the trainers (:mod:`unseg.stages.train`: a trainer takes ``TrainingInputs`` and its settings and
returns the log row of the kept epoch), and the schemas of their training loop."""

from __future__ import annotations

from unseg.config.registry import Reference, declare
from unseg.methods.masks import READS_GRID

# The loop settings of the image path (unseg.training.finetune; their defaults stated once, here: every head trainer's
# schema has them).
FINETUNE_SCHEMA: dict[str, dict] = {
    "finetune_blocks": {"type": "integer", "minimum": 0, "default": 0,
                        "description": "fine-tune the ViT's last N blocks (and its final norm) under the head, on "
                                       "augmented images; 0 trains the head on the stored tokens (no image decode)"},
    "probe_epochs": {"type": "integer", "minimum": 0, "default": 40,
                     "description": "finetune_blocks > 0: first train the head alone on the stored tokens for this "
                                    "many epochs (linear probing, then fine-tuning: a random head's gradients would "
                                    "distort the pre-trained blocks; Kumar et al. 2022, LP-FT); skipped when the round "
                                    "starts from a previous model; 0 fine-tunes from a random head"},
    # Measured on the VOC crops (linear head, 1 block, 20 epochs; docs/benchmarks.md): 1e-3 → 30.2 mIoU, 1e-4 → 30.4,
    # 1e-5 → 33.1, frozen 32.4. Pre-trained blocks move little or they forget.
    "backbone_lr": {"type": "number", "exclusiveMinimum": 0, "default": 1e-5,
                    "description": "AdamW peak learning rate of the fine-tuned blocks (cosine decay as the head's lr)"},
    "crop_scale": {"type": "array", "items": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
                   "minItems": 2, "maxItems": 2, "default": [0.4, 1.0],
                   "description": "random resized crop: area fraction range (DINO's global crops), resized back to "
                                  "the ViT input; [1, 1] turns it off (finetune_blocks > 0 only)"},
    "hflip": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.5,
              "description": "probability of a horizontal flip (finetune_blocks > 0 only)"},
    "color_jitter": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.8,
                     "description": "probability of DINO's colour jitter (brightness 0.4, contrast 0.4, saturation "
                                    "0.2, hue 0.1) (finetune_blocks > 0 only)"},
    "grayscale": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.2,
                  "description": "probability of a grayscale conversion (finetune_blocks > 0 only)"},
    "blur": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.5,
             "description": "probability of a Gaussian blur, sigma 0.1-2 (finetune_blocks > 0 only)"},
}


def training_schema(epochs: int, lr: float) -> dict[str, dict]:
    """The loop's settings (:func:`unseg.stages.train.fit`), with a trainer's own default epochs and learning rate."""
    return {
        "epochs": {"type": "integer", "minimum": 1, "default": epochs},
        "lr": {"type": "number", "exclusiveMinimum": 0, "default": lr,
               "description": "AdamW peak learning rate (cosine decay to 0 over all steps)"},
        "weight_decay": {"type": "number", "minimum": 0, "default": 1e-4, "description": "AdamW weight decay"},
        "batch_size": {"type": "integer", "minimum": 1, "default": 8, "description": "images per optimiser step"},
        "label_scale": {"type": "integer", "minimum": 1, "default": 4,
                        "description": "the loss is computed at this many times the token grid (labels resized by "
                                       "nearest)"},
        "seed": {"type": "integer", "default": 0},
        "device": {"type": ["string", "null"], "default": None,
                   "description": "torch device; null: cuda when available (bfloat16 autocast), else cpu"},
        "workers": {"type": "integer", "minimum": 0, "default": 0, "description": "DataLoader processes"},
        **FINETUNE_SCHEMA,
    }


# The options of Segmenter's mask transformer head (unseg.training.heads), read from a checkpoint's config.
MASK_TRANSFORMER_OPTIONS = ("width", "layers", "heads", "dropout")
# The loop settings a teacher-student trainer does not take (its loss is on the token grid, it fine-tunes nothing).
TRAINING_ONLY_KEYS = ("label_scale", *(key for key in FINETUNE_SCHEMA if key != "finetune_blocks"))


def head_builder(kind: str, option_keys: tuple[str, ...] = ()) -> Reference:
    """A head trainer's ``build_model`` attribute: the untrained model its checkpoint config describes (the ``kind``
    head with the config's ``option_keys``, under the fine-tuned ViT when it has ``finetune_blocks``), built by
    :mod:`unseg.stages.train` when first read."""
    return Reference("unseg.stages.train:head_model_builder", (kind, option_keys))


declare("train", "linear_head", "unseg.stages.train:linear_head",
        description=('A linear 1×1 head on frozen standardised (or unit-length) tokens, trained with AdamW and '
                     'cross-entropy on the pseudo-labels.'),
        build_model=head_builder("linear", ("tokens",)),
        reads=READS_GRID,
        schema={
    **training_schema(epochs=60, lr=0.01),
    "tokens": {"enum": ["standardised", "unit"], "default": "standardised",
               "description": "what the head reads: the tokens standardised per channel, or each scaled to unit "
                              "length (cosine geometry; on the 500 COCO photos' supercategories 12.50 against 10.93 "
                              "mIoU from the same pseudo-labels: docs/benchmarks.md, 'Objects in 500 COCO photos')"},
})


declare("train", "mask_transformer", "unseg.stages.train:mask_transformer",
        description=("Segmenter's mask transformer (class embeddings decoded with the patch tokens) on frozen tokens."),
        build_model=head_builder("mask_transformer", MASK_TRANSFORMER_OPTIONS),
        reads=READS_GRID,
        schema={
    **training_schema(epochs=40, lr=1e-3),
    "width": {"type": "integer", "minimum": 8, "default": 384,
              "description": "decoder width (Segmenter: the encoder's, 384 for ViT-S)"},
    "layers": {"type": "integer", "minimum": 1, "default": 2, "description": "decoder layers (Segmenter: 2)"},
    "heads": {"type": "integer", "minimum": 1, "default": 6, "description": "attention heads (must divide width)"},
    "dropout": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.1, "description": "Segmenter: 0.1"},
})


declare("train", "deeplab_aspp", "unseg.stages.train:deeplab_aspp",
        description=("DeepLab-v3's ASPP head (torchvision's DeepLabHead) on frozen tokens."),
        build_model=head_builder("aspp", ("atrous_rates",)),
        reads=READS_GRID,
        schema={
    **training_schema(epochs=40, lr=1e-3),
    "atrous_rates": {"type": "array", "items": {"type": "integer", "minimum": 1}, "minItems": 1,
                     "default": [6, 12, 18], "description": "DeepLab-v3 (sec. 3.3) rates at output stride 16"},
})


declare("train", "transfgu_bootstrap", "unseg.stages.train:transfgu_bootstrap",
        description=("TransFGU's bootstrapped decoder (Yin et al., ECCV 2022, section 3.3): Segmenter's mask "
                     'transformer on frozen tokens, trained on class scores with the peer, diversity and uncertainty '
                     'losses (Eq. 13-16).'),
        build_model=head_builder("mask_transformer", MASK_TRANSFORMER_OPTIONS),
        teacher_student=True,
        reads=READS_GRID,
        schema={
    **{key: prop for key, prop in training_schema(epochs=40, lr=1e-3).items() if key not in TRAINING_ONLY_KEYS},
    "finetune_blocks": {"type": "integer", "minimum": 0, "default": 0,
                        "description": "must be 0: the student trains on the stored tokens (fine-tuning the backbone "
                                       "is not supported by this trainer)"},
    "width": {"type": "integer", "minimum": 8, "default": 384,
              "description": "decoder width (Segmenter: the encoder's, 384 for ViT-S)"},
    "layers": {"type": "integer", "minimum": 1, "default": 2, "description": "decoder layers (Segmenter: 2)"},
    "heads": {"type": "integer", "minimum": 1, "default": 6, "description": "attention heads (must divide width)"},
    "dropout": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.1, "description": "Segmenter: 0.1"},
    "alpha": {"type": "number", "minimum": 0, "default": 0.1,
              "description": "weight of the peer loss's negative term (TransFGU Eq. 13) once ramped up; the paper "
                             "gives no value, the authors' code ramps it over the epochs since the teacher's update: "
                             "alpha_start, +0.01 per epoch, up to alpha (0.03, 0.04, ..., 0.1). Rounds >= 2 only: "
                             "round 1, without a teacher, trains with plain cross-entropy, as in the code"},
    "alpha_start": {"type": "number", "minimum": 0, "default": 0.03,
                    "description": "alpha in a round's first epoch (authors' code), +0.01 per epoch up to alpha"},
    "omega_diversity": {"type": "number", "minimum": 0, "default": 1.0,
                        "description": "weight of the class-embedding diversity loss (TransFGU Eq. 15-16: "
                                       "omega_1 = 1)"},
    "omega_uncertainty": {"type": "number", "minimum": 0, "default": 0.3,
                          "description": "weight of the uncertainty loss (TransFGU Eq. 14-16: omega_2 = 0.3)"},
    "augment": {"type": "boolean", "default": False,
                "description": "TransFGU sec. 4.2 'Data Augmentation': train on augmented images through the frozen "
                               "ViT (a random crop resized to half the image, its class scores cropped by RoI-Align; "
                               "flip; colour jitter, grayscale, blur), a ViT forward per image per epoch; false: on "
                               "the stored tokens (no image decode)"},
    "crop_side": {"type": "array", "items": {"type": "number", "exclusiveMinimum": 0, "maximum": 1}, "minItems": 2,
                  "maxItems": 2, "default": [0.4, 0.9],
                  "description": "augment: the crop's side as a fraction of the image's, drawn uniformly (the "
                                 "authors' code: 0.4-0.9)"},
    "output_scale": {"type": "number", "exclusiveMinimum": 0, "maximum": 1, "default": 0.5,
                     "description": "augment: the crop is resized to this fraction of the image's size (sec. 4.2: "
                                    "'resized to (H/2, W/2)')"},
    **{key: FINETUNE_SCHEMA[key] for key in ("hflip", "color_jitter", "grayscale", "blur")},
})
