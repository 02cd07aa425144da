"""Small array builders shared by the unit tests."""

from pathlib import Path

import numpy as np

from unseg.io import encode_rle

ROOT = Path(__file__).resolve().parents[1]


def box(shape, top, left, bottom, right):
    """(H, W) bool mask, True on rows top:bottom and columns left:right."""
    mask = np.zeros(shape, dtype=bool)
    mask[top:bottom, left:right] = True
    return mask


def det(mask, score, **extra):
    """A COCO result of image 1 for ``mask`` with ``score``."""
    return {"image_id": 1, "category_id": 1, "segmentation": encode_rle(mask), "score": score, **extra}


SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"


def variant(stage: str, **given):
    """A variant's settings as the config schema completes them (defaults of the stage and of its method)."""
    from unseg.config import load_methods, variant_settings

    load_methods()
    return variant_settings(stage, given, SCHEMA)
