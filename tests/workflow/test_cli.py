"""The `unseg` command: `unseg provenance PATH` tells what made an artifact; `unseg trail IMAGE` shows one image's
artifacts of every stage in one PNG."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np

from unseg.cli import main
from unseg.core.provenance import input_digest


def test_provenance_prints_the_chain_upstream_first_with_digests(tiny_run, capsys):
    workdir, config, _ = tiny_run
    masks = workdir / "results/tiny/masks/multik/masks.json"
    assert main(["provenance", str(masks)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == str(masks) and "stage masks, variant multik" in out[1]
    assert out[2].startswith("  ran") and "threads" in out[2] and "cpu" in out[2]
    assert "torch " in out[3] and "numpy " in out[3]
    stages = [line.split()[0] for line in out if line.startswith("    ") and ":" in line and "results/" not in line]
    assert stages == ["dataset", "features", "masks"]  # upstream first, nothing else
    assert "k=[2, 3]" in next(line for line in out if line.startswith("    masks"))
    features_line = next(line for line in out if line.strip().startswith("features ") and "results/" in line)
    assert features_line.split()[-1] == input_digest(workdir / "results/tiny/features/vits16.zarr")


def test_provenance_as_json_and_for_folders_and_missing_artifacts(tiny_run, capsys):
    workdir, _, _ = tiny_run
    store = workdir / "results/tiny/features/vits16.zarr"
    assert main(["provenance", str(store), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == json.loads((store / "provenance.json").read_text())
    assert main(["provenance", str(workdir / "results/tiny/masks/nope/masks.json")]) == 2
    assert "no artifact" in capsys.readouterr().err
    assert main(["provenance", str(workdir / "results/tiny/index/images.csv")]) == 2  # the index has no sidecar
    assert "has no provenance sidecar" in capsys.readouterr().err


def test_the_command_runs_as_a_program(tiny_run):
    workdir, _, _ = tiny_run
    result = subprocess.run([sys.executable, "-m", "unseg.cli", "provenance",
                             str(workdir / "results/tiny/pseudolabels/km3")], capture_output=True, text=True)
    assert result.returncode == 0 and "stage pseudolabels, variant km3" in result.stdout


def test_the_trail_of_a_tiny_run_image_has_a_panel_per_stage_artifact(tiny_run, tmp_path, capsys):
    from PIL import Image

    from unseg.core.io import read_image, read_label_png
    from unseg.reports.overlays import overlay_labels
    from unseg.reports.trail import trail_panels

    workdir, _, _ = tiny_run
    results = workdir / "results/tiny"
    name = (results / "index/images.csv").read_text().splitlines()[1].split(",")[1]
    panels = trail_panels(results, name)
    # two masks variants (multik, multik4) and two proposals variants (default, voted)
    assert [panel.stage for panel in panels] == ["image", "ground truth", "saliency", "saliency", "masks", "masks",
                                                 "proposals", "proposals", "pseudolabels", "train", "train", "predict"]
    assert [panel.caption for panel in panels][8:] == ["pseudo-labels km3", "train linear round-1 prediction",
                                                       "train linear round-2 labels", "predict linear"]
    image = read_image(next(path for path in (workdir / "resources/datasets/tiny/JPEGImages").iterdir()
                            if path.stem == name))
    assert np.array_equal(panels[0].picture, image)
    expected = overlay_labels(image, read_label_png(results / "predict/linear" / f"{name}.png"))
    assert np.array_equal(panels[-1].picture, expected)  # the prediction panel shows this image's prediction
    assert main(["trail", name, "--results", str(results), "--out", str(tmp_path / "trail.png")]) == 0
    assert f"{len(panels)} panels" in capsys.readouterr().out
    assert Image.open(tmp_path / "trail.png").size == (6 * 256, 2 * (256 + 18))
    assert main(["trail", "no-such-image", "--results", str(results)]) == 2
    assert "is not in" in capsys.readouterr().err
