"""Every config the project ships (the demo, the template, the recipes, the benchmarks') is valid: schema and variant
references."""

from __future__ import annotations

import pytest
import yaml

from unseg.config.schema import load_methods, validate_config
from unseg.config.variants import check_variants

from helpers import ROOT, SCHEMA

FOLDERS = ("config", "config/recipes", "benchmarks/configs", "tests/configs")
SHIPPED = sorted(path for folder in FOLDERS for path in (ROOT / folder).glob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=[str(path.relative_to(ROOT)) for path in SHIPPED])
def test_a_shipped_config_validates_and_names_existing_variants(path):
    load_methods()
    config = yaml.safe_load(path.read_text())
    validate_config(config, SCHEMA)
    check_variants(config)
