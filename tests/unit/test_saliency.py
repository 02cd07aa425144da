"""The saliency stage: registered methods and the runner."""

import numpy as np
import pytest

from unseg.config.registry import register
from unseg.config.schema import validate_config
from unseg.core.geometry import grid_to_image
from unseg.core.io import read_saliency
from unseg.features.store import FeatureStore
from unseg.stages.saliency import run_saliency

from helpers import SCHEMA, variant


def test_run_saliency_batches_give_the_same_maps(tiny_store, tmp_path):
    store_path, _ = tiny_store
    run_saliency(store_path, tmp_path / "one", variant("saliency", batch_size=1), progress=False)
    run_saliency(store_path, tmp_path / "all", variant("saliency", batch_size=3), progress=False)
    for name in ("a", "b", "c"):
        one, together = read_saliency(tmp_path / "one", name), read_saliency(tmp_path / "all", name)
        assert one.shape == (64, 64) and np.abs(one - together).max() <= 2 / 255


@register("saliency", "test_first_channel", schema={"scale": {"type": "number", "default": 1.0}})
def first_channel(batch, *, scale):
    """A throw-away method: the first feature channel, min-max scaled to [0, scale]."""
    maps = []
    for grid in batch.grids:
        channel = grid[..., 0]
        maps.append(scale * (channel - channel.min()) / (channel.max() - channel.min()))
    return maps


def test_a_method_registered_outside_the_project_runs_from_a_config_alone(tiny_store, tmp_path):
    store_path, _ = tiny_store
    config = {"dataset": {"name": "d", "root": "."},
              "saliency": {"first": {"method": "test_first_channel", "features": "f", "scale": 0.5}}}
    validate_config(config, SCHEMA)
    run_saliency(store_path, tmp_path / "saliency", config["saliency"]["first"], progress=False)
    store = FeatureStore(store_path)
    for name in store.names:
        keys = store.facet(name, "keys")[..., 0]
        soft = 0.5 * (keys - keys.min()) / (keys.max() - keys.min())
        expected = np.clip(grid_to_image(soft, store.geometry(name)), 0, 1)
        written = read_saliency(tmp_path / "saliency", name)
        np.testing.assert_allclose(written, np.round(expected * 255) / 255, atol=1e-6)


# --- thresholds, the k-means bipartition, the background prior and the learned foreground head -----------------

def test_otsu_threshold_maximises_the_between_class_variance_of_the_histogram():
    from unseg.stages.saliency import otsu_threshold

    rng = np.random.default_rng(0)
    values = (np.concatenate([rng.integers(20, 90, 300), rng.integers(150, 230, 100)]) + 0.5) / 256  # bin centres
    edges = np.arange(1, 256) / 256

    def between(edge):  # straight from the definition, on the raw values
        below, above = values[values < edge], values[values >= edge]
        if not len(below) or not len(above):
            return -1.0
        return len(below) * len(above) * (below.mean() - above.mean()) ** 2

    assert otsu_threshold(values) == pytest.approx(edges[int(np.argmax([between(e) for e in edges]))])
    assert 90 / 256 <= otsu_threshold(values) < 150 / 256
    assert otsu_threshold(np.full(10, 0.3)) == 0.5  # nothing to split


def test_split_at_moves_the_threshold_to_one_half_and_keeps_the_order():
    from unseg.stages.saliency import split_at

    soft = np.linspace(0, 1, 101, dtype=np.float32)
    moved = split_at(soft, 0.7)
    assert moved[0] == 0 and moved[-1] == pytest.approx(1) and moved[70] == pytest.approx(0.5)
    assert np.all(np.diff(moved) > 0)
    np.testing.assert_array_equal(moved > 0.5, soft > 0.7)


def planted_grid(box, size=(8, 10), dim=16, seed=0, scale=0.1):
    """(h, w, dim) tokens: a background direction everywhere, an object direction inside ``box`` (rows, cols)."""
    rng = np.random.default_rng(seed)
    background, thing = np.eye(dim, dtype=np.float32)[0], np.eye(dim, dtype=np.float32)[1]
    grid = np.tile(background, size + (1,)) + scale * rng.standard_normal(size + (dim,)).astype(np.float32)
    grid[box] += thing - background
    return grid


@pytest.mark.parametrize("method, settings", [("border_background", {}),
                                              ("spectral_bipartition", {"partition": "kmeans",
                                                                        "solver_precision": "float32"}),
                                              ("spectral_bipartition", {"partition": "fiedler_sign",
                                                                        "solver_precision": "float32"})])
