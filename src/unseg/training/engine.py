"""One training engine for every trainer: resume, seeding, out-of-memory halving, the learning-rate schedule,
``log.csv``, the progress bar and the checkpoints.

A trainer states what is its own in a :class:`TrainingTask` (the batches of an epoch, one optimiser step's forward
and backward, the epoch's log row, the state a resumed run must restore) and hands it to :func:`run_training` with
its model and optimiser. The engine then, for each epoch (the unit of logging and checkpointing: an epoch of the
data, or a block of iterations for a trainer that counts iterations):

* draws the epoch's batches (:meth:`TrainingTask.batches`), and for each: ``optimizer.zero_grad()``, the task's
  :meth:`~TrainingTask.step`, ``optimizer.step()`` and the scheduler's step (per step, or per epoch);
* when a step runs out of GPU memory (``torch.cuda.OutOfMemoryError``), redoes it with the gradient accumulated over
  sub-batches of half the size (the size kept for the rest of the run), for a task whose steps split
  (:meth:`TrainingTask.batch_items` is not None);
* appends the task's log row and writes ``last.pt`` every ``checkpoint_every`` epochs and after the last one;

then writes ``log.csv`` (one row per epoch) and the model checkpoint (``model.pt``: the state dict, the config, the
log). ``last.pt`` is resumed only for the same settings and inputs (:func:`unseg.core.checkpoints.resume_key`), and
restores the model, optimiser, scheduler, the data-order generator, the global torch RNG (dropout draws) and the
task's own state, so that an interrupted run ends with the uninterrupted run's weights, bit for bit.

The engine runs no forward pass itself: a task's step runs its model under :func:`autocast` (CUDA: bfloat16; CPU:
float32, off), on the device :func:`unseg.core.devices.resolve_device` chose.
"""

from __future__ import annotations

import contextlib
import csv
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from unseg.core.checkpoints import load_resume_state, resume_key, save_checkpoint, save_resume_state
from unseg.core.io import atomic_output

LAST_CHECKPOINT = "last.pt"
MODEL_CHECKPOINT = "model.pt"
LOG_FILE = "log.csv"


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """The autocast dtype of a training on ``device``: bfloat16 on CUDA, None (float32, no autocast) elsewhere."""
    return torch.bfloat16 if device.type == "cuda" else None


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """``torch.autocast`` to :func:`autocast_dtype` on ``device``; a no-op on the CPU."""
    dtype = autocast_dtype(device)
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


