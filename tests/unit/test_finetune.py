"""The image-based training path: fine-tuning the ViT's last blocks under a head, on augmented images (issue 13)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import unseg.stages.train as train_module
import unseg.training.engine as engine_module
from unseg.core.io import read_label_png, write_label_png
from unseg.features.extract import extract_features
from unseg.features.store import FeatureStore
from unseg.stages.predict import load_model, predict
from unseg.stages.train import model_input, run_train
from unseg.training.data import augment_pair, item_seed
from unseg.training.finetune import ImageSegmenter, build_image_segmenter
from unseg.training.heads import build_head

from helpers import killed_after_saves, variant

NAMES = ["a", "b", "c", "d"]
COLOURS = np.array([[20, 20, 20], [230, 40, 40], [40, 40, 230]], dtype=np.uint8)  # one per label


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Four 48×64 pictures of coloured rectangles, their labels (the colour's index) and a 3×4-token store."""
    folder = tmp_path_factory.mktemp("finetune")
    paths, labels = {}, {}
    for index, name in enumerate(NAMES):
        label_map = np.zeros((48, 64), dtype=np.uint8)
        label_map[8:40, 4 + 6 * index : 28 + 6 * index] = 1
        label_map[20:44, 40:60] = 2
        paths[name] = str(folder / f"{name}.png")
        Image.fromarray(COLOURS[label_map]).save(paths[name])
        labels[name] = str(folder / f"{name}-labels.png")
        write_label_png(labels[name], label_map)
    extract_features(list(paths.values()), NAMES, [1, 2, 3, 4], folder / "f.zarr", backbone="dino_vits16",
                     weights="random", resolution=48, facets=["tokens", "keys"], progress=False, workers=0)
    return folder / "f.zarr", paths, labels


def store_config(store: FeatureStore, blocks: int) -> dict:
    return {**{key: store.attrs[key] for key in ("backbone", "weights", "weights_digest")}, "facet": "tokens",
            "finetune_blocks": blocks}


def test_before_training_the_segmenter_gives_its_head_the_stored_tokens(photos):
    store_path, paths, _ = photos
    store = FeatureStore(store_path)
    config = store_config(store, 2)
    segmenter = build_image_segmenter(config, build_head("linear", 384, 3)).eval()
    for name in NAMES:
        with torch.no_grad():
            grid = segmenter.tokens(model_input(config, store, name, paths[name]))[0].permute(1, 2, 0).numpy()
        # The store holds float16: equal to its rounding.
        np.testing.assert_allclose(grid, store.facet(name, "tokens"), atol=2e-2, rtol=1e-2)


def test_the_checkpoint_holds_the_head_and_the_fine_tuned_blocks_only(photos):
    store_path, paths, _ = photos
    store = FeatureStore(store_path)
    config = store_config(store, 2)
    segmenter = build_image_segmenter(config, build_head("linear", 384, 3))
    trained = [name for name, parameter in segmenter.named_parameters() if parameter.requires_grad]
    assert {name.split(".")[0] for name in trained} == {"head", "backbone"}
    assert {name.split(".")[2] for name in trained if name.startswith("backbone.blocks")} == {"10", "11"}
    state = segmenter.state_dict()
    assert set(state) == set(trained) | {"head.standardise.mean", "head.standardise.std"}
    with torch.no_grad():
        for parameter in segmenter.parameters():
            if parameter.requires_grad:
                parameter.add_(0.05 * torch.randn_like(parameter))
    images = model_input(config, store, "a", paths["a"])
    fresh = build_image_segmenter(config, build_head("linear", 384, 3))
    fresh.load_state_dict(segmenter.state_dict())
    torch.testing.assert_close(fresh.eval()(images), segmenter.eval()(images))
    incomplete = {key: value for key, value in segmenter.state_dict().items() if "blocks.11.mlp" not in key}
    with pytest.raises(RuntimeError, match="blocks.11.mlp"):
        fresh.load_state_dict(incomplete)


