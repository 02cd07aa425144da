"""The masks stage: registered methods, the runner, the COCO results it writes, and a method from outside."""

import numpy as np
import pytest
from PIL import Image

from unseg.config.registry import REGISTRIES, register
from unseg.config.schema import ConfigError, validate_config
from unseg.core.io import decode_rle, read_json
from unseg.features.store import FeatureStore
from unseg.ops.spectral import GridMask
from unseg.stages.masks import MaskBatch, deep_spectral, grid_mask_to_image, run_masks
from unseg.stages.saliency import run_saliency

from helpers import SCHEMA, variant


def test_deep_spectral_colour_term_separates_flat_features_by_colour(tmp_path):
    grid = np.ones((12, 12, 8), dtype=np.float32)  # features carry no information
    grid += 1e-3 * np.random.default_rng(1).standard_normal(grid.shape).astype(np.float32)
    image = np.zeros((12, 12, 3), dtype=np.uint8)
    image[3:9, 4:10] = (255, 0, 0)
    Image.fromarray(image).save(tmp_path / "a.png")  # at grid size, so the area down-sampling keeps it
    settings = REGISTRIES["masks"].get("deep_spectral").settings(
        {"k": [2], "min_area_fraction": 0, "num_eigenvectors": 2, "eigen_masks": 1, "color_weight": 10.0})
    [masks] = deep_spectral(MaskBatch(["a"], [grid], {"a": str(tmp_path / "a.png")}, "cpu"), **settings)
    object_mask = image[..., 0] > 0
    assert any(np.array_equal(m.mask, object_mask) and m.eigen_index == 1 for m in masks)
    with pytest.raises(ValueError, match="needs the images"):
        deep_spectral(MaskBatch(["a"], [grid], None, "cpu"), **settings)


@pytest.mark.parametrize("method", ["spectral_multik", "deep_spectral"])
def test_run_masks_writes_coco_results_with_provenance_of_each_mask(tiny_store, tmp_path, method):
    store_path, paths = tiny_store
    extra = {"color_weight": 1.0} if method == "deep_spectral" else {}
    settings = variant("masks", method=method, k=[2, 3], batch_size=2, **extra)
    count = run_masks(store_path, tmp_path / "masks.json", settings, image_paths=paths, progress=False)
    masks = read_json(tmp_path / "masks.json")
    assert count == len(masks) > 0 and {m["image_id"] for m in masks} <= {1, 2, 3}
    assert all(m["segmentation"]["size"] == [64, 64] and m["k"] in (2, 3) for m in masks)
    assert ("eigen_index" in masks[0]) == (method == "deep_spectral")
    if method == "deep_spectral":  # the colour affinity reads the images: without their paths it says so
        with pytest.raises(ValueError, match="needs the images"):
            run_masks(store_path, tmp_path / "x.json", settings, progress=False)
        assert not (tmp_path / "x.json").exists()


def test_stage_runners_report_and_check_the_solver_precision(tiny_store, tmp_path, capsys):
    store_path, _ = tiny_store
    run_masks(store_path, tmp_path / "masks.json", variant("masks", k=[2], solver_precision="float32"), progress=False)
    run_saliency(store_path, tmp_path / "saliency", variant("saliency", solver_precision="float32"), progress=False)
    assert capsys.readouterr().err.count("eigensolver passes in torch.float32 (solver_precision: float32)") == 2
    with pytest.raises(ConfigError, match=r"masks.variant.solver_precision: 'float16' is not one of"):
        variant("masks", solver_precision="float16")


# A throw-away method, registered from this test module: no project file knows it.
@register("masks", "test_brightest_cells", schema={
    "quantile": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.5,
                 "description": "cells whose first channel is above this quantile form the mask"},
})
def brightest_cells(batch, *, quantile):
    """One mask per image: the token cells whose first feature channel lies above the given quantile."""
    masks = []
    for grid in batch.grids:
        mask = grid[..., 0] > np.quantile(grid[..., 0], quantile)
        masks.append([GridMask(mask, k=0, cluster=0, component=0, coherence=float(quantile))])
    return masks