def test_planted_objects_are_exactly_the_foreground(method, settings):
    from unseg.config.registry import REGISTRIES
    from unseg.stages.saliency import SaliencyBatch

    boxes = [np.s_[2:6, 3:7], np.s_[0:5, 6:10]]  # the second touches the top and right border
    grids = [planted_grid(box, seed=i) for i, box in enumerate(boxes)]
    maps = REGISTRIES["saliency"].get(method).function(SaliencyBatch(["a", "b"], grids, "cpu"), **settings)
    for soft, box in zip(maps, boxes):
        truth = np.zeros((8, 10), bool)
        truth[box] = True
        np.testing.assert_array_equal(soft > 0.5, truth)
        assert soft.min() >= 0 and soft.max() <= 1


@register("saliency", "test_planted_teacher", schema={})
def planted_teacher(batch):
    """Object tokens (channel 1 high) are foreground, except on image 'c' where the teacher has them backwards."""
    return [np.where(grid[..., 1] > 0.5, name != "c", name == "c").astype(np.float32)
            for name, grid in zip(batch.names, batch.grids)]


@pytest.fixture(scope="module")
def planted_head_store(tiny_store, tmp_path_factory):
    """tiny_store's three images with planted 4-d keys (few noise channels to overfit) on their 6 x 6 grids, the
    object box differs per image."""
    from unseg.features.store import write_derived_store

    base = FeatureStore(tiny_store[0])
    boxes = {"a": np.s_[1:4, 1:4], "b": np.s_[2:5, 2:6], "c": np.s_[0:3, 3:6]}
    path = tmp_path_factory.mktemp("planted") / "keys.zarr"
    write_derived_store(path, base, {"facets": ["keys"], "embed_dim": 4},
                        lambda name: {"keys": planted_grid(boxes[name], size=(6, 6), dim=4, seed=ord(name))},
                        progress=False)
    return path, boxes


def test_the_foreground_head_learns_across_the_dataset_what_one_image_got_wrong(planted_head_store, tmp_path):
    store_path, boxes = planted_head_store
    settings = variant("saliency", method="foreground_head", teacher="test_planted_teacher", iterations=60,
                       batch_images=3, teacher_iterations=40, lr=0.05)
    run_saliency(store_path, tmp_path / "head", settings, progress=False)
    store = FeatureStore(store_path)
    for name, box in boxes.items():
        truth = np.zeros((6, 6), np.float32)
        truth[box] = 1
        expected = grid_to_image(truth, store.geometry(name)) > 0.5
        assert ((read_saliency(tmp_path / "head", name) > 0.5) == expected).mean() > 0.97, name
        teacher = read_saliency(tmp_path / "head" / "extras" / "teacher", name) > 0.5
        assert ((teacher == expected).mean() > 0.97) == (name != "c")  # the kept targets: 'c' is the wrong one
    training = __import__("json").loads((tmp_path / "head" / "extras" / "training.json").read_text())
    assert training["images"] == 3 and 0.6 < training["teacher_agreement"] < 0.75  # right where the teacher was not
    assert [point["target"] for point in training["curve"]][-1] == "self"


def test_a_teacher_setting_it_does_not_take_is_refused_naming_it(planted_head_store, tmp_path):
    settings = variant("saliency", method="foreground_head", teacher="border_background",
                       teacher_settings={"statistc": "mean"}, iterations=2)
    with pytest.raises(ValueError, match=r"teacher_settings: \['statistc'\].*'border_background'"):
        run_saliency(planted_head_store[0], tmp_path / "head", settings, progress=False)
    assert not (tmp_path / "head").exists()


def test_the_otsu_threshold_rule_splits_the_stored_map_at_each_images_otsu_threshold(tiny_store, tmp_path):
    from unseg.stages.saliency import otsu_threshold

    store_path, _ = tiny_store
    run_saliency(store_path, tmp_path / "split", variant("saliency", method="test_first_channel"), progress=False)
    run_saliency(store_path, tmp_path / "otsu", variant("saliency", method="test_first_channel", threshold="otsu"),
                 progress=False)
    for name in ("a", "b", "c"):
        soft, moved = read_saliency(tmp_path / "split", name), read_saliency(tmp_path / "otsu", name)
        threshold = otsu_threshold(np.clip(grid_to_image(_first_channel(store_path, name), FeatureStore(store_path)
                                                         .geometry(name)), 0, 1))
        assert 0.05 < threshold < 0.95
        agree = (moved > 0.5) == (soft > threshold)
        assert agree.mean() > 0.99  # up to the PNG's 1/255 rounding at the threshold


def _first_channel(store_path, name):
    keys = FeatureStore(store_path).facet(name, "keys")[..., 0]
    return (keys - keys.min()) / (keys.max() - keys.min())


