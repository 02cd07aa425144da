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


def test_unseg_check_names_the_file_and_line_of_a_yaml_error_and_the_key_of_a_bad_setting(tmp_path, capsys):
    from unseg.cli import main

    broken = tmp_path / "broken.yaml"
    broken.write_text("dataset:\n  name: x\n  root: [unclosed\nfeatures:\n  a: {backbone: dino_vits16}\n")
    assert main(["check", str(broken)]) == 1
    assert f"{broken}:4:9: not valid YAML: expected ',' or ']', but got ':' (while parsing a flow sequence that " \
           "starts at line 3, column 9)" in capsys.readouterr().err
    dangling = tmp_path / "dangling.yaml"
    dangling.write_text(f"dataset: {{name: x, root: {tmp_path}}}\nmasks:\n  m: {{features: nope}}\n")
    assert main(["check", str(dangling)]) == 1
    assert f"{dangling}: masks.m.features: no 'features' or 'contrast' variant named 'nope'" in capsys.readouterr().err
    assert main(["check", str(ROOT / "config" / "config.yaml")]) == 0
    assert "valid; dataset 'synthetic'" in capsys.readouterr().out


def test_the_timed_coco_chain_is_config_coco_yaml_on_the_500_photos():
    from unseg.config.schema import read_config_file

    shipped = read_config_file(ROOT / "config" / "coco.yaml")
    timed = read_config_file(ROOT / "benchmarks" / "configs" / "coco-val500-chain.yaml")
    assert {key: value for key, value in timed.items() if key != "dataset"} == \
        {key: value for key, value in shipped.items() if key != "dataset"}
