"""The fused path (unseg.features.fused): one job per shard extracts the features and computes masks and saliency on
the way;
joined, its artifacts are byte for byte those of the unfused stages."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from unseg.config.schema import validate_config
from unseg.config.variants import fused_reader, fused_variants
from unseg.data.index import build_index, image_paths, write_index
from unseg.data.synthetic import generate_synthetic_dataset
from unseg.features.extract import assemble_shards, run_features
from unseg.features.fused import (
    FUSED_FEATURES,
    join_fused_masks,
    join_fused_saliency,
    run_fused_shard,
)
from unseg.features.store import FeatureStore
from unseg.ops.crf import crf_available
from unseg.stages.masks import run_masks
from unseg.stages.saliency import run_saliency

SCHEMA = Path(__file__).resolve().parents[2] / "workflow/schemas/config.schema.yaml"


def _config(fused: bool, shards: int, **features):
    return validate_config({
        "dataset": {"name": "tiny", "root": "unused"},
        "features": {"vits16": {"backbone": "dino_vits16", "weights": "random", "resolution": 64, "batch_size": 3,
                                "facets": ["keys", "tokens"], "shards": shards, "fused": fused, "workers": 0,
                                **features}},
        "masks": {"multik": {"features": "vits16", "k": [2, 3], "min_area_fraction": 0.04, "batch_size": 4},
                  # reads the pixels too (the colour affinity), as the CRF-refined saliency below does
                  "deep": {"method": "deep_spectral", "features": "vits16", "facet": "tokens", "batch_size": 2,
                           "color_weight": 0.5}},
        "saliency": {"bipart": {"features": "vits16", "batch_size": 5},
                     "border": {"method": "border_background", "features": "vits16", "threshold": "otsu",
                                **({"refine": "crf"} if crf_available() else {})},
                     "head": {"method": "foreground_head", "features": "vits16", "iterations": 2}},
    }, SCHEMA)


@pytest.fixture(scope="module")
def index_csv(tmp_path_factory):
    root = tmp_path_factory.mktemp("fused")
    # two image sizes: the extraction batches by size, so its order is not the names' order
    generate_synthetic_dataset(root / "a", num_images=5, image_size=64, seed=1)
    generate_synthetic_dataset(root / "b", num_images=4, image_size=80, seed=2)
    frames = [build_index(root / part) for part in ("a", "b")]
    frames[1]["name"] = "b_" + frames[1]["name"]
    frames[1]["image_id"] += 100
    index = pd.concat(frames, ignore_index=True)
    write_index(index, root / "images.csv")
    return root / "images.csv"


def test_only_masks_and_per_image_saliency_variants_of_a_fused_features_variant_are_fused():
    config = _config(True, 2)
    variants = fused_variants(config, "vits16")
    assert sorted(variants["masks"]) == ["deep", "multik"]
    assert sorted(variants["saliency"]) == ["bipart", "border"]  # the head trains across the dataset: not fused
    assert fused_reader(config, "saliency", "head") is None and fused_reader(config, "masks", "deep") == "vits16"
    assert fused_variants(_config(False, 2), "vits16") == {"masks": {}, "saliency": {}}


@pytest.mark.parametrize("shards,quantize", [(2, None), (1, "uint8")])
def test_fused_shards_join_into_the_unfused_stages_artifacts_byte_for_byte(index_csv, tmp_path, shards, quantize):
    config = _config(True, shards, **({"quantize": quantize} if quantize else {}))
    settings = config["features"]["vits16"]
    variants = fused_variants(config, "vits16")
    # the fused path: one folder per shard, joined as the workflow's rules join them
    shard_dirs = [run_fused_shard(index_csv, tmp_path / f"{shard}.fused", settings, variants, shard=shard)
                  for shard in range(shards)]
    assemble_shards([folder / FUSED_FEATURES for folder in shard_dirs], tmp_path / "fused.zarr")
    for name in variants["masks"]:
        join_fused_masks(shard_dirs, name, tmp_path / f"fused_{name}.json")
    for name in variants["saliency"]:
        join_fused_saliency(shard_dirs, name, tmp_path / f"fused_{name}")
    # the unfused path: the same shards' stores joined, then the masks and saliency stages reading the store
    stores = [run_features(index_csv, tmp_path / f"{shard}.zarr", settings, shard=shard) for shard in range(shards)]
    assemble_shards(stores, tmp_path / "plain.zarr")
    fused_store, plain_store = FeatureStore(tmp_path / "fused.zarr"), FeatureStore(tmp_path / "plain.zarr")
    assert fused_store.names == plain_store.names and len(plain_store.names) == 9
    assert fused_store.order() == plain_store.order() and len(plain_store.order()) == shards
    assert plain_store.order()[0][:5] != sorted(plain_store.names)[:5] or shards == 1  # batches follow extraction
    for name in plain_store.names:
        np.testing.assert_array_equal(fused_store.facet(name, "keys"), plain_store.facet(name, "keys"))
    for name, masks_settings in variants["masks"].items():
        run_masks(tmp_path / "plain.zarr", tmp_path / f"plain_{name}.json", masks_settings, progress=False,
                  image_paths=image_paths(index_csv))
        fused_json = (tmp_path / f"fused_{name}.json").read_bytes()
        assert fused_json == (tmp_path / f"plain_{name}.json").read_bytes(), name
        assert len(json.loads(fused_json)) > 9
    for name, saliency_settings in variants["saliency"].items():
        run_saliency(tmp_path / "plain.zarr", tmp_path / f"plain_{name}", saliency_settings, progress=False,
                     image_paths=image_paths(index_csv))
        pngs = sorted(path.name for path in (tmp_path / f"plain_{name}").glob("*.png"))
        assert pngs == sorted(path.name for path in (tmp_path / f"fused_{name}").glob("*.png")) and len(pngs) == 9
        for png in pngs:
            assert (tmp_path / f"fused_{name}" / png).read_bytes() == (tmp_path / f"plain_{name}" / png).read_bytes()


def test_a_fused_shard_that_fails_leaves_no_folder_and_a_missing_variant_is_named(index_csv, tmp_path,
                                                                                   monkeypatch):
    config = _config(True, 1)
    variants = fused_variants(config, "vits16")

    def failing_method(*args, **kwargs):  # a masks method failing mid-run, on the consumer thread
        raise RuntimeError("the method failed")

    with monkeypatch.context() as patch:
        patch.setattr("unseg.features.fused.batch_mask_results", failing_method)
        with pytest.raises(RuntimeError, match="the method failed"):
            run_fused_shard(index_csv, tmp_path / "0.fused", config["features"]["vits16"], variants)
    assert not (tmp_path / "0.fused").exists() and not list(tmp_path.iterdir())
    broken = {"masks": {"multik": {**variants["masks"]["multik"], "facet": "keys@40"}}, "saliency": {}}
    with pytest.raises(ValueError, match="block 40 is out of range"):
        run_fused_shard(index_csv, tmp_path / "0.fused", config["features"]["vits16"], broken)
    assert not (tmp_path / "0.fused").exists()
    folder = run_fused_shard(index_csv, tmp_path / "0.fused", config["features"]["vits16"],
                             {"masks": {}, "saliency": {}})
    with pytest.raises(FileNotFoundError, match="variant 'multik'"):
        join_fused_masks([folder], "multik", tmp_path / "masks.json")
    assert not Path(tmp_path / "masks.json").exists()


def test_with_facets_consumers_a_fused_variant_stores_only_what_later_stages_read(index_csv, tmp_path):
    from unseg.config.variants import resolve_facets

    config = _config(True, 1, facets="consumers")
    resolve_facets(config)
    # the fused masks and saliency read keys and tokens in the job; only the trained head reads the store (keys)
    assert config["features"]["vits16"]["facets"] == ["keys"]
    unfused = _config(False, 1, facets="consumers")
    resolve_facets(unfused)
    assert unfused["features"]["vits16"]["facets"] == ["keys", "tokens"]
    variants = fused_variants(config, "vits16")
    folder = run_fused_shard(index_csv, tmp_path / "0.fused", config["features"]["vits16"], variants)
    store = FeatureStore(assemble_shards([folder / FUSED_FEATURES], tmp_path / "fused.zarr"))
    assert store.attrs["facets"] == ["keys"]
    assert not any((tmp_path / "fused.zarr").rglob("tokens")) and any((tmp_path / "fused.zarr").rglob("keys"))
    plain = run_features(index_csv, tmp_path / "plain.zarr", unfused["features"]["vits16"], shard=0)
    assemble_shards([plain], tmp_path / "joined.zarr")
    for name in ("multik", "deep"):
        join_fused_masks([folder], name, tmp_path / f"fused_{name}.json")
        run_masks(tmp_path / "joined.zarr", tmp_path / f"plain_{name}.json", unfused["masks"][name], progress=False,
                  image_paths=image_paths(index_csv))
        assert (tmp_path / f"fused_{name}.json").read_bytes() == (tmp_path / f"plain_{name}.json").read_bytes()


def test_a_slow_consumer_holds_the_extraction_back_instead_of_piling_up_batches(tmp_path, monkeypatch):
    """The fused path's memory stays flat: a batch keeps its writer slot until consumed, so at most 2 x writers
    batches are ever written ahead of the masks."""
    import threading
    import time

    import unseg.features.store as store_module
    from unseg.features.extract import extract_features

    paths = [str(tmp_path / f"{i}.png") for i in range(12)]
    for path in paths:
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(path)
    lock, counts, ahead = threading.Lock(), {"written": 0, "consumed": 0}, []
    real_write = store_module.write_image

    def counting_write(*args, **kwargs):
        real_write(*args, **kwargs)
        with lock:
            counts["written"] += 1
            ahead.append(counts["written"] - counts["consumed"])

    def slow_consumer(items, images):
        time.sleep(0.05)
        with lock:
            counts["consumed"] += len(items)

    monkeypatch.setattr(store_module, "write_image", counting_write)
    extract_features(paths, [f"i{i}" for i in range(12)], list(range(1, 13)), tmp_path / "s.zarr",
                     backbone="dino_vits16", weights="random", resolution=32, facets=["keys"], batch_size=1,
                     workers=0, writers=1, progress=False, on_written=slow_consumer)
    assert counts == {"written": 12, "consumed": 12}
    assert max(ahead) <= 2, ahead  # writers=1: two slots, each one batch of one image