def test_a_crop_and_a_flip_move_the_labels_with_the_image():
    label_map = np.zeros((64, 96), dtype=np.int64)
    label_map[10:50, 8:40] = 1
    label_map[30:60, 50:90] = 2
    image = torch.from_numpy(COLOURS[label_map].transpose(2, 0, 1).copy())
    geometry_only = {"crop_scale": [0.3, 1.0], "hflip": 0.5, "color_jitter": 0.0, "grayscale": 0.0, "blur": 0.0}
    changed = 0
    for seed in range(8):
        pixels, labels = augment_pair(image, torch.from_numpy(label_map), geometry_only, item_seed(0, 0, seed))
        assert pixels.shape == image.shape and labels.shape == label_map.shape and labels.dtype == torch.int64
        nearest_colour = np.abs(pixels.numpy().transpose(1, 2, 0)[:, :, None, :].astype(int)
                                - COLOURS[None, None].astype(int)).sum(-1).argmin(-1)
        assert (nearest_colour == labels.numpy()).mean() > 0.94  # edges: bilinear image, nearest labels
        changed += int(not np.array_equal(labels.numpy(), label_map))
    assert changed >= 6  # the draws do crop and flip
    again = augment_pair(image, torch.from_numpy(label_map), geometry_only, item_seed(0, 0, 3))
    torch.testing.assert_close(again[1], augment_pair(image, torch.from_numpy(label_map), geometry_only,
                                                      item_seed(0, 0, 3))[1])
    colour_only = {"crop_scale": [1.0, 1.0], "hflip": 0.0, "color_jitter": 1.0, "grayscale": 0.0, "blur": 1.0}
    pixels, labels = augment_pair(image, torch.from_numpy(label_map), colour_only, 5)
    assert torch.equal(labels, torch.from_numpy(label_map)) and not torch.equal(pixels, image)


def fine_tune(photos, out, epochs=3, initial_model=None, **settings):
    store_path, paths, labels = photos
    label_dir = out.parent / "labels"
    label_dir.mkdir(exist_ok=True)
    for name in NAMES:
        write_label_png(label_dir / f"{name}.png", read_label_png(labels[name]))
    options = {"epochs": epochs, "lr": 0.05, "batch_size": 2, "finetune_blocks": 1, **settings}
    return run_train(store_path, label_dir, NAMES, out, 3, variant("train", **options), progress=False,
                     image_paths=paths, initial_model=initial_model)


NO_AUGMENTATION = {"crop_scale": [1.0, 1.0], "hflip": 0.0, "color_jitter": 0.0, "grayscale": 0.0, "blur": 0.0}


def agreement(prediction_dir, labels) -> float:
    return float(np.mean([(read_label_png(prediction_dir / f"{name}.png") == read_label_png(labels[name])).mean()
                          for name in NAMES]))


def test_fine_tuning_the_last_block_fits_the_labels_better_than_the_frozen_head(photos, tmp_path):
    store_path, paths, labels = photos
    scores = {}
    for blocks in (0, 1):
        out = tmp_path / f"blocks-{blocks}" / "train"
        out.parent.mkdir()
        # Random weights: the block must move a lot to help (no probe, a large block learning rate).
        fine_tune(photos, out, epochs=15, lr=0.01, finetune_blocks=blocks, backbone_lr=1e-3, probe_epochs=0,
                  **NO_AUGMENTATION)
        predict(out / "model.pt", store_path, paths, out.parent / "predict", progress=False)
        scores[blocks] = agreement(out.parent / "predict", labels)
    checkpoint = torch.load(tmp_path / "blocks-1" / "train" / "model.pt", weights_only=False)
    assert checkpoint["config"]["finetune_blocks"] == 1 and checkpoint["config"]["backbone"] == "dino_vits16"
    assert not any(key.startswith("backbone.blocks.10.") for key in checkpoint["state_dict"])
    untouched = build_image_segmenter(checkpoint["config"], build_head("linear", 384, 3)).state_dict()
    moved = max(float((checkpoint["state_dict"][key] - untouched[key]).abs().max())
                for key in untouched if key.startswith("backbone.blocks.11."))
    assert moved > 1e-3  # the fine-tuned block did train
    assert isinstance(load_model(tmp_path / "blocks-1" / "train" / "model.pt")[0], ImageSegmenter)
    # Random weights on a 3×4 token grid: the frozen head's tokens limit it (measured 78.5 % vs 84.1 %).
    assert scores[1] > scores[0] + 0.03, scores


