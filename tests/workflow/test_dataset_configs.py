"""Each benchmark's shipped config indexes a fixture tree in that benchmark's layout (the index stage's runner with
the config's validated dataset section, as its rule calls it), and its whole pipeline dry-runs to completion (the
configs' dataset roots are replaced by the fixture's)."""

from __future__ import annotations

import pytest
import yaml

import dataset_fixtures as fixtures
from unseg.config.schema import load_methods, validate_config
from unseg.data.index import read_classes, run_index

from helpers import ROOT, SCHEMA
from workflow_helpers import planned_jobs, snakemake

CONFIGS = {  # config → (fixture layout, dataset settings that point it at the fixture)
    "voc12": ("voc", {}),
    "coco": ("coco", {}),
    "cocostuff27": ("cocostuff", {}),
    "cityscapes": ("cityscapes", {}),
    "lip": ("lip", {}),
    "folder": ("folder", {"images": "photos", "masks": "masks"}),
}
STAGES = ("features", "masks", "saliency", "proposals", "pseudolabels", "train", "predict", "evaluate")


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_a_benchmark_config_indexes_its_layout_and_plans_every_stage(tmp_path, name):
    layout, overrides = CONFIGS[name]
    fixtures.WRITERS[layout](tmp_path / "data")
    config = yaml.safe_load((ROOT / "config" / f"{name}.yaml").read_text())
    config["dataset"].pop("download", None)
    config["dataset"].update(root=str(tmp_path / "data"), **overrides)
    load_methods()
    dataset = validate_config(yaml.safe_load(yaml.safe_dump(config)), SCHEMA)["dataset"]
    out = tmp_path / "index"
    index = run_index(dataset["root"], out / "images.csv", out / "skipped.csv", dataset, resized_dir=out / "resized",
                      truth_dir=out / "ground_truth")
    assert len(index) >= 1 and (index["gt_semantic"] != "").any()
    assert read_classes(out / "ground_truth")["names"]

    planned = planned_jobs(snakemake(tmp_path, config, "-n").stdout)
    assert all(planned.get(stage) for stage in ("index", *STAGES)), f"{name}: planned {planned}"


def test_offline_the_download_rule_says_which_archive_to_put_where(tmp_path):
    config = yaml.safe_load((ROOT / "config" / "voc12.yaml").read_text())
    result = snakemake(tmp_path, config, "results/voc12/index/images.csv", check=False, env={"UNSEG_OFFLINE": "1"})
    assert result.returncode != 0
    log = (tmp_path / "logs" / "download_voc12.log").read_text()
    assert "put VOCtrainval_11-May-2012.tar (1.9 GB, MD5 6cd6e144f989b92b3379bac3b3de84fd" in log
    assert "resources/downloads" in log and not (tmp_path / "resources" / "datasets" / "voc12").exists()
    assert "download_dataset" in result.stdout + result.stderr