class TrainingTask:
    """The trainer's own part of a training run; :func:`run_training` calls its hooks in this order per epoch:
    :meth:`batches`, then per batch :meth:`prepare` once and :meth:`step` (again, with smaller sub-batches, after an
    out-of-memory error), then :meth:`end_epoch`.

    Attributes:
        log_fields: the ``log.csv`` columns, in order (the keys of :meth:`end_epoch`'s rows).
    """

    log_fields: tuple[str, ...] = ()

    def batches(self, epoch: int) -> Iterable[Any]:
        """The batches of epoch ``epoch`` (0-based), drawn when called (the engine calls it once per epoch, in
        order, so that random draws follow the uninterrupted run's)."""
        raise NotImplementedError

    def prepare(self, batch: Any) -> Any:
        """A batch made ready for its step, once (also when the step is redone in sub-batches): e.g. targets moved
        to the device, a random draw per optimiser step."""
        return batch

    def batch_items(self, batch: Any) -> int | None:
        """The number of items the step of ``batch`` can be split into (out-of-memory halving), or None: the step
        does not split (its loss couples the items), and an out-of-memory error is raised."""
        return None

    def step(self, batch: Any, micro_batch: int | None) -> Mapping[str, float]:
        """Forward and backward of one optimiser step (gradients add up in ``.grad``; the engine zeroes them before
        and steps the optimiser after), in sub-batches of ``micro_batch`` items (None: a task that does not split).
        Accumulate what the epoch's row needs only once the step has succeeded.

        Returns:
            the step's terms shown on the progress bar (e.g. {"loss": ...}); may be empty.
        """
        raise NotImplementedError

    def end_epoch(self, epoch: int) -> dict[str, Any]:
        """The log row of epoch ``epoch`` (0-based), which has just ended (keys: :attr:`log_fields`)."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """What else a resumed run must restore (random generators, queues, a second model, ...)."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`."""

    def final_checkpoint(self, model: torch.nn.Module, rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """The model checkpoint's entries besides ``config`` and ``log`` (``rows``, one per epoch): by default the
        model's weights (on the CPU) as ``state_dict``; a task may choose another epoch's weights or add entries."""
        return {"state_dict": {key: value.detach().cpu() for key, value in model.state_dict().items()}}


def run_training(
    task: TrainingTask,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    out_dir: str | Path,
    *,
    epochs: int,
    config: Mapping[str, Any],
    settings: Mapping[str, Any] | None,
    inputs_digest: str = "",
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    scheduler_interval: str = "step",
    generator: torch.Generator | None = None,
    seed: int | None = None,
    checkpoint_every: int = 1,
    progress: bool = True,
    desc: str = "train",
    unit: str = "epoch",
    model_file: str = MODEL_CHECKPOINT,
) -> list[dict[str, Any]]:
    """Train ``model`` for ``epochs`` epochs of ``task``; write ``last.pt``, ``log.csv`` and the model checkpoint
    into ``out_dir`` (see the module docstring).

    Args:
        model: on its device, in train mode; its ``state_dict`` is checkpointed and resumed.
        config: stored in ``last.pt`` and the model checkpoint (what rebuilds the model).
        settings: what keys the resume with ``inputs_digest`` (the training data as loaded): ``last.pt`` saved for
            other settings or inputs is never continued. None: no ``last.pt`` is written or resumed (a run inside a
            temporary folder, which an interrupted job does not leave behind).
        scheduler: stepped after every optimiser step (``scheduler_interval="step"``) or every epoch (``"epoch"``).
        generator: the task's data-order generator, saved and restored.
        seed: when given, ``torch.manual_seed(seed)`` first (the global RNG: dropout, samplers); None leaves the
            global RNG as the caller left it.
        checkpoint_every: epochs between ``last.pt`` writes (and after the last epoch).
        unit: the progress bar's unit.
        model_file: the model checkpoint's file name.

    Returns:
        the log rows, one per epoch (resumed ones included).
    """
    if scheduler_interval not in ("step", "epoch"):
        raise ValueError(f"scheduler_interval must be 'step' or 'epoch', not {scheduler_interval!r}")
    if seed is not None:
        torch.manual_seed(seed)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    last_path = out_dir / LAST_CHECKPOINT
    key = resume_key(settings, inputs_digest) if settings is not None else None
    start_epoch, rows = 0, []
    state = load_resume_state(last_path, key) if key is not None else None
    if state is not None:
        model.load_state_dict(state["state_dict"])
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(state["scheduler"])
        if generator is not None:
            generator.set_state(state["generator"])
        torch.set_rng_state(state["rng_state"])  # dropout draws as in an uninterrupted run
        task.load_state_dict(state.get("task", {}))
        start_epoch, rows = state["epoch"], state["log"]

    micro_batch: int | None = None  # halved for the rest of the run when a step runs out of GPU memory
    bar = tqdm(range(start_epoch, epochs), desc=desc, unit=unit, disable=not progress)
    for epoch in bar:
        for batch in task.batches(epoch):
            batch = task.prepare(batch)
            while True:
                optimizer.zero_grad()
                items = task.batch_items(batch)
                try:
                    terms = task.step(batch, None if items is None else min(micro_batch or items, items))
                    break
                except torch.cuda.OutOfMemoryError:
                    # Halve the sub-batch and redo the step: the summed gradient is the same, only smaller pieces.
                    if items is None or min(micro_batch or items, items) <= 1:
                        raise
                    micro_batch = min(micro_batch or items, items) // 2
                    if torch.cuda.is_available():
                        torch.cuda.empty_cache()
                    print(f"out of GPU memory on a training batch of {items}: accumulating its gradient over "
                          f"sub-batches of {micro_batch}", file=sys.stderr)
            optimizer.step()
            if scheduler is not None and scheduler_interval == "step":
                scheduler.step()
            if "loss" in terms:
                bar.set_postfix(loss=f"{float(terms['loss']):.4f}", refresh=False)
        if scheduler is not None and scheduler_interval == "epoch":
            scheduler.step()
        rows.append(task.end_epoch(epoch))
        if key is not None and ((epoch + 1) % checkpoint_every == 0 or epoch + 1 == epochs):
            save_resume_state(last_path, key, {
                "state_dict": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict() if scheduler is not None else None,
                "generator": generator.get_state() if generator is not None else None,
                "rng_state": torch.get_rng_state(), "epoch": epoch + 1, "log": rows, "config": dict(config),
                "task": task.state_dict()})
    bar.close()
    write_log(out_dir / LOG_FILE, rows, task.log_fields)
    with atomic_output(out_dir / model_file) as tmp:
        save_checkpoint({**task.final_checkpoint(model, rows), "config": dict(config), "log": rows}, tmp)
    return rows


def write_log(path: str | Path, rows: Sequence[Mapping[str, Any]], fields: Sequence[str]) -> None:
    """``rows`` as a CSV file with the columns ``fields`` (a row's missing field: empty), atomically."""
    with atomic_output(path) as tmp:
        with open(tmp, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(fields))
            writer.writeheader()
            writer.writerows(rows)
