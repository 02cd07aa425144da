"""Small array builders and child processes shared by the unit tests."""

import contextlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from unseg.core.io import encode_rle

ROOT = Path(__file__).resolve().parents[1]


def box(shape, top, left, bottom, right):
    """(H, W) bool mask, True on rows top:bottom and columns left:right."""
    mask = np.zeros(shape, dtype=bool)
    mask[top:bottom, left:right] = True
    return mask


def det(mask, score, **extra):
    """A COCO result of image 1 for ``mask`` with ``score``."""
    return {"image_id": 1, "category_id": 1, "segmentation": encode_rle(mask), "score": score, **extra}


SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"


def variant(stage: str, **given):
    """A variant's settings as the config schema completes them (defaults of the stage and of its method)."""
    from unseg.config.schema import load_methods, variant_settings

    load_methods()
    return variant_settings(stage, given, SCHEMA)


# The child trains a mask transformer (dropout: the resume must restore the RNG too) on planted tokens for 6 epochs
# and, so that the parent can kill it mid-way, sleeps after each epoch's last.pt (the real writer, wrapped).
TRAIN_CHILD = """
import sys, time
import numpy as np, torch
import unseg.stages.train as train
import unseg.training.engine as engine
real_save = engine.save_resume_state
def slow_save(*args, **kwargs):
    real_save(*args, **kwargs)
    time.sleep(float(sys.argv[2]))
engine.save_resume_state = slow_save

class Planted(torch.utils.data.Dataset):
    def __init__(self):
        rng = np.random.default_rng(0)
        self.names, self.items = [f"img{i}" for i in range(8)], []
        for _ in self.names:
            labels = rng.integers(0, 3, (4, 5))
            tokens = np.eye(3)[labels].transpose(2, 0, 1).repeat(4, 0) + rng.normal(0, 0.5, (12, 4, 5))
            self.items.append((torch.tensor(tokens, dtype=torch.float32), torch.from_numpy(labels)))
    def __len__(self):
        return len(self.items)
    def __getitem__(self, index):
        return self.items[index]

torch.manual_seed(0)
model = train.build_head("mask_transformer", 12, 3, {"width": 16, "layers": 1, "heads": 2, "dropout": 0.3})
train.fit(model, Planted(), sys.argv[1], config={"method": "mask_transformer", "num_classes": 3}, epochs=6, lr=0.01,
          weight_decay=0.0, batch_size=4, seed=0, progress=False)
"""


def training_command(out: Path, pause: float = 0.0) -> list[str]:
    """The command line of :data:`TRAIN_CHILD` writing to ``out``, sleeping ``pause`` s after each epoch."""
    return [sys.executable, "-c", TRAIN_CHILD, str(out), str(pause)]


def training(out: Path, pause: float = 0.0) -> subprocess.Popen:
    """:data:`TRAIN_CHILD` in a subprocess (one torch thread), its output captured as text."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.Popen(training_command(out, pause), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


# A headless Chromium from the distribution's packages (Debian: apt-get install chromium-headless-shell, or
# chromium); the browser tests skip without one.
BROWSER = next((path for path in (os.environ.get("UNSEG_TEST_BROWSER"), "chromium-headless-shell", "chromium",
                                  "chromium-browser") if path and shutil.which(path)), None)


def load_in_browser(url: str, timeout: float = 90) -> tuple[str, list[str]]:
    """Load ``url`` in the headless browser, run its scripts: (the DOM after them, the page's console messages)."""
    result = subprocess.run([BROWSER, "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0",
                             "--dump-dom", url], capture_output=True, text=True, timeout=timeout)
    console = [line for line in result.stderr.splitlines() if ":CONSOLE" in line]
    return result.stdout, console


def screenshot(url: str, out_png: str | Path, size: tuple[int, int] = (900, 700), timeout: float = 90) -> Path:
    """A PNG of ``url`` rendered by the headless browser at ``size`` (width, height) CSS pixels."""
    subprocess.run([BROWSER, "--no-sandbox", "--disable-gpu", "--hide-scrollbars", f"--window-size={size[0]},{size[1]}",
                    f"--screenshot={out_png}", url], capture_output=True, text=True, timeout=timeout, check=True)
    return Path(out_png)


@contextlib.contextmanager
def killed_after_saves(module, count: int = 2):
    """A run inside the block is killed (KeyboardInterrupt) right after its ``count``-th resume save through
    ``module.save_resume_state``; the real save is restored on leaving."""
    real_save, saves = module.save_resume_state, []

    def save_then_kill(*args, **kwargs):
        real_save(*args, **kwargs)
        saves.append(1)
        if len(saves) == count:
            raise KeyboardInterrupt

    module.save_resume_state = save_then_kill
    try:
        with pytest.raises(KeyboardInterrupt):
            yield
    finally:
        module.save_resume_state = real_save


# The heavy imports that declaring, validating and listing methods, and parsing the workflow, must not import.
HEAVY = ("torch", "torchvision", "timm")
# MaskContrast settings small enough for the tiny config and the unit tests' planted images.
TINY_CONTRAST = {"epochs": 3, "batch_size": 2, "embedding_dim": 8, "head": "linear", "queue_size": 4,
                 "label_scale": 2, "lr": 0.05}
