"""The predict stage: instances from the predicted class maps, models rebuilt from their checkpoints."""

import numpy as np
import torch

from unseg.config.registry import register
from unseg.config.schema import validate_config
from unseg.core.io import read_label_png, write_label_png
from unseg.features.store import FeatureStore
from unseg.stages.predict import instances_from_probabilities, load_model, predict
from unseg.stages.train import LinearHead, run_train

from helpers import SCHEMA, variant


def test_instances_from_probabilities_components_and_scores():
    probabilities = np.zeros((3, 6, 6), dtype=np.float32)
    probabilities[0] = 1.0
    for top, left, value in [(0, 0, 0.9), (4, 4, 0.7)]:
        probabilities[:, top : top + 2, left : left + 2] = 0
        probabilities[1, top : top + 2, left : left + 2] = value
        probabilities[0, top : top + 2, left : left + 2] = 1 - value
    instances = instances_from_probabilities(probabilities, min_area=2)
    assert [(m.sum(), c, round(s, 3)) for m, c, s in instances] == [(4, 1, 0.9), (4, 1, 0.7)]


class ConstantLogits(torch.nn.Module):
    """Logits that ignore the tokens: one learned bias per class, (B, D, h, w) → (B, C, h, w)."""

    def __init__(self, num_classes):
        super().__init__()
        self.bias = torch.nn.Parameter(torch.zeros(num_classes))

    def forward(self, tokens):
        return self.bias[None, :, None, None].expand(tokens.shape[0], -1, *tokens.shape[2:])


@register("train", "test_majority_class", build_model=lambda config: ConstantLogits(config["num_classes"]),
          schema={"boost": {"type": "number", "default": 1.0}})
def majority_class(inputs, *, boost):
    """A throw-away trainer: predicts everywhere the most frequent pseudo-label (ignoring 255)."""
    counts = np.zeros(inputs.num_classes, dtype=np.int64)
    for path in inputs.label_paths.values():
        labels = read_label_png(path)
        counts += np.bincount(labels[labels != 255].ravel(), minlength=inputs.num_classes)
    model = ConstantLogits(inputs.num_classes)
    with torch.no_grad():
        model.bias[int(counts.argmax())] = boost
    torch.save({"state_dict": model.state_dict(), "config": {**inputs.config, "num_classes": inputs.num_classes}},
               inputs.out_dir / "model.pt")
    return {"majority": int(counts.argmax())}


def test_a_trainer_registered_outside_the_project_trains_and_predicts_from_a_config_alone(tiny_store, tmp_path):
    store_path, _ = tiny_store
    store = FeatureStore(store_path)
    (tmp_path / "labels").mkdir()
    for name in store.names:
        labels = np.full(store.geometry(name).original_size, 2, dtype=np.uint8)
        labels[:5] = 1
        write_label_png(tmp_path / "labels" / f"{name}.png", labels)
    config = {"dataset": {"name": "d", "root": "."},
              "train": {"majority": {"method": "test_majority_class", "pseudolabels": "k", "features": "f",
                                     "facet": "keys"}}}
    validate_config(config, SCHEMA)
    (tmp_path / "train").mkdir()
    result = run_train(store_path, tmp_path / "labels", store.names, tmp_path / "train", 3, config["train"]["majority"],
                       progress=False)
    assert result == {"majority": 2}
    model, checkpoint_config = load_model(tmp_path / "train" / "model.pt")
    assert isinstance(model, ConstantLogits) and checkpoint_config["method"] == "test_majority_class"
    predict(tmp_path / "train" / "model.pt", store_path, dict.fromkeys(store.names), tmp_path / "predict",
            progress=False)  # token models read no image
    for name in store.names:
        assert (read_label_png(tmp_path / "predict" / f"{name}.png") == 2).all()


def test_the_linear_heads_checkpoint_names_its_method(tiny_store, tmp_path):
    store_path, _ = tiny_store
    store = FeatureStore(store_path)
    (tmp_path / "labels").mkdir()
    for name in store.names:
        write_label_png(tmp_path / "labels" / f"{name}.png", np.ones(store.geometry(name).original_size, np.uint8))
    run_train(store_path, tmp_path / "labels", store.names, tmp_path / "train", 2,
              variant("train", epochs=1, facet="keys"), progress=False)
    model, config = load_model(tmp_path / "train" / "model.pt")
    assert isinstance(model, LinearHead) and config["method"] == "linear_head" and config["facet"] == "keys"
