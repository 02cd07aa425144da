"""TransFGU's bootstrapping (section 3.3): the losses of Eq. 12-16 on hand-computed cases, and the
``transfgu_bootstrap`` trainer's teacher-student rounds on a tiny planted store."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import unseg.stages.train as train_module
import unseg.training.engine as engine_module
import unseg.training.rounds as rounds_module
from unseg.core.geometry import grid_to_image, resize_geometry
from unseg.core.io import read_json, read_label_png, write_label_png
from unseg.core.provenance import file_digest
from unseg.features.store import FeatureStore, write_derived_store
from unseg.stages.predict import bootstrap_labels, load_model
from unseg.stages.train import run_train
from unseg.training.bootstrap import (
    alpha_at,
    bootstrapped_scores,
    bootstrapping_loss,
    diversity_loss,
    peer_loss,
    uncertainty_loss,
)
from unseg.training.data import TokenScoreDataset, label_fractions, token_tensor
from unseg.training.heads import build_head

from helpers import killed_after_saves, variant

NAN = float("nan")


def test_peer_loss_equals_the_hand_computed_value():
    # One image, C = 2, a 2 x 2 grid; cell (1, 1) is ignored (NaN scores) and has logits that would dominate.
    logits = torch.tensor([[[2.0, 0.0], [1.0, 5.0]],
                           [[0.0, 1.0], [1.0, -5.0]]])[None]  # (1, 2, 2, 2): class 0 then class 1
    scores = torch.tensor([[[0.9, 0.3], [0.5, NAN]],
                           [[0.2, 0.6], [0.4, NAN]]])[None]
    # M̂ argmax per cell: 0, 1, 0. The permutation [1, 0] swaps the channels: negatives 1, 0, 1.
    alpha = 0.1
    cross_entropy_00_to_0 = math.log(1 + math.exp(-2))  # logits (2, 0), target 0
    cross_entropy_00_to_1 = math.log(1 + math.exp(2))
    cross_entropy_01_to_1 = math.log(1 + math.exp(-1))  # logits (0, 1), target 1
    cross_entropy_01_to_0 = math.log(1 + math.exp(1))
    cross_entropy_10 = math.log(2)  # logits (1, 1), either target
    expected = ((cross_entropy_00_to_0 - alpha * cross_entropy_00_to_1)
                + (cross_entropy_01_to_1 - alpha * cross_entropy_01_to_0)
                + (cross_entropy_10 - alpha * cross_entropy_10)) / 3
    swap = torch.tensor([1, 0])
    assert peer_loss(logits, scores, swap, alpha).item() == pytest.approx(expected, rel=1e-6)
    assert peer_loss(logits, scores, swap, alpha, reduction="sum").item() == pytest.approx(3 * expected, rel=1e-6)
    # The identity permutation makes every negative its positive: (1 - α) · CE.
    plain = (cross_entropy_00_to_0 + cross_entropy_01_to_1 + cross_entropy_10) / 3
    assert peer_loss(logits, scores, torch.tensor([0, 1]), alpha).item() == pytest.approx((1 - alpha) * plain,
                                                                                          rel=1e-6)


def test_uncertainty_loss_is_one_minus_the_mean_gap_of_the_two_largest_probabilities():
    probabilities = torch.tensor([[0.7, 0.2, 0.1], [0.4, 0.4, 0.2],  # gaps 0.5 and 0
                                  [0.1, 0.3, 0.6], [1 / 3, 1 / 3, 1 / 3]])  # gaps 0.3 and 0
    logits = probabilities.log().T.reshape(1, 3, 2, 2)  # softmax(log p) = p
    assert uncertainty_loss(logits).item() == pytest.approx(1 - (0.5 + 0 + 0.3 + 0) / 4, abs=1e-6)
    labelled = torch.tensor([[True, False], [True, False]])[None]  # cells 0 and 2 only
    assert uncertainty_loss(logits, labelled).item() == pytest.approx(1 - (0.5 + 0.3) / 2, abs=1e-6)


def test_diversity_loss_is_one_plus_the_mean_cosine_of_distinct_pairs():
    x, y = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    sixty = torch.tensor([0.5, math.sqrt(3) / 2])
    assert diversity_loss(torch.stack([x, y])).item() == pytest.approx(1.0)  # orthogonal
    assert diversity_loss(torch.stack([x, x])).item() == pytest.approx(2.0)  # identical
    assert diversity_loss(torch.stack([x, sixty])).item() == pytest.approx(1.5)  # cos 60° = 0.5
    # Pairs i < j only (no diagonal): (x, y) 0, (x, x) 1, (y, x) 0 → 1 + 1/3; per image over a batch.
    batch = torch.stack([torch.stack([x, y, x]), torch.stack([x, -x, y])])
    np.testing.assert_allclose(diversity_loss(batch).numpy(), [1 + 1 / 3, 1 + (-1 + 0 + 0) / 3], rtol=1e-6)


def test_the_total_loss_weights_its_terms_as_eq_16():
    torch.manual_seed(0)
    logits, scores = torch.randn(2, 3, 2, 2), torch.rand(2, 3, 2, 2)
    classes = torch.nn.functional.normalize(torch.randn(2, 3, 4), dim=-1)
    permutation = torch.tensor([2, 0, 1])
    terms = bootstrapping_loss(logits, classes, scores, permutation, 0.05, omega_diversity=1.0, omega_uncertainty=0.3)
    peer = peer_loss(logits, scores, permutation, 0.05)
    assert terms["peer_loss"].item() == pytest.approx(peer.item())
    assert terms["diversity_loss"].item() == pytest.approx(diversity_loss(classes).mean().item())
    assert terms["loss"].item() == pytest.approx(peer.item() + terms["diversity_loss"].item()
                                                 + 0.3 * uncertainty_loss(logits).item())


def test_bootstrapped_scores_let_a_confident_teacher_flip_the_label():
    initial = torch.tensor([[0.6, 0.2], [0.4, 0.8]])[:, None]  # (C=2, 1, 2): argmax 0, then 1
    teacher = torch.tensor([[0.0, 0.5], [3.0, 0.0]])[:, None]  # cell 0: sure of class 1; cell 1: leans to 0
    confident = 1 / (1 + math.exp(-3))  # softmax of (0, 3) for class 1
    leaning = 1 / (1 + math.exp(-0.5))  # softmax of (0.5, 0) for class 0
    expected = [[0.5 * (0.6 + 1 - confident), 0.5 * (0.2 + leaning)],
                [0.5 * (0.4 + confident), 0.5 * (0.8 + 1 - leaning)]]
    scores = bootstrapped_scores(initial, teacher)
    np.testing.assert_allclose(scores[:, 0].numpy(), expected, rtol=1e-6)
    assert scores[:, 0].argmax(0).tolist() == [1, 1]  # the confident teacher flips cell 0; cell 1 keeps M's label
    assert torch.equal(bootstrapped_scores(initial), initial)  # no teacher: M


def test_alpha_ramps_as_the_authors_code_and_is_off_without_a_teacher():
    ramp = [alpha_at(epoch, 0.1, 0.03, teacher=True) for epoch in range(10)]
    np.testing.assert_allclose(ramp, [0.03, 0.04, 0.05, 0.06, 0.07, 0.08, 0.09, 0.1, 0.1, 0.1])
    assert alpha_at(3, 0.1, 0.03, teacher=False) == 0.0


def test_label_png_becomes_class_fractions_on_the_token_grid():
    # 4 x 4 px on a 2 x 2 grid: each cell is 2 x 2 px.
    labels = np.array([[1, 1, 255, 255],
                       [1, 0, 255, 1],
                       [2, 2, 255, 1],
                       [2, 2, 1, 0]], dtype=np.uint8)
    scores = label_fractions(labels, resize_geometry((4, 4), 32, 16), 3)
    np.testing.assert_allclose(scores[:, 0, 0], [0.25, 0.75, 0])
    assert np.isnan(scores[:, 0, 1]).all()  # 3 of its 4 pixels are ignored
    np.testing.assert_allclose(scores[:, 1, 0], [0, 0, 1])
    np.testing.assert_allclose(scores[:, 1, 1], [1 / 3, 2 / 3, 0])  # the labelled pixels' shares


# ---------------------------------------------------------------------------------------------- the trainer

TINY = {"width": 16, "layers": 1, "heads": 2, "dropout": 0.0, "lr": 0.01, "batch_size": 2, "facet": "tokens"}


@pytest.fixture(scope="module")
def planted(tiny_store, tmp_path_factory):
    """A store of 8-dim tokens over tiny_store's 3 images (6 x 6 grids) whose channels 0 and 1 mark two planted
    classes, and a pseudo-label folder of noisy soft maps of them (background, class 1, class 2):
    (store, label folder, name → image path, name → planted (6, 6) labels)."""
    base_path, image_paths = tiny_store
    folder = tmp_path_factory.mktemp("bootstrap")
    base = FeatureStore(base_path)
    rng = np.random.default_rng(0)
    planted_labels = {}
    for index, name in enumerate(base.names):
        labels = np.zeros((6, 6), dtype=np.int64)
        labels[1:4, 1 + index % 2 : 4 + index % 2] = 1
        labels[4:6, 2:6] = 2
        planted_labels[name] = labels

    def arrays_of(name):
        grid = rng.normal(0, 0.3, (6, 6, 8)).astype(np.float32)
        grid[..., 0] += planted_labels[name] == 1
        grid[..., 1] += planted_labels[name] == 2
        return {"tokens": grid}

    write_derived_store(folder / "planted.zarr", base, {"facets": ["tokens"], "embed_dim": 8}, arrays_of,
                        progress=False)
    store = FeatureStore(folder / "planted.zarr")
    labels_dir = folder / "pseudolabels"
    (labels_dir / "soft").mkdir(parents=True)
    for name, labels in planted_labels.items():
        scores = 0.7 * np.eye(3)[labels].transpose(2, 0, 1) + rng.uniform(0, 0.4, (3, 6, 6))
        scores = (scores - scores.min()) / (scores.max() - scores.min())
        np.save(labels_dir / "soft" / f"{name}.npy", scores.astype(np.float16))
        size = store.geometry(name).original_size
        pixels = np.kron(scores.argmax(0), np.ones((size[0] // 6 + 1, size[1] // 6 + 1)))[: size[0], : size[1]]
        write_label_png(labels_dir / f"{name}.png", pixels.astype(np.uint8))
    return folder / "planted.zarr", labels_dir, image_paths, planted_labels


def settings(**given):
    return variant("train", method="transfgu_bootstrap", **{**TINY, **given})


def predictions(model_dir, store_path):
    model, config = load_model(model_dir / "model.pt")
    store = FeatureStore(store_path)
    with torch.no_grad():
        return {name: model(token_tensor(store, name, "tokens"))[0] for name in store.names}


def test_the_student_learns_planted_soft_labels(planted, tmp_path):
    store_path, labels_dir, _, planted_labels = planted
    names = sorted(planted_labels)
    run_train(store_path, labels_dir, names, tmp_path, 3, settings(epochs=30), progress=False)
    logits = predictions(tmp_path, store_path)
    agreement = np.mean([(logits[name].argmax(0).numpy() == planted_labels[name]).mean() for name in names])
    assert agreement > 0.9
    header = (tmp_path / "log.csv").read_text().splitlines()[0]
    assert header == "epoch,loss,pseudo_label_accuracy,monitor_miou,peer_loss,diversity_loss,uncertainty_loss"
    checkpoint = torch.load(tmp_path / "model.pt", weights_only=False)
    assert checkpoint["config"]["teacher"] is None and checkpoint["config"]["method"] == "transfgu_bootstrap"


def test_a_label_folder_without_soft_maps_trains_on_its_pngs(planted, tmp_path):
    store_path, labels_dir, _, planted_labels = planted
    names = sorted(planted_labels)
    (tmp_path / "hard").mkdir()
    for name in names:
        labels = read_label_png(labels_dir / f"{name}.png")
        labels[:11] = 255  # the first row of cells (64 px over 6 cells: 10.7 px each) is ignored
        write_label_png(tmp_path / "hard" / f"{name}.png", labels)
    dataset = TokenScoreDataset(store_path, "tokens", {name: tmp_path / "hard" / f"{name}.png" for name in names}, 3)
    _, scores = dataset[0]
    assert scores.shape == (3, 6, 6) and scores[:, 0].isnan().all() and not scores[:, 2:].isnan().any()
    run_train(store_path, tmp_path / "hard", names, tmp_path / "model", 3, settings(epochs=2), progress=False)
    assert (tmp_path / "model" / "model.pt").exists()


def test_round_two_bootstraps_round_ones_labels_with_its_model_and_resets_the_student(planted, tmp_path,
                                                                                       monkeypatch):
    store_path, labels_dir, image_paths, planted_labels = planted
    names = sorted(planted_labels)
    round_settings = settings(epochs=3, seed=7)
    run_train(store_path, labels_dir, names, tmp_path / "round-1", 3, round_settings, progress=False)

    # Round 2's labels: M̂ = 0.5 · (M + softmax(round 1's model)), computed here from the model's logits.
    summary = bootstrap_labels(tmp_path / "round-1" / "model.pt", store_path, labels_dir, image_paths,
                               tmp_path / "round-2" / "labels", progress=False)
    assert summary["num_images"] == 3
    teacher_logits = predictions(tmp_path / "round-1", store_path)
    for name in names:
        initial = np.load(labels_dir / "soft" / f"{name}.npy").astype(np.float32)
        expected = 0.5 * (initial + teacher_logits[name].softmax(0).numpy())
        written = np.load(tmp_path / "round-2" / "labels" / "soft" / f"{name}.npy")
        assert written.dtype == np.float16
        np.testing.assert_allclose(written, expected, atol=1e-3)
        png = read_label_png(tmp_path / "round-2" / "labels" / f"{name}.png")  # Eq. 11: argmax of the upsampled M̂
        upsampled = grid_to_image(expected, FeatureStore(store_path).geometry(name))
        assert png.shape == upsampled.shape[1:] and (png == upsampled.argmax(0)).mean() > 0.99
        # the teacher's own prediction, for the audit: argmax of its upsampled logits, not of M̂
        own = read_label_png(tmp_path / "round-2" / "labels" / "prediction" / f"{name}.png")
        teacher_upsampled = grid_to_image(teacher_logits[name].numpy(), FeatureStore(store_path).geometry(name))
        assert (own == teacher_upsampled.argmax(0)).mean() > 0.99
    teacher = read_json(tmp_path / "round-2" / "labels" / "teacher.json")
    assert teacher["model_digest"] == file_digest(tmp_path / "round-1" / "model.pt")

    # The student of round 2 starts from the seed's fresh initialisation, not from round 1's weights.
    starts = []
    real_fit = train_module.fit

    def recording_fit(model, *args, **kwargs):
        starts.append({key: value.clone() for key, value in model.state_dict().items()})
        return real_fit(model, *args, **kwargs)

    monkeypatch.setattr(train_module, "fit", recording_fit)
    run_train(store_path, tmp_path / "round-2" / "labels", names, tmp_path / "round-2", 3, round_settings,
              progress=False)
    torch.manual_seed(7)
    fresh = build_head("mask_transformer", 8, 3, {key: TINY[key] for key in ("width", "layers", "heads", "dropout")})
    first = torch.load(tmp_path / "round-1" / "model.pt", weights_only=False)["state_dict"]
    for key, value in fresh.state_dict().items():
        torch.testing.assert_close(starts[0][key], value, rtol=0, atol=0)
    assert not torch.allclose(starts[0]["decode.class_embeddings"], first["decode.class_embeddings"])
    second = torch.load(tmp_path / "round-2" / "model.pt", weights_only=False)
    assert second["config"]["teacher"]["model_digest"] == teacher["model_digest"]

    with pytest.raises(ValueError, match="resets the student"):
        run_train(store_path, tmp_path / "round-2" / "labels", names, tmp_path / "other", 3, round_settings,
                  progress=False, initial_model=tmp_path / "round-1" / "model.pt")


def test_a_resumed_round_with_a_teacher_draws_the_same_negatives(planted, tmp_path):
    store_path, labels_dir, image_paths, planted_labels = planted
    names = sorted(planted_labels)
    round_settings = settings(epochs=4, dropout=0.1)
    run_train(store_path, labels_dir, names, tmp_path / "round-1", 3, settings(epochs=1), progress=False)
    labels = tmp_path / "labels"
    bootstrap_labels(tmp_path / "round-1" / "model.pt", store_path, labels_dir, image_paths, labels, progress=False)
    run_train(store_path, labels, names, tmp_path / "whole", 3, round_settings, progress=False)

    with killed_after_saves(engine_module, 2):
        run_train(store_path, labels, names, tmp_path / "resumed", 3, round_settings, progress=False)
    run_train(store_path, labels, names, tmp_path / "resumed", 3, round_settings, progress=False)
    whole = torch.load(tmp_path / "whole" / "model.pt", weights_only=False)
    resumed = torch.load(tmp_path / "resumed" / "model.pt", weights_only=False)
    assert [row["peer_loss"] for row in resumed["log"]] == [row["peer_loss"] for row in whole["log"]]
    for key, value in whole["state_dict"].items():
        torch.testing.assert_close(resumed["state_dict"][key], value)


def test_fine_tuning_is_refused_naming_the_setting(planted, tmp_path):
    store_path, labels_dir, _, planted_labels = planted
    with pytest.raises(ValueError, match=r"train\.<variant>\.finetune_blocks"):
        run_train(store_path, labels_dir, sorted(planted_labels), tmp_path, 3, settings(finetune_blocks=1),
                  progress=False)
    with pytest.raises(ValueError, match=r"train\.boot\.finetune_blocks: .* round 2"):
        rounds_module.check_teacher_student(settings(rounds=2, round_settings={"2": {"finetune_blocks": 1}}), "boot")
    rounds_module.check_teacher_student(variant("train", finetune_blocks=1), "linear")  # other trainers may


def test_the_augmented_crop_keeps_image_and_scores_aligned():
    """TransFGU's augmentation: the right half of the image is red and class 1 in the scores; whatever crop and
    flip a seed draws, the crop's red pixels lie over the cells that RoI-Align gives class 1. A whole-image crop is
    an exact 2 x 2 average of the scores, NaN only where fewer than half the samples were labelled."""
    from unseg.training.data import crop_with_scores

    image = torch.zeros((3, 96, 128), dtype=torch.uint8)
    image[0, :, 64:] = 255
    scores = torch.zeros((2, 6, 8))
    scores[0, :, :4] = 1
    scores[1, :, 4:] = 1
    plain = {"output_scale": 0.5, "hflip": 0.0, "color_jitter": 0.0, "grayscale": 0.0, "blur": 0.0}
    for seed in range(8):
        crop, cropped = crop_with_scores(image, scores, 16, {**plain, "crop_side": [0.4, 0.9], "hflip": 0.5}, seed)
        assert crop.shape[1:] == (48, 64) and cropped.shape == (2, 3, 4)
        red_cells = crop[0].float().reshape(3, 16, 4, 16).mean((1, 3)) > 127
        assert ((cropped[1] > 0.5) == red_cells).float().mean() >= 0.75  # a boundary cell may straddle
    scores[:, 0, 0] = scores[:, 0, 1] = scores[:, 1, 0] = float("nan")  # 3 of the first output cell's 4
    scores[:, 2, 2] = scores[:, 2, 3] = float("nan")  # 2 of 4: kept, from its labelled half
    _, whole = crop_with_scores(image, scores, 16, {**plain, "crop_side": [1.0, 1.0]}, 0)
    np.testing.assert_allclose(whole[1, 1].numpy(), [0, 0, 1, 1])
    assert torch.isnan(whole[:, 0, 0]).all() and torch.isnan(whole).sum() == 2
    np.testing.assert_allclose(whole[:, 1, 1].numpy(), [1, 0])


def test_augmented_training_through_the_frozen_vit_keeps_a_head_that_reads_the_store(tmp_path):
    """augment: the student sees augmented images through the frozen (random) ViT; model.pt is the head alone,
    which predicts from the stored tokens: it has learnt each image's red box (boxes on the 16-px token cells)."""
    from PIL import Image

    from unseg.features.extract import extract_features

    rng = np.random.default_rng(0)
    image_paths, planted = {}, {}
    labels_dir = tmp_path / "labels"
    labels_dir.mkdir()
    for index in range(3):
        name = f"img{index}"
        picture = rng.integers(30, 70, (96, 96, 3)).astype(np.uint8)
        box = np.zeros((96, 96), dtype=np.uint8)
        box[16 * (1 + index % 2) : 64, 32 : 64 + 16 * index] = 1
        picture[box == 1] = (220, 30, 30)
        image_paths[name] = str(tmp_path / f"{name}.png")
        Image.fromarray(picture).save(image_paths[name])
        write_label_png(labels_dir / f"{name}.png", box)
        planted[name] = box[::16, ::16].astype(bool)
    names = sorted(image_paths)
    store_path = tmp_path / "f.zarr"
    extract_features([image_paths[name] for name in names], names, [1, 2, 3], store_path, backbone="dino_vits16",
                     weights="random", resolution=96, facets=["tokens"], progress=False, workers=0)
    trained = run_train(store_path, labels_dir, names, tmp_path / "round", 2,
                        settings(epochs=40, augment=True, output_scale=1.0), progress=False,
                        image_paths=image_paths)
    assert trained["epoch"] == 40
    checkpoint = torch.load(tmp_path / "round" / "model.pt", weights_only=False)
    assert not any(key.startswith(("head.", "backbone.")) for key in checkpoint["state_dict"])
    logits = predictions(tmp_path / "round", store_path)
    agreement = np.mean([(logits[name].argmax(0).numpy() == planted[name]).mean() for name in names])
    assert agreement > 0.9
