"""A dataset that changes after a run: an image edited in place, one deleted and one added re-run the index and what
depends on it, and the results equal a fresh run's on the changed folder; the user's folder is only ever read."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from unseg.data.synthetic import generate_synthetic_dataset
from unseg.features.store import FeatureStore

from workflow_helpers import TINY, planned_jobs, snakemake

TARGET = "results/tiny/masks/multik/masks.json"


def folder_digests(folder: Path) -> dict[str, str]:
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in sorted(folder.iterdir())}


def test_an_edited_a_deleted_and_an_added_image_rerun_the_index_and_equal_a_fresh_run(tmp_path):
    generate_synthetic_dataset(tmp_path / "generated", num_images=6, image_size=112, seed=1)
    generated = sorted((tmp_path / "generated" / "JPEGImages").iterdir())
    photos = tmp_path / "photos"  # a user's plain folder of photos
    photos.mkdir()
    for path in generated[:4]:
        shutil.copy(path, photos / path.name)
    config = yaml.safe_load(TINY.read_text())
    config["dataset"] = {"name": "tiny", "root": str(photos)}
    run = tmp_path / "run"
    run.mkdir()
    snakemake(run, config, TARGET)
    assert planned_jobs(snakemake(run, config, TARGET, "-n").stdout) == {}  # up to date

    edited, deleted = photos / generated[0].name, photos / generated[1].name
    Image.fromarray(np.asarray(Image.open(edited))[:, ::-1].copy()).save(edited, quality=95)  # mirrored in place
    deleted.unlink()
    shutil.copy(generated[4], photos / generated[4].name)  # added
    before = folder_digests(photos)
    planned = planned_jobs(snakemake(run, config, TARGET, "-n").stdout)
    assert {"index", "features", "masks"} <= set(planned), planned
    snakemake(run, config, TARGET)
    # the features job computed the edited and the added image only
    assert "features: 2 image(s) reused from the last extraction (same file and settings), 2 to compute (new or " \
           "changed)" in (run / "logs/tiny/features/vits16.log").read_text()
    assert "masks: 2 image(s) reused from the last run (same features and settings), 2 computed" in \
        (run / "logs/tiny/masks/multik.log").read_text()
    index = (run / "results/tiny/index/images.csv").read_text()
    assert generated[1].stem not in index and generated[4].stem in index
    assert hashlib.sha256(edited.read_bytes()).hexdigest() in index

    fresh = tmp_path / "fresh"
    fresh.mkdir()
    snakemake(fresh, config, TARGET)
    assert (fresh / "results/tiny/index/images.csv").read_text() == index
    assert (fresh / TARGET).read_bytes() == (run / TARGET).read_bytes()
    rerun, fresh_store = (FeatureStore(folder / "results/tiny/features/vits16.zarr") for folder in (run, fresh))
    assert rerun.names == fresh_store.names and rerun.order() == fresh_store.order()
    for name in rerun.names:
        assert rerun.image_id(name) == fresh_store.image_id(name)
        for facet in rerun.attrs["facets"]:
            np.testing.assert_array_equal(rerun.facet(name, facet), fresh_store.facet(name, facet))
    assert folder_digests(photos) == before  # only ever read
