"""The user's files are sacred: a user's config defines the run, and no job writes outside the workflow's folders.

Issue 11, item 1: `--configfile` used to be merged into the demo config, whose `dataset.generate` made Snakemake
delete the user's dataset folder and write synthetic scenes into it.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from unseg.config.variants import VariantError, dataset_root, is_owned_path

from workflow_helpers import ROOT, SNAKEMAKE

SHARED_VOC_IMAGES = ROOT.parent / "shared" / "data" / "voc2012-val-crops" / "JPEGImages"
CONFIGS = sorted([*(ROOT / "config").glob("*.yaml"), *(ROOT / "tests" / "configs").glob("*.yaml")])


def folder_digests(folder: Path) -> dict[str, str]:
    """Relative path → sha256 of every file under ``folder``, plus the listing itself (so added files count)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def photo_folder(folder: Path) -> Path:
    """3 photos (VOC crops from ../shared when present, else JPEGs made here), dated before the workflow's code."""
    folder.mkdir()
    photos = sorted(SHARED_VOC_IMAGES.glob("*.jpg"))[:3] if SHARED_VOC_IMAGES.is_dir() else []
    for photo in photos:
        shutil.copy(photo, folder / photo.name)
    rng = np.random.default_rng(0)
    for i in range(3 - len(photos)):
        Image.fromarray(rng.integers(0, 255, (64, 80, 3), dtype=np.uint8)).save(folder / f"photo{i}.jpg")
    old = 1693353600  # 2023-08-30, as `touch -d 2023-08-30`: older than any code of the workflow
    os.utime(folder, (old, old))
    return folder


def run(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*SNAKEMAKE, "--directory", str(workdir), *args], capture_output=True, text=True,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})


def test_configfile_leaves_the_users_dataset_untouched(tmp_path):
    # The reproduction. The demo config sits where the old Snakefile looked for it (config/config.yaml in
    # the working directory), so this test fails on a Snakefile that merges a user's config into the demo.
    workdir = tmp_path / "work"
    (workdir / "config").mkdir(parents=True)
    shutil.copy(ROOT / "config" / "config.yaml", workdir / "config" / "config.yaml")
    scratch = photo_folder(tmp_path / "scratch")
    before = folder_digests(scratch)
    user_config = tmp_path / "scratch.yaml"
    user_config.write_text(f"dataset: {{name: scratch, root: {scratch}}}\n")

    result = run(workdir, "--cores", "2", "results/scratch/index/images.csv", "--configfile", str(user_config))

    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert folder_digests(scratch) == before and len(before) == 3
    assert "generate_synthetic_dataset" not in result.stdout + result.stderr
    index = (workdir / "results/scratch/index/images.csv").read_text().splitlines()
    assert len(index) == 4 and all(str(scratch) in line for line in index[1:])


def test_a_users_config_alone_defines_the_run(tmp_path):
    # Nothing of the demo (its synthetic dataset, its km3/linear/val variants) leaks into a user's run: a config
    # with a dataset alone plans the index and nothing else.
    scratch = photo_folder(tmp_path / "photos")
    user_config = tmp_path / "photos.yaml"
    user_config.write_text(f"dataset: {{name: photos, root: {scratch}}}\n")
    result = run(ROOT, "-n", "--cores", "2", "--configfile", str(user_config))
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = set(re.findall(r"^(?:local)?rule (\w+):", result.stdout, re.M))
    assert jobs == {"index", "all"}
    for demo_name in ("synthetic", "km3", "linear", "dinov2-s14"):
        assert demo_name not in result.stdout


def test_without_a_configfile_the_demo_runs(tmp_path):
    result = run(tmp_path, "-n", "--cores", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "output: resources/datasets/synthetic" in result.stdout
    assert "results/synthetic/evaluate/val/metrics.json" in result.stdout


@pytest.mark.parametrize("config", CONFIGS, ids=[str(c.relative_to(ROOT)) for c in CONFIGS])
def test_no_job_writes_outside_the_workflows_folders(tmp_path, config):
    result = run(tmp_path, "-n", "--cores", "2", "--configfile", str(config))
    assert result.returncode == 0, result.stderr[-3000:]
    written = [path.strip() for line in re.findall(r"^\s+(?:output|log): (.+)$", result.stdout, re.M)
               for path in line.split(",")]
    assert written and "results/" in " ".join(written)
    outside = [path for path in written if not is_owned_path(path)]
    assert outside == []


def test_owned_paths():
    assert is_owned_path("results/x/index/images.csv") and is_owned_path("resources/datasets/tiny")
    assert is_owned_path("logs/x.log")
    for path in ("results", "data/photos", "/home/me/results/x", "results/../photos", "resultsx/y", "../logs/a"):
        assert not is_owned_path(path), path


def test_dataset_root_is_the_users_folder_or_a_generated_one():
    assert dataset_root({"name": "mine", "root": "/data/photos"}) == "/data/photos"
    assert dataset_root({"name": "demo", "generate": {"kind": "synthetic"}}) == "resources/datasets/demo"
    assert dataset_root({"name": "voc", "download": "voc2012", "format": "voc"}) == "resources/datasets/voc"
    with pytest.raises(VariantError, match="root and generate were given"):
        dataset_root({"name": "x", "root": "/data/photos", "generate": {"kind": "synthetic"}})
    with pytest.raises(VariantError, match="root and download were given"):
        dataset_root({"name": "x", "root": "/data/photos", "download": "voc2012", "format": "voc"})
    with pytest.raises(VariantError, match="none was given"):
        dataset_root({"name": "x"})
    with pytest.raises(VariantError, match="coco2017-val unpacks the 'coco' layout; set dataset.format: coco"):
        dataset_root({"name": "x", "download": "coco2017-val"})