# --- the refinement step ------------------------------------------------------------------------------------------
def _blurred_box_maps(tiny_store, folder):
    """Per tiny_store image: its red box (the truth) and a soft map of it 6 px too wide on each side with a blurred,
    50 %-grey rim, as a mask_folder of soft PNGs."""
    from PIL import Image
    from scipy import ndimage

    from unseg.core.io import read_image

    folder.mkdir()
    truths = {}
    for name, path in tiny_store[1].items():
        image = read_image(path)
        truth = (image[..., 0] > 150) & (image[..., 1] < 100)
        grown = ndimage.binary_dilation(truth, iterations=6)
        soft = np.clip(ndimage.gaussian_filter(grown.astype(np.float32), 3.0) * 0.7 + 0.15, 0, 1)
        Image.fromarray(np.round(soft * 255).astype(np.uint8), mode="L").save(folder / f"{name}.png")
        truths[name] = truth
    return truths


def _iou(a, b):
    return (a & b).sum() / (a | b).sum()


def test_the_crf_refinement_snaps_a_blurred_map_to_the_objects_edges(tiny_store, tmp_path):
    pytest.importorskip("pydensecrf")
    from unseg.core.io import read_image
    from unseg.stages.saliency import refine_with_crf

    truths = _blurred_box_maps(tiny_store, tmp_path / "soft")
    settings = variant("saliency", method="mask_folder", path=str(tmp_path / "soft"))
    run_saliency(tiny_store[0], tmp_path / "raw", settings, progress=False)
    run_saliency(tiny_store[0], tmp_path / "crf", {**settings, "refine": "crf"}, progress=False,
                 image_paths=tiny_store[1])
    for name, truth in truths.items():
        raw, refined = read_saliency(tmp_path / "raw", name), read_saliency(tmp_path / "crf", name)
        assert _iou(raw > 0.5, truth) < 0.7  # the map's foreground spills 6 px over the box
        assert _iou(refined > 0.5, truth) > 0.95
        # the stored map is the CRF's foreground marginal of the method's map, to the PNG's rounding
        direct = refine_with_crf(read_image(tiny_store[1][name]), raw)
        assert np.abs(refined - np.round(direct * 255) / 255).max() <= 1 / 255 + 1e-6


def test_the_crf_refinement_needs_every_images_file(tiny_store, tmp_path):
    settings = variant("saliency", method="test_first_channel", refine="crf")
    with pytest.raises(ValueError, match=r"refine: crf reads each image.*\['c'\]"):
        run_saliency(tiny_store[0], tmp_path / "out", settings, progress=False,
                     image_paths={"a": tiny_store[1]["a"], "b": tiny_store[1]["b"]})
    assert not (tmp_path / "out").exists()


def test_a_rerun_reuses_the_maps_of_unchanged_images_and_writes_a_fresh_runs_pngs(tiny_store, tmp_path, capsys):
    from unseg.features.store import FeatureStore, write_derived_store
    from unseg.stages.saliency import run_saliency, saliency_reuse_folder

    store_path, _ = tiny_store
    base = FeatureStore(store_path)
    settings = variant("saliency", method="spectral_bipartition", batch_size=3, solver_precision="float32",
                       threshold="otsu")
    cache = saliency_reuse_folder(tmp_path / "v1.5")
    assert cache == tmp_path / "v1.5.reuse"
    run_saliency(store_path, tmp_path / "first", settings, progress=False, reuse=cache)
    assert "0 image(s) reused" in capsys.readouterr().err and len(list(cache.iterdir())) == 3
    edited = tmp_path / "edited.zarr"
    write_derived_store(edited, base, {"facets": ["keys"]},
                        lambda name: {"keys": base.facet(name, "keys")[::-1] if name == "c"
                                      else base.facet(name, "keys")}, progress=False)
    run_saliency(edited, tmp_path / "rerun", settings, progress=False, reuse=cache)
    assert "saliency: 2 image(s) reused from the last run (same features and settings), 1 computed" in \
        capsys.readouterr().err
    run_saliency(edited, tmp_path / "fresh", settings, progress=False)
    for name in ("a", "b"):  # reused: the very files
        assert (tmp_path / "rerun" / f"{name}.png").read_bytes() == (tmp_path / "fresh" / f"{name}.png").read_bytes()
    # c was solved in a batch of 1, not 3 as in the fresh run: equal within one grey level (float rounding)
    np.testing.assert_allclose(read_saliency(tmp_path / "rerun", "c"), read_saliency(tmp_path / "fresh", "c"),
                               atol=1 / 255 + 1e-6)
    assert (tmp_path / "rerun" / "c.png").read_bytes() != (tmp_path / "first" / "c.png").read_bytes()
    assert sorted(path.name for path in cache.iterdir()) != [] and len(list(cache.iterdir())) == 3
