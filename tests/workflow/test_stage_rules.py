"""Workflow tests of single stages' rules: each runs Snakemake on the tiny config (sharded and fused features,
learned embeddings read as features, the contrast stage's config errors) or parses the workflow (no torch)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from unseg.features.store import FeatureStore

from helpers import HEAVY, ROOT
from helpers import TINY_CONTRAST as TINY_SETTINGS


def heavy_importers(importtime: str) -> set[str]:
    """The outermost ``unseg`` modules under whose import torch, torchvision or timm was imported, from the stderr
    of ``python -X importtime`` (a module's line follows its imports', indented one level less)."""
    rows = [line.rsplit("|", 1)[-1] for line in importtime.splitlines() if line.startswith("import time:")]
    importers, pending = set(), None  # pending: the indentation of a heavy import whose importer is not found yet
    for row in rows:
        name, depth = row.strip(), len(row) - len(row.lstrip())
        if name in HEAVY and pending is None:
            pending = depth
        elif pending is not None and depth < pending:
            if name.startswith("unseg."):
                importers.add(name)
            if depth <= 1:  # a top-level import: the outermost importer is known
                pending = None
    return importers


def _snakemake_importtime(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-X", "importtime", "-m", "snakemake", *args], cwd=ROOT,
                          capture_output=True, text=True, check=True)


@pytest.mark.slow  # ~26 s; tests/unit/test_features.py checks shards equal one extraction
def test_sharded_workflow_replans_only_the_edited_shard(tmp_path):
    """Two shard jobs and a join; editing one image replans only its shard and the join."""
    import io
    import subprocess
    import sys

    import yaml

    root = Path(__file__).resolve().parents[2]
    config = yaml.safe_load((root / "tests/configs/tiny.yaml").read_text())
    config["dataset"]["generate"]["num_images"] = 4
    # tokens: the tiny config's pseudo-labels and heads read them (a store without them is a config error)
    config["features"]["vits16"].update(shards=2, batch_size=2, layout="crop",
                                        facets=["keys", "tokens", "cls", "keys@-4"])
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    target = "results/tiny/features/vits16.zarr"

    def snakemake(*args):
        result = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(root / "Snakefile"), "--directory",
                                 str(tmp_path), "--configfile", str(tmp_path / "config.yaml"), "--cores", "2", *args],
                                capture_output=True, text=True)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
        return result.stdout

    snakemake(target)
    store = FeatureStore(tmp_path / target)
    assert len(store.names) == 4 and store.attrs["shards"] == 2 and store.facet(store.names[0], "keys@-4").ndim == 3
    assert "Job stats" not in snakemake("-n", target)  # up to date
    plan = json.loads((tmp_path / "results/tiny/features/vits16.shards/plan.json").read_text())
    edited = Path(plan[1][0]["path"])
    pixels = np.asarray(Image.open(edited)).copy()
    pixels[:8] = 255 - pixels[:8]
    encoded = io.BytesIO()
    Image.fromarray(pixels).save(encoded, format="JPEG")
    with open(edited, "r+b") as handle:  # in place: the folder's listing (and so the index) stays as it was
        handle.write(encoded.getvalue())
        handle.truncate()
    dry = snakemake("-n", target)
    jobs = {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)\s*$", dry.split("Job stats:")[-1], re.M)}
    assert jobs == {"features_shard": 1, "features": 1, "total": 2}, dry
    assert "wildcards: variant=vits16, shard=1" in dry


@pytest.mark.slow  # ~60 s: two workflows; tests/unit/test_fused.py checks the join byte for byte
def test_the_workflow_runs_a_fused_variant_in_its_shard_jobs_and_joins_what_the_stages_would_write(tmp_path):
    """fused: true: two features_fused jobs, then features, masks and saliency only join; the artifacts equal those
    of the unfused workflow on the same config."""
    import re
    import subprocess
    import sys

    import yaml

    root = Path(__file__).resolve().parents[2]
    config = yaml.safe_load((root / "tests/configs/tiny.yaml").read_text())
    config["dataset"]["generate"]["num_images"] = 5
    config["features"]["vits16"].update(shards=2, batch_size=2, resolution=64)
    targets = ["results/tiny/masks/multik/masks.json", "results/tiny/saliency/bipart"]
    outputs = {}
    for fused in (True, False):
        workdir = tmp_path / ("fused" if fused else "plain")
        workdir.mkdir()
        config["features"]["vits16"]["fused"] = fused
        (workdir / "config.yaml").write_text(yaml.safe_dump(config))
        command = [sys.executable, "-m", "snakemake", "-s", str(root / "Snakefile"), "--directory", str(workdir),
                   "--configfile", str(workdir / "config.yaml"), "--cores", "2", *targets]
        result = subprocess.run(command, capture_output=True, text=True)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
        stats = result.stderr.split("Job stats:")[1] if "Job stats:" in result.stderr else result.stdout
        jobs = {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)\s*$", stats, re.M)}
        if fused:
            assert jobs["features_fused"] == 2 and "features_shard" not in jobs, jobs
        else:
            assert "features_fused" not in jobs, jobs
        outputs[fused] = workdir / "results/tiny"
    fused_masks = (outputs[True] / "masks/multik/masks.json").read_bytes()
    assert fused_masks == (outputs[False] / "masks/multik/masks.json").read_bytes() and len(json.loads(fused_masks))
    pngs = sorted(path.name for path in (outputs[False] / "saliency/bipart").glob("*.png"))
    assert len(pngs) == 5
    for png in pngs:
        assert (outputs[True] / "saliency/bipart" / png).read_bytes() == \
            (outputs[False] / "saliency/bipart" / png).read_bytes()
    for name in FeatureStore(outputs[False] / "features/vits16.zarr").names:
        np.testing.assert_array_equal(FeatureStore(outputs[True] / "features/vits16.zarr").facet(name, "tokens"),
                                      FeatureStore(outputs[False] / "features/vits16.zarr").facet(name, "tokens"))


@pytest.mark.slow  # ~60 s; tests/unit/test_contrast.py checks the stage
def test_the_workflow_learns_embeddings_that_any_stage_reads_as_features(tmp_path):
    import json

    import yaml

    from workflow_helpers import TINY, snakemake

    config = yaml.safe_load(TINY.read_text())
    config["contrast"] = {"mc": {"features": "vits16", "saliency": "bipart", **TINY_SETTINGS}}
    config["train"] = {"linear": {"pseudolabels": "km3", "features": "vits16", "epochs": 3},
                       "linear-mc": {"pseudolabels": "km3", "features": "mc", "facet": "embeddings", "epochs": 3}}
    feature_checks = {"kmeans": {"seeds": [0, 1]}, "retrieval": {"reference_split": "train", "segments": "saliency"}}
    config["evaluate"] = {"val": {"predictions": "linear", "split": "val", **feature_checks},
                          "val-mc": {"predictions": "linear-mc", "split": "val", "facet": "embeddings",
                                     **feature_checks}}
    snakemake(tmp_path, config, "results/tiny/evaluate/comparison.md")
    results = tmp_path / "results" / "tiny"
    assert (results / "contrast/mc/model.pt").is_file() and (results / "contrast/mc/log.csv").is_file()
    provenance = json.loads((results / "contrast/mc/embeddings.zarr/provenance.json").read_text())
    assert set(provenance["config"]["contrast"]) == {"mc"} and set(provenance["config"]["saliency"]) == {"bipart"}
    chain = json.loads((results / "train/linear-mc/round-1/model.pt.provenance.json").read_text())["config"]
    assert chain["train"]["linear-mc"]["features"] == "mc" and "mc" in chain["contrast"]
    learned, raw = (json.loads((results / f"evaluate/{v}/metrics.json").read_text()) for v in ("val-mc", "val"))
    for metrics in (learned, raw):
        assert metrics["kmeans"]["miou_mean"] > 0 and metrics["kmeans_objects"]["num_clusters"] == 3
        assert metrics["retrieval"]["segments"] == "saliency"
    assert learned["kmeans"]["miou_per_seed"] != raw["kmeans"]["miou_per_seed"]  # other features were clustered
    comparison = (results / "evaluate/comparison.md").read_text()
    assert "val-mc" in comparison and "K-means (objects) mIoU" in comparison
    # editing the contrast variant re-runs it and what reads its embeddings, not the raw branch
    config["contrast"]["mc"]["temperature"] = 0.2
    planned = snakemake(tmp_path, config, "results/tiny/evaluate/comparison.md", "-n").stdout
    outputs = " ".join(line for line in planned.splitlines() if line.strip().startswith("output:"))
    assert "contrast/mc/" in outputs and "train/linear-mc/" in outputs and "evaluate/val-mc/" in outputs
    assert "train/linear/" not in outputs and "evaluate/val/" not in outputs


def test_config_errors_about_contrast_variants_name_the_key(tmp_path):
    import yaml

    from workflow_helpers import TINY, snakemake

    config = yaml.safe_load(TINY.read_text())
    config["contrast"] = {"vits16": {"features": "vits16", "saliency": "bipart"}}
    failed = snakemake(tmp_path, config, "-n", check=False)
    output = failed.stdout + failed.stderr
    assert failed.returncode != 0 and "contrast.vits16: a features variant has that name too" in output
    config["contrast"] = {"mc": {"features": "vits16", "saliency": "nope"}}
    failed = snakemake(tmp_path, config, "-n", check=False)
    assert "contrast.mc.saliency: no 'saliency' variant named 'nope'" in failed.stdout + failed.stderr
    config["contrast"] = {"mc": {"features": "vits16", "saliency": "bipart"}}
    config["train"]["linear"].update(features="mc", facet="embeddings")
    failed = snakemake(tmp_path, config, "-n", check=False)
    output = failed.stdout + failed.stderr
    assert "features 'mc' is a contrast variant (learned embeddings): it has no backbone to fine-tune" in output


def test_parsing_the_workflow_imports_no_torch():
    result = _snakemake_importtime("--list-rules")
    assert "audit_compare" in result.stdout
    assert not heavy_importers(result.stderr)
    assert heavy_importers("import time: 1 | 1 |     torch\nimport time: 1 | 1 |   unseg.stages.train\n"
                           "import time: 1 | 1 | unseg.cli\n") == {"unseg.stages.train", "unseg.cli"}


def test_the_demo_dry_run_imports_no_torch():
    assert not heavy_importers(_snakemake_importtime("-n", "-q").stderr)
