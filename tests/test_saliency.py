"""The saliency stage: registered methods and the runner."""

import numpy as np
from helpers import variant

from unseg.io import read_saliency
from unseg.saliency import run_saliency


def test_run_saliency_batches_give_the_same_maps(tiny_store, tmp_path):
    store_path, _ = tiny_store
    run_saliency(store_path, tmp_path / "one", variant("saliency", batch_size=1), progress=False)
    run_saliency(store_path, tmp_path / "all", variant("saliency", batch_size=3), progress=False)
    for name in ("a", "b", "c"):
        one, together = read_saliency(tmp_path / "one", name), read_saliency(tmp_path / "all", name)
        assert one.shape == (64, 64) and np.abs(one - together).max() <= 2 / 255
