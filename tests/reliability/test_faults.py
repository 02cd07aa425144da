"""Faults and determinism: a job killed with SIGKILL at any moment loses nothing, a full disk or GPU is handled,
and the same config gives the same files (issue 17)."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from unseg.core.io import atomic_output, stale_temporaries
from unseg.features.store import FeatureStore

from helpers import training

# The child extracts 16 images in batches of 2 and, so that the parent can kill it mid-way, sleeps a little after
# writing each image (the writer of the real code, wrapped).
CHILD = """
import sys, time
import unseg.features.extract as features
import unseg.features.store as store
real_write = store.write_image
def slow_write(*args):
    real_write(*args)
    time.sleep(float(sys.argv[3]))
store.write_image = slow_write
folder, store = sys.argv[1], sys.argv[2]
names = [f"img{i:02d}" for i in range(16)]
features.extract_features([f"{folder}/{name}.png" for name in names], names, list(range(1, 17)), store,
                          backbone="dino_vits16", weights="random", resolution=48, facets=["keys", "cls"],
                          batch_size=2, workers=0, writers=1, progress=False)
"""


def images(folder: Path) -> Path:
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(16):
        pixels = rng.integers(0, 255, (40 + 4 * (i % 2), 48, 3), dtype=np.uint8)  # two sizes: two batch groups
        Image.fromarray(pixels).save(folder / f"img{i:02d}.png")
    return folder


def extraction(folder: Path, store: Path, pause: float = 0.0) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.Popen([sys.executable, "-c", CHILD, str(folder), str(store), str(pause)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def written_images(store: Path) -> int:
    return sum(len([d for d in leftover.iterdir() if (d / "zarr.json").is_file() and d.is_dir()])
               for leftover in stale_temporaries(store))


def test_a_killed_feature_extraction_resumes_to_the_uninterrupted_store(tmp_path):
    folder = images(tmp_path / "photos")
    whole = tmp_path / "whole" / "f.zarr"
    assert extraction(folder, whole).wait(timeout=300) == 0

    store = tmp_path / "killed" / "f.zarr"
    child = extraction(folder, store, pause=0.15)
    kill_after = random.Random(17).randint(3, 11)  # a seeded "random moment": after 3..11 of 16 images
    deadline = time.monotonic() + 300
    while not (store.parent.is_dir() and written_images(store) >= kill_after) and time.monotonic() < deadline:
        assert child.poll() is None, child.communicate()[1][-2000:]
        time.sleep(0.01)
    child.send_signal(signal.SIGKILL)
    child.wait()
    [leftover] = stale_temporaries(store)
    assert not store.exists() and written_images(store) >= kill_after
    # An unrelated leftover (another extraction's) is removed, not continued.
    foreign = store.with_name(f".{store.name}.tmp-00000000.zarr")
    shutil.copytree(leftover, foreign)
    meta = json.loads((foreign / "zarr.json").read_text())
    meta["attributes"]["resume_key"] = "another extraction"
    (foreign / "zarr.json").write_text(json.dumps(meta))
    os.utime(foreign, (0, 0))  # older than the real leftover

    again = extraction(folder, store)
    _, log = again.communicate(timeout=300)
    assert again.returncode == 0, log[-2000:]
    resumed = int(log.split("resuming a killed run: ")[1].split(" of 16")[0])
    assert resumed >= kill_after - 1 and resumed % 2 == 0  # whole batches kept; a half-written one is redone
    assert stale_temporaries(store) == []  # nothing left beside the finished store

    a, b = FeatureStore(whole), FeatureStore(store)
    assert a.names == b.names and len(a.names) == 16
    assert {k: v for k, v in a.attrs.items()} == {k: v for k, v in b.attrs.items()}
    for name in a.names:
        assert a.geometry(name) == b.geometry(name) and a.image_id(name) == b.image_id(name)
        for facet in ("keys", "cls"):
            assert np.array_equal(a.facet(name, facet), b.facet(name, facet)), (name, facet)


def test_a_rewrite_removes_what_killed_writers_left(tmp_path):
    target = tmp_path / "masks.json"
    for stale in (f".{target.name}.tmp-1234abcd.json", f".{target.name}.tmp-deadbeef.json"):
        (tmp_path / stale).write_text("half")
    (tmp_path / ".other.json.tmp-1234abcd.json").write_text("someone else's")
    with atomic_output(target) as tmp:
        tmp.write_text("[]")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.json.tmp-1234abcd.json", "masks.json"]


def test_out_of_gpu_memory_halves_the_batch_and_says_so(tmp_path, monkeypatch, capsys):
    # An injected OOM on the CPU: the model "fits" one image at a time, and the masks method two grids at a time.
    import torch

    import unseg.features.extract as features
    from unseg.config.registry import register
    from unseg.features.extract import extract_features
    from unseg.stages.masks import run_masks

    folder = images(tmp_path / "photos")
    paths = [str(folder / f"img{i:02d}.png") for i in range(4)]
    names = [f"img{i:02d}" for i in range(4)]
    settings = dict(backbone="dino_vits16", weights="random", resolution=48, facets=["keys"], workers=0,
                    progress=False)
    extract_features(paths, names, [1, 2, 3, 4], tmp_path / "one.zarr", batch_size=1, **settings)
    real_forward = features.forward_facets

    def small_card(model, pixels, grid_size, facets):
        if pixels.shape[0] > 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (injected)")
        return real_forward(model, pixels, grid_size, facets)

    monkeypatch.setattr(features, "forward_facets", small_card)
    extract_features(paths, names, [1, 2, 3, 4], tmp_path / "halved.zarr", batch_size=4, **settings)
    assert "out of GPU memory on a features batch of 2: running it as 1 + 1" in capsys.readouterr().err
    one, halved = FeatureStore(tmp_path / "one.zarr"), FeatureStore(tmp_path / "halved.zarr")
    for name in names:
        assert np.array_equal(one.facet(name, "keys"), halved.facet(name, "keys"))

    @register("masks", "test_two_at_a_time", schema={})
    def two_at_a_time(batch):
        if len(batch.names) > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (injected)")
        from unseg.ops.spectral import GridMask

        return [[GridMask(grid[..., 0] > 0, 0, 0, 0, 1.0)] for grid in batch.grids]

    count = run_masks(tmp_path / "one.zarr", tmp_path / "masks.json",
                      {"method": "test_two_at_a_time", "facet": "keys", "batch_size": 4}, progress=False)
    assert count == 4 and "out of GPU memory on a masks batch of 4: running it as 2 + 2" in capsys.readouterr().err


def test_a_full_disk_is_a_clear_error_and_leaves_no_artifact(tmp_path, monkeypatch):
    import errno

    import pytest

    from unseg.core.io import write_json

    (tmp_path / "masks.json").write_text("[1]")  # the previous, complete artifact
    real_write_text = Path.write_text

    def full_disk(self, *args, **kwargs):
        if ".tmp-" in self.name:
            real_write_text(self, "[half")  # a part made it to disk, then the device filled up
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full_disk)
    with pytest.raises(OSError, match=r"no space left on the device while writing .*masks.json.*removed") as error:
        write_json(tmp_path / "masks.json", [1, 2, 3])
    assert error.value.errno == errno.ENOSPC
    assert sorted(p.name for p in tmp_path.iterdir()) == ["masks.json"]  # no temporary left
    assert (tmp_path / "masks.json").read_text() == "[1]"  # and the old artifact untouched, not half-replaced


TIMINGS = ("created", "wall_time_s")  # provenance facts of a run that differ between runs


def without_created(node):
    """A JSON value without its creation timestamps and wall times."""
    if isinstance(node, dict):
        return {key: without_created(item) for key, item in node.items() if key not in TIMINGS}
    if isinstance(node, list):
        return [without_created(item) for item in node]
    return node


def normalised(path) -> bytes | object:
    """The file's content for comparison: JSON without its creation timestamps, anything else as bytes."""
    if path.suffix != ".json":
        return path.read_bytes()
    return without_created(json.loads(path.read_text()))


