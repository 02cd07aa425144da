"""Fixtures shared by the tests: one tiny workflow run, one tiny feature store."""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from PIL import Image

from unseg.features.extract import extract_features

from workflow_helpers import TINY, snakemake


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """One local run of the tiny config (8 synthetic images): (workdir, config, completed process).

    Session-scoped so the workflow tests and the SLURM test, which compares its results with these, share it.
    Tests only read the workdir or dry-run in it.
    """
    workdir = tmp_path_factory.mktemp("tiny")
    config = yaml.safe_load(TINY.read_text())
    result = snakemake(workdir, config)
    return workdir, config, result



@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory):
    """3 small images (a red box on grey, shifted per image) and their random ViT-S/16 keys: (store, name → path)."""
    folder = tmp_path_factory.mktemp("store")
    rng = np.random.default_rng(0)
    paths = []
    for index in range(3):
        picture = np.full((64, 64, 3), 40, dtype=np.uint8)
        picture[16:48, 16 + 4 * index : 40 + 4 * index] = (220, 30, 30)
        paths.append(str(folder / f"img{index}.png"))
        Image.fromarray(np.clip(picture + rng.integers(0, 20, picture.shape), 0, 255).astype(np.uint8)).save(paths[-1])
    extract_features(paths, ["a", "b", "c"], [1, 2, 3], folder / "f.zarr", backbone="dino_vits16", weights="random",
                     resolution=96, facets=["keys"], progress=False)
    return folder / "f.zarr", dict(zip(["a", "b", "c"], paths))

