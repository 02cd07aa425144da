"""Training a head on pseudo-labels: resumes only the same experiment on the same inputs (issue 11, item 2)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import unseg.training.engine as engine_module
from unseg.core.checkpoints import (
    data_digest,
    load_resume_state,
    resume_key,
    save_resume_state,
)
from unseg.core.io import write_label_png
from unseg.features.extract import extract_features
from unseg.stages.train import LinearHead, run_train

from helpers import variant

NAMES = ["a", "b", "c"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    folder = tmp_path_factory.mktemp("train_store")
    rng = np.random.default_rng(0)
    paths = []
    for index, name in enumerate(NAMES):
        picture = rng.integers(0, 60, (48, 64, 3), dtype=np.uint8)
        picture[12:36, 8 + 8 * index : 32 + 8 * index] = (200, 40, 40)
        paths.append(str(folder / f"{name}.png"))
        Image.fromarray(picture).save(paths[-1])
    extract_features(paths, NAMES, [1, 2, 3], folder / "f.zarr", backbone="dino_vits16", weights="random",
                     resolution=48, facets=["tokens"], progress=False, workers=0)
    return folder / "f.zarr"


def label_maps(folder, shift: int = 0) -> dict[str, str]:
    paths = {}
    for index, name in enumerate(NAMES):
        labels = np.zeros((48, 64), dtype=np.uint8)
        labels[12:36, 8 + 8 * index + shift : 32 + 8 * index + shift] = 1 + index % 2
        labels[0, :] = 255
        paths[name] = str(folder / f"{name}.png")
        write_label_png(paths[name], labels)
    return paths


def weights(out_dir) -> dict[str, torch.Tensor]:
    return torch.load(out_dir / "model.pt", weights_only=False)["state_dict"]


def train(store, labels, out_dir, epochs=4):
    folder = Path(next(iter(labels.values()))).parent
    return run_train(store, folder, NAMES, out_dir, 3, variant("train", epochs=epochs, lr=0.05), progress=False)


def test_changed_labels_after_a_finished_run_train_a_new_model(store, tmp_path, capsys):
    # The case: a finished run (last.pt at the last epoch), then an upstream change re-runs training.
    out = tmp_path / "train"
    (tmp_path / "old").mkdir()
    train(store, label_maps(tmp_path / "old"), out)
    old = weights(out)
    (tmp_path / "new").mkdir()
    new_labels = label_maps(tmp_path / "new", shift=6)
    train(store, new_labels, out)
    assert "training from scratch" in capsys.readouterr().err
    changed = weights(out)
    assert not torch.allclose(changed["decode.bias"], old["decode.bias"])
    fresh = tmp_path / "fresh"
    train(store, new_labels, fresh)  # what a run on the new labels alone gives
    for key, value in weights(fresh).items():
        torch.testing.assert_close(changed[key], value)


def test_an_interrupted_run_resumes_to_the_uninterrupted_result(store, tmp_path, monkeypatch, capsys):
    (tmp_path / "labels").mkdir()
    labels = label_maps(tmp_path / "labels")
    train(store, labels, tmp_path / "whole", epochs=5)

    saves = {"count": 0}
    real_save = engine_module.save_resume_state

    def killed_after_two_epochs(*args, **kwargs):
        real_save(*args, **kwargs)
        saves["count"] += 1
        if saves["count"] == 2:
            raise KeyboardInterrupt  # the job is killed right after its second checkpoint

    monkeypatch.setattr(engine_module, "save_resume_state", killed_after_two_epochs)
    with pytest.raises(KeyboardInterrupt):
        train(store, labels, tmp_path / "resumed", epochs=5)
    assert not (tmp_path / "resumed" / "model.pt").exists()
    monkeypatch.setattr(engine_module, "save_resume_state", real_save)
    capsys.readouterr()
    train(store, labels, tmp_path / "resumed", epochs=5)
    assert "continuing" in capsys.readouterr().err
    resumed = torch.load(tmp_path / "resumed" / "model.pt", weights_only=False)
    whole = torch.load(tmp_path / "whole" / "model.pt", weights_only=False)
    assert [row["epoch"] for row in resumed["log"]] == [1, 2, 3, 4, 5]
    for key, value in whole["state_dict"].items():
        torch.testing.assert_close(resumed["state_dict"][key], value, rtol=1e-5, atol=1e-6)
    assert resumed["log"][-1]["loss"] == pytest.approx(whole["log"][-1]["loss"], rel=1e-5)


def test_resume_key_covers_settings_and_every_input_value(tmp_path):
    tokens = np.arange(12, dtype=np.float32).reshape(3, 4)
    base = data_digest([("a/tokens", tokens)])
    nudged = tokens.copy()
    nudged[2, 3] += 1e-3
    assert data_digest([("a/tokens", nudged)]) != base
    assert data_digest([("b/tokens", tokens)]) != base  # a renamed image
    assert data_digest([("a/tokens", tokens.astype(np.float64))]) != base
    assert data_digest([("a/tokens", torch.from_numpy(tokens))]) == base
    assert resume_key({"lr": 0.01}, base) != resume_key({"lr": 0.02}, base)
    save_resume_state(tmp_path / "last.pt", resume_key({"lr": 0.01}, base), {"epoch": 3})
    assert load_resume_state(tmp_path / "last.pt", resume_key({"lr": 0.01}, base))["epoch"] == 3
    assert load_resume_state(tmp_path / "last.pt", resume_key({"lr": 0.01}, "other")) is None
    (tmp_path / "broken.pt").write_bytes(b"not a checkpoint")
    assert load_resume_state(tmp_path / "broken.pt", "key") is None



def test_linear_head_standardises_then_classifies():
    head = LinearHead(embed_dim=2, num_classes=2)
    head.set_statistics(torch.tensor([1.0, 2.0]), torch.tensor([2.0, 4.0]))
    with torch.no_grad():
        head.decode.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]])[:, :, None, None])
        head.decode.bias.zero_()
    tokens = torch.tensor([3.0, 6.0]).view(1, 2, 1, 1)
    np.testing.assert_allclose(head(tokens).detach().flatten().numpy(), [1.0, 1.0])


def test_a_round_trains_with_the_variants_settings_and_its_own_override():
    from unseg.training.rounds import settings_of_round

    settings = variant("train", epochs=10, rounds=3, round_settings={"3": {"epochs": 2, "lr": 0.5}})
    first, third = settings_of_round(settings, 1), settings_of_round(settings, 3)
    assert first["epochs"] == 10 and third["epochs"] == 2 and third["lr"] == 0.5
    assert first["lr"] == settings["lr"] == variant("train")["lr"]  # the override holds no defaults
    assert not {"rounds", "crf", "round_settings", "init_from_previous"} & set(first)  # rounds 1-2 ignore them
    assert settings_of_round({**settings, "rounds": 4}, 2) == settings_of_round(settings, 2)
    with pytest.raises(ValueError, match="round 4 does not exist"):
        settings_of_round(settings, 4)


def test_a_round_started_from_the_previous_model_resumes_only_from_that_model(store, tmp_path, capsys):
    (tmp_path / "labels").mkdir()
    label_maps(tmp_path / "labels")
    folder = tmp_path / "labels"
    settings = variant("train", epochs=2, lr=0.05)
    run_train(store, folder, NAMES, tmp_path / "round-1", 3, settings, progress=False)
    first = weights(tmp_path / "round-1")
    run_train(store, folder, NAMES, tmp_path / "round-2", 3, settings, progress=False,
              initial_model=tmp_path / "round-1" / "model.pt")
    continued = weights(tmp_path / "round-2")
    run_train(store, folder, NAMES, tmp_path / "scratch", 3, settings, progress=False)
    assert not torch.allclose(continued["decode.weight"], weights(tmp_path / "scratch")["decode.weight"])
    # A new round-1 model (other settings) makes round 2's last.pt stale: it trains again from the new model.
    run_train(store, folder, NAMES, tmp_path / "round-1", 3, {**settings, "lr": 0.01}, progress=False)
    capsys.readouterr()
    run_train(store, folder, NAMES, tmp_path / "round-2", 3, settings, progress=False,
              initial_model=tmp_path / "round-1" / "model.pt")
    assert "training from scratch" in capsys.readouterr().err
    assert not torch.allclose(weights(tmp_path / "round-2")["decode.weight"], continued["decode.weight"])
    assert not torch.allclose(first["decode.weight"], continued["decode.weight"])
    with pytest.raises(ValueError, match="cannot start"):
        run_train(store, folder, NAMES, tmp_path / "other", 2, settings, progress=False,
                  initial_model=tmp_path / "round-1" / "model.pt")


def test_a_monitor_split_is_held_out_and_scored_every_epoch(store, tmp_path):
    (tmp_path / "labels").mkdir()
    labels = label_maps(tmp_path / "labels")
    settings = variant("train", epochs=3, lr=0.05)
    run_train(store, tmp_path / "labels", NAMES, tmp_path / "monitored", 3, settings, progress=False,
              monitor_paths={"c": labels["c"]})  # the pseudo-label map stands in for c's ground truth
    run_train(store, tmp_path / "labels", ["a", "b"], tmp_path / "without_c", 3, settings, progress=False)
    for key, value in weights(tmp_path / "without_c").items():  # c was not trained on
        torch.testing.assert_close(weights(tmp_path / "monitored")[key], value)
    rows = (tmp_path / "monitored" / "log.csv").read_text().splitlines()[1:]
    scores = [float(row.split(",")[3]) for row in rows]
    assert len(scores) == 3 and all(0 <= score <= 100 for score in scores)
    assert (tmp_path / "without_c" / "log.csv").read_text().splitlines()[1].endswith(",")  # no monitor: empty


def test_a_fine_tuned_round_cannot_start_a_frozen_one():
    from unseg.training.rounds import check_round_chain

    frozen_then_tuned = {"rounds": 3, "finetune_blocks": 0, "round_settings": {"2": {"finetune_blocks": 2},
                                                                             "3": {"finetune_blocks": 2}}}
    check_round_chain(frozen_then_tuned, "v")  # round 2 starts from round 1's head, round 3 from round 2
    tuned_then_frozen = {**frozen_then_tuned, "round_settings": {"2": {"finetune_blocks": 2}}}
    with pytest.raises(ValueError, match=r"train\.v\.round_settings: round 3 \(finetune_blocks 0\)"):
        check_round_chain(tuned_then_frozen, "v")
    check_round_chain({**tuned_then_frozen, "init_from_previous": False}, "v")  # round 3 starts afresh
    with pytest.raises(ValueError, match="round 2"):
        check_round_chain({"rounds": 2, "finetune_blocks": 1, "round_settings": {"2": {"finetune_blocks": 2}}}, "v")