def test_a_workflow_killed_mid_way_finishes_with_the_uninterrupted_results(tmp_path):
    # SIGKILL of Snakemake and of every job it runs, at a seeded moment between the feature store and the trained
    # model; after `--unlock`, the re-run (with the local profile's --rerun-incomplete) ends with the same artifacts
    # as an uninterrupted run in the same folder. Every artifact of the two is computed by separate processes, so
    # this is also the determinism check: same config and seeds, byte-identical files (run times aside). (One
    # folder for both: the index holds absolute image paths, and the provenance their digests.)
    import yaml

    from workflow_helpers import SNAKEMAKE, TINY, snakemake

    # The chain up to the first round's model: the kill falls within it, and the stages after it (prediction, round
    # 2, evaluation, audits) would only lengthen both runs.
    config = yaml.safe_load(TINY.read_text())
    target = "results/tiny/train/linear/round-1/model.pt"
    snakemake(tmp_path, config, target)
    shutil.move(tmp_path / "results", tmp_path / "uninterrupted")

    command = [*SNAKEMAKE, "--directory", str(tmp_path), "--configfile", str(tmp_path / "config.yaml"), "--cores", "2",
               target]
    run = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                           env={**os.environ, "PYTHONWARNINGS": "ignore"})
    stages = ["features/vits16.zarr", "saliency/bipart", "masks/multik/masks.json", "proposals/default/proposals.json",
              "pseudolabels/km3"]
    milestone = tmp_path / "results" / "tiny" / stages[random.Random(11).randrange(len(stages))]
    deadline = time.monotonic() + 300
    while not milestone.exists() and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert run.poll() is None, "the run ended before the moment chosen to kill it"
    os.killpg(run.pid, signal.SIGKILL)  # Snakemake and its running job
    run.wait()
    assert not (tmp_path / target).exists()

    snakemake(tmp_path, config, "--unlock")
    snakemake(tmp_path, config, "--rerun-incomplete", target)
    reference = tmp_path / "uninterrupted"
    files = sorted(p.relative_to(reference) for p in reference.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(tmp_path / "results") for p in (tmp_path / "results").rglob("*")
                           if p.is_file())
    assert [str(f) for f in files if normalised(reference / f) != normalised(tmp_path / "results" / f)] == []
    assert not list((tmp_path / "results").rglob(".*.tmp-*"))  # nothing a killed writer left