def test_fine_tuning_needs_the_output_tokens(photos, tmp_path):
    with pytest.raises(ValueError, match="facet: tokens"):
        fine_tune(photos, tmp_path / "train", facet="keys")


def test_a_resumed_fine_tuning_ends_as_the_uninterrupted_one(photos, tmp_path):
    whole_dir = tmp_path / "whole" / "train"
    whole_dir.parent.mkdir()
    fine_tune(photos, whole_dir, probe_epochs=2)
    whole = torch.load(whole_dir / "model.pt", weights_only=False)
    resumed_dir = tmp_path / "resumed" / "train"
    resumed_dir.parent.mkdir()
    with killed_after_saves(engine_module, 4):  # the probe's 2 epochs, then 2 of fine-tuning
        fine_tune(photos, resumed_dir, probe_epochs=2)
    fine_tune(photos, resumed_dir, probe_epochs=2)
    resumed = torch.load(resumed_dir / "model.pt", weights_only=False)
    assert [row["loss"] for row in resumed["log"]] == [row["loss"] for row in whole["log"]]
    for key, value in whole["state_dict"].items():
        torch.testing.assert_close(resumed["state_dict"][key], value)


def test_a_frozen_round_starts_a_fine_tuning_round_with_its_head_but_not_the_reverse(photos, tmp_path, monkeypatch):
    frozen = tmp_path / "round-1" / "train"
    frozen.parent.mkdir()
    fine_tune(photos, frozen, epochs=2, finetune_blocks=0)
    head = torch.load(frozen / "model.pt", weights_only=False)["state_dict"]
    started = {}
    real_fit = train_module.fit

    def recording_fit(model, *args, **kwargs):
        started.update({key: value.clone() for key, value in model.state_dict().items()})
        return real_fit(model, *args, **kwargs)

    monkeypatch.setattr(train_module, "fit", recording_fit)
    tuned = tmp_path / "round-2" / "train"
    tuned.parent.mkdir()
    fine_tune(photos, tuned, epochs=1, initial_model=frozen / "model.pt")
    for key, value in head.items():
        torch.testing.assert_close(started[f"head.{key}"], value)
    back = tmp_path / "round-3" / "train"
    back.parent.mkdir()
    with pytest.raises(ValueError, match="fine-tuning 1 blocks, cannot start"):
        fine_tune(photos, back, epochs=1, finetune_blocks=0, initial_model=tuned / "model.pt")


def test_fine_tuning_first_probes_the_head_on_the_stored_tokens(photos, tmp_path, monkeypatch):
    started = {}
    real_fit = train_module.fit

    def recording_fit(model, *args, **kwargs):
        if isinstance(model, ImageSegmenter):
            started.update({key: value.clone() for key, value in model.head.state_dict().items()})
        return real_fit(model, *args, **kwargs)

    monkeypatch.setattr(train_module, "fit", recording_fit)
    (tmp_path / "round").mkdir()
    fine_tune(photos, tmp_path / "round" / "train", epochs=1, probe_epochs=3)
    probe = torch.load(tmp_path / "round" / "train" / "probe" / "model.pt", weights_only=False)
    assert probe["config"]["finetune_blocks"] == 0 and len(probe["log"]) == 3
    for key, value in probe["state_dict"].items():
        torch.testing.assert_close(started[key], value)  # fine-tuning starts from the probed head
