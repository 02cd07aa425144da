"""A config or a weights file that cannot work stops before any artifact, naming the key or the file (issue 17, bad
inputs: unknown keys, wrong types, a backbone that does not exist, a checkpoint that does not fit, a variant naming a
missing upstream variant, an empty dataset)."""

from __future__ import annotations

import copy

import pytest
import torch
import yaml

from unseg.config.schema import ConfigError, load_methods, validate_config
from unseg.config.variants import VariantError, check_variants
from unseg.data.index import build_index
from unseg.features.backbones import CheckpointError, create_backbone, get_backbone_spec

from helpers import SCHEMA
from workflow_helpers import TINY


@pytest.fixture(scope="module")
def tiny_config():
    load_methods()
    return yaml.safe_load(TINY.read_text())


@pytest.mark.parametrize("edit,message", [
    (lambda c: c["masks"]["multik"].update(colour_weight=1.0), r"masks\.multik: .*'colour_weight'.* takes"),
    (lambda c: c["masks"]["multik"].update(k="3"), r"masks\.multik\.k: '3' is not of type 'array'"),
    (lambda c: c["proposals"]["default"].update(nms_iou=2), r"proposals\.default\.nms_iou: 2 is greater than"),
    (lambda c: c.update(featurse={}), r"config: Additional properties are not allowed \('featurse'"),
    (lambda c: c["dataset"].update(max_pixels=10), r"dataset\.max_pixels: 10 is less than the minimum of 1024"),
])
def test_a_config_that_breaks_the_schema_names_the_key(tiny_config, edit, message):
    config = copy.deepcopy(tiny_config)
    edit(config)
    with pytest.raises(ConfigError, match=message):
        validate_config(config, SCHEMA)


def test_a_variant_naming_a_missing_upstream_variant_names_the_key(tiny_config):
    config = validate_config(copy.deepcopy(tiny_config), SCHEMA)
    config["train"]["linear"]["pseudolabels"] = "km21"
    with pytest.raises(VariantError, match=r"train\.linear\.pseudolabels: no 'pseudolabels' variant named 'km21'"):
        check_variants(config)


def test_a_backbone_that_does_not_exist_and_a_checkpoint_that_does_not_fit(tmp_path):
    with pytest.raises(KeyError, match="dino_vits17"):
        get_backbone_spec("dino_vits17")
    small, _ = create_backbone("vit_tiny_patch16_224", "random")
    path = tmp_path / "tiny.pth"
    torch.save(small.state_dict(), path)  # ViT-Ti weights for a ViT-S
    with pytest.raises(CheckpointError, match=rf"{path.name}.*shape mismatch"):
        create_backbone("dino_vits16", path)


def test_an_empty_dataset_is_an_error_not_an_empty_index(tmp_path):
    (tmp_path / "photos").mkdir()
    with pytest.raises(ValueError, match="no images"):
        build_index(tmp_path / "photos")