def test_a_training_killed_with_sigkill_resumes_to_the_uninterrupted_model(tmp_path):
    import torch

    whole = training(tmp_path / "whole")
    assert whole.wait() == 0, whole.stderr.read()
    killed = training(tmp_path / "killed", pause=0.5)
    deadline = time.monotonic() + 120
    while killed.poll() is None and time.monotonic() < deadline:
        last = tmp_path / "killed" / "last.pt"
        if last.exists() and torch.load(last, weights_only=False)["epoch"] >= 2:
            break
        time.sleep(0.05)
    assert killed.poll() is None, "the training ended before the moment chosen to kill it"
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert not (tmp_path / "killed" / "model.pt").exists()
    resumed = training(tmp_path / "killed")
    assert resumed.wait() == 0, resumed.stderr.read()
    assert "resume: continuing" in resumed.stderr.read()
    expected = torch.load(tmp_path / "whole" / "model.pt", weights_only=False)
    got = torch.load(tmp_path / "killed" / "model.pt", weights_only=False)
    assert [row["loss"] for row in got["log"]] == [row["loss"] for row in expected["log"]]
    for key, value in expected["state_dict"].items():
        assert torch.equal(got["state_dict"][key], value), key


def test_out_of_gpu_memory_in_training_accumulates_the_gradient_over_halves(tmp_path, monkeypatch, capsys):
    # An injected OOM on the CPU: the "card" fits two images at a time; the batch of 4 becomes 2 + 2 with the same
    # summed gradient, so the weights end as an unconstrained run's (up to float summation order).
    import torch

    import unseg.stages.train as train

    rng = np.random.default_rng(0)
    items = []
    for _ in range(8):
        labels = rng.integers(0, 3, (4, 5))
        tokens = np.eye(3)[labels].transpose(2, 0, 1).repeat(4, 0) + rng.normal(0, 0.5, (12, 4, 5))
        items.append((torch.tensor(tokens, dtype=torch.float32), torch.from_numpy(labels)))

    class Planted(torch.utils.data.Dataset):
        names = [f"img{i}" for i in range(8)]

        def __len__(self):
            return len(items)

        def __getitem__(self, index):
            return items[index]

    def run(out):
        torch.manual_seed(0)
        model = train.build_head("linear", 12, 3)
        train.fit(model, Planted(), out, config={"method": "linear_head", "num_classes": 3}, epochs=3, lr=0.05,
                  weight_decay=0.0, batch_size=4, seed=0, progress=False)
        return torch.load(out / "model.pt", weights_only=False)

    reference = run(tmp_path / "reference")
    import unseg.training.losses as losses

    real_logits = losses.batch_logits

    def small_card(model, inputs, *args, **kwargs):
        if len(inputs) > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (injected)")
        return real_logits(model, inputs, *args, **kwargs)

    monkeypatch.setattr(losses, "batch_logits", small_card)
    halved = run(tmp_path / "halved")
    assert capsys.readouterr().err.count("out of GPU memory on a training batch of 4: accumulating its gradient "
                                         "over sub-batches of 2") == 1  # said once, then kept for the run
    for key, value in reference["state_dict"].items():
        torch.testing.assert_close(halved["state_dict"][key], value, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose([r["loss"] for r in halved["log"]], [r["loss"] for r in reference["log"]], rtol=1e-5)