def test_a_method_registered_outside_the_project_runs_from_a_config_alone(tiny_store, tmp_path):
    store_path, _ = tiny_store
    config = {"dataset": {"name": "d", "root": "."},
              "masks": {"bright": {"method": "test_brightest_cells", "features": "f", "quantile": 0.75}}}
    validate_config(config, SCHEMA)
    assert config["masks"]["bright"] == {"method": "test_brightest_cells", "features": "f", "quantile": 0.75,
                                         "facet": "keys", "batch_size": 64}
    run_masks(store_path, tmp_path / "masks.json", config["masks"]["bright"], progress=False)

    store = FeatureStore(store_path)
    masks = read_json(tmp_path / "masks.json")
    assert [m["image_id"] for m in masks] == [store.image_id(name) for name in store.names]
    for name, result in zip(store.names, masks):
        keys = store.facet(name, "keys")[..., 0]
        expected = grid_mask_to_image(keys > np.quantile(keys, 0.75), store.geometry(name))
        np.testing.assert_array_equal(decode_rle(result["segmentation"]), expected)
        assert result["score"] == 0.75 and result["k"] == 0
    # its schema branch validates its settings like a built-in's
    with pytest.raises(ConfigError, match=r"masks.bright.quantile: 2 is greater than the maximum of 1"):
        validate_config({"dataset": {"name": "d", "root": "."},
                         "masks": {"bright": {"method": "test_brightest_cells", "features": "f", "quantile": 2}}},
                        SCHEMA)
    with pytest.raises(ConfigError, match=r"'k' was unexpected"):
        validate_config({"dataset": {"name": "d", "root": "."},
                         "masks": {"bright": {"method": "test_brightest_cells", "features": "f", "k": [2]}}}, SCHEMA)


def test_per_image_work_runs_on_the_jobs_threads_in_order_with_single_threaded_blas(monkeypatch):
    import threading

    import torch
    from threadpoolctl import threadpool_info

    from unseg.core.threads import map_images

    seen = []

    def work(item):
        # (a BLAS threaded by OpenMP, faiss's, counts per calling thread: faiss's k-means sets it for small problems)
        blas = [pool["num_threads"] for pool in threadpool_info()
                if pool["user_api"] == "blas" and pool.get("threading_layer") != "openmp"]
        seen.append((threading.current_thread().name, blas))
        return item * item

    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    assert map_images(work, range(7)) == [i * i for i in range(7)]
    assert all(name.startswith("per-image") and blas and set(blas) == {1} for name, blas in seen), seen
    seen.clear()
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)  # one thread: the caller's own, BLAS untouched
    assert map_images(work, [3]) == [9] and seen[0][0] == threading.current_thread().name


def test_a_rerun_reuses_the_masks_of_unchanged_images_and_writes_a_fresh_runs_json(tiny_store, tmp_path, capsys):
    from unseg.features.store import write_derived_store

    store_path, paths = tiny_store
    base = FeatureStore(store_path)
    settings = variant("masks", method="spectral_multik", k=[2, 3], batch_size=3, solver_precision="float32")
    cache = tmp_path / "multik.reuse"
    run_masks(store_path, tmp_path / "first.json", settings, image_paths=paths, progress=False, reuse=cache)
    assert "0 image(s) reused" in capsys.readouterr().err and len(list(cache.iterdir())) == 3
    # image b's features change (as after an edit of its photo): only b is computed again
    edited = tmp_path / "edited.zarr"
    write_derived_store(edited, base, {"facets": ["keys"]},
                        lambda name: {"keys": base.facet(name, "keys")[:, ::-1] if name == "b"
                                      else base.facet(name, "keys")}, progress=False)
    run_masks(edited, tmp_path / "rerun.json", settings, image_paths=paths, progress=False, reuse=cache)
    assert "masks: 2 image(s) reused from the last run (same features and settings), 1 computed" in \
        capsys.readouterr().err
    run_masks(edited, tmp_path / "fresh.json", settings, image_paths=paths, progress=False)
    assert (tmp_path / "rerun.json").read_bytes() == (tmp_path / "fresh.json").read_bytes()
    assert (tmp_path / "rerun.json").read_bytes() != (tmp_path / "first.json").read_bytes()
    assert len(list(cache.iterdir())) == 3  # b's old rows are gone from the cache
    run_masks(edited, tmp_path / "k4.json", {**settings, "k": [2, 4]}, image_paths=paths, progress=False,
              reuse=cache)
    assert "0 image(s) reused" in capsys.readouterr().err  # other settings reuse nothing
