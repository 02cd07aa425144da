"""The training engine (unseg.training.engine) on a tiny regression task: resume, out-of-memory halving, log.csv."""

from __future__ import annotations

import csv

import pytest
import torch

import unseg.training.engine as engine
from unseg.training.engine import TrainingTask, run_training

from helpers import killed_after_saves


class Regression(TrainingTask):
    """8 fixed (4,) → (1,) samples, shuffled by ``generator`` into batches of 3, a dropout model (the global RNG
    matters), mean squared error summed over sub-batches; optionally out of memory once on a step of > 2 items."""

    log_fields = ("epoch", "loss", "items")

    def __init__(self, model, generator, oom_above: int | None = None, splits: bool = True):
        data = torch.Generator().manual_seed(1)
        self.inputs, self.targets = torch.randn(8, 4, generator=data), torch.randn(8, 1, generator=data)
        self.model, self.generator, self.oom_above, self.splits = model, generator, oom_above, splits
        self.total, self.items, self.steps_seen = 0.0, 0, 0

    def batches(self, epoch):
        self.total, self.items = 0.0, 0
        order = torch.randperm(8, generator=self.generator).tolist()
        return [order[start : start + 3] for start in range(0, 8, 3)]

    def batch_items(self, batch):
        return len(batch) if self.splits else None

    def step(self, batch, micro_batch):
        size = micro_batch or len(batch)
        if self.oom_above is not None and size > self.oom_above:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (injected)")
        loss_total = 0.0
        for start in range(0, len(batch), size):
            part = batch[start : start + size]
            loss = ((self.model(self.inputs[part]) - self.targets[part]) ** 2).sum() / len(batch)
            loss.backward()
            loss_total += float(loss.detach())
        self.total += loss_total * len(batch)
        self.items += len(batch)
        return {"loss": loss_total}

    def end_epoch(self, epoch):
        return {"epoch": epoch + 1, "loss": self.total / self.items, "items": self.items}


def run(out, epochs=5, lr=0.05, oom_above=None, splits=True):
    """A fresh model (seed 0) trained by the engine into ``out``; returns the model checkpoint."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Dropout(0.3), torch.nn.Linear(8, 1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * 3)
    generator = torch.Generator().manual_seed(0)
    task = Regression(model, generator, oom_above, splits)
    run_training(task, model, optimizer, out, epochs=epochs, config={"kind": "tiny"},
                 settings={"epochs": epochs, "lr": lr}, inputs_digest="data-v1", scheduler=scheduler,
                 generator=generator, seed=0, progress=False)
    return torch.load(out / "model.pt", weights_only=False)


def test_a_resumed_run_ends_bit_for_bit_as_the_uninterrupted_one(tmp_path, capsys):
    whole = run(tmp_path / "whole")
    with killed_after_saves(engine, 2):
        run(tmp_path / "resumed")
    assert not (tmp_path / "resumed" / "model.pt").exists()
    assert torch.load(tmp_path / "resumed" / "last.pt", weights_only=False)["epoch"] == 2
    capsys.readouterr()
    resumed = run(tmp_path / "resumed")
    assert "resume: continuing" in capsys.readouterr().err
    assert resumed["log"] == whole["log"]
    for key, value in whole["state_dict"].items():
        assert torch.equal(resumed["state_dict"][key], value), key


def test_a_last_checkpoint_of_other_settings_is_not_continued(tmp_path, capsys):
    with killed_after_saves(engine, 2):
        run(tmp_path / "changed", lr=0.05)
    capsys.readouterr()
    changed = run(tmp_path / "changed", lr=0.01)
    assert "other settings or inputs; training from scratch" in capsys.readouterr().err
    fresh = run(tmp_path / "fresh", lr=0.01)
    assert [row["epoch"] for row in changed["log"]] == [1, 2, 3, 4, 5]
    for key, value in fresh["state_dict"].items():
        assert torch.equal(changed["state_dict"][key], value), key


def test_out_of_memory_halves_the_step_into_sub_batches_with_the_same_gradient(tmp_path, capsys):
    reference = run(tmp_path / "reference")
    capsys.readouterr()
    halved = run(tmp_path / "halved", oom_above=1)  # the "card" fits one item: 3 -> 1 + 1 + 1
    err = capsys.readouterr().err
    assert "out of GPU memory on a training batch of 3: accumulating its gradient over sub-batches of 1" in err
    assert err.count("out of GPU memory") == 1  # then kept for the rest of the run
    for key, value in reference["state_dict"].items():
        torch.testing.assert_close(halved["state_dict"][key], value, rtol=1e-5, atol=1e-6)
    assert [row["loss"] for row in halved["log"]] == pytest.approx([row["loss"] for row in reference["log"]],
                                                                    rel=1e-5)


def test_a_step_that_does_not_split_raises_its_out_of_memory_error(tmp_path):
    with pytest.raises(torch.cuda.OutOfMemoryError):
        run(tmp_path / "coupled", oom_above=1, splits=False)


def test_log_csv_has_the_tasks_columns_and_one_row_per_epoch(tmp_path):
    checkpoint = run(tmp_path / "log", epochs=3)
    with open(tmp_path / "log" / "log.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["epoch", "loss", "items"]
    assert [int(row["epoch"]) for row in rows] == [1, 2, 3] and {row["items"] for row in rows} == {"8"}
    assert [float(row["loss"]) for row in rows] == [row["loss"] for row in checkpoint["log"]]
    assert checkpoint["config"] == {"kind": "tiny"}
