"""The saliency stage: registered methods and the runner."""

import numpy as np

from unseg.config import validate_config
from unseg.geometry import grid_to_image
from unseg.io import read_saliency
from unseg.registry import register
from unseg.saliency import run_saliency
from unseg.store import FeatureStore

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
