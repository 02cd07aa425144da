"""The quality table of a train variant: its pseudo-labels, each round's training labels and each round's
predictions, mIoU (Hungarian over the split, percent) against the dataset's ground truth.

Reads a finished workflow run (``results/{dataset}/``): the index, the pseudolabels variant the train variant trains
on, ``train/{variant}/round-{r}/`` (labels of rounds >= 2, model.pt) and the feature store; each round's model
predicts every image of the split into a temporary folder (the predict stage's function), then everything is
scored by :func:`unseg.evaluation.metrics.evaluate_semantic`.

Usage (from the project root, after ``snakemake --cores 2``)::

    .venv/bin/python benchmarks/eval_self_training.py --results results/synthetic --train linear --split all
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from unseg.core.provenance import sidecar_path  # noqa: E402
from unseg.data.index import index_split, read_index  # noqa: E402
from unseg.evaluation.metrics import evaluate_semantic  # noqa: E402
from unseg.stages.predict import predict  # noqa: E402


def score(folder: Path, rows, num_predicted: int, num_classes: int) -> float:
    paths = [folder / f"{name}.png" for name in rows["name"]]
    return evaluate_semantic(paths, rows["gt_semantic"].tolist(), num_predicted, num_classes)["miou"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, required=True, help="results/{dataset}")
    parser.add_argument("--train", required=True, help="the train variant")
    parser.add_argument("--split", default="all")
    parser.add_argument("--num-classes", type=int, help="ground-truth classes with background (default: from GT)")
    args = parser.parse_args()

    rows = index_split(read_index(args.results / "index" / "images.csv"), args.split)
    rows = rows[rows["gt_semantic"] != ""].reset_index(drop=True)
    round_dirs = sorted((args.results / "train" / args.train).glob("round-*"), key=lambda p: int(p.name[6:]))
    model_config = json.loads(Path(sidecar_path(round_dirs[0] / "model.pt")).read_text())
    chain = model_config["config"]
    pseudolabels = chain["train"][args.train]["pseudolabels"]
    features = chain["train"][args.train]["features"]
    num_predicted = chain["pseudolabels"][pseudolabels]["clusters"] + 1
    num_classes = args.num_classes or (chain["dataset"][next(iter(chain["dataset"]))].get("num_classes", 1) + 1)
    store = args.results / "features" / f"{features}.zarr"

    table = [("pseudo-labels", score(args.results / "pseudolabels" / pseudolabels, rows, num_predicted, num_classes))]
    with tempfile.TemporaryDirectory() as tmp:
        for round_dir in round_dirs:
            if (round_dir / "labels").is_dir():
                table.append((f"{round_dir.name} labels", score(round_dir / "labels", rows, num_predicted,
                                                                  num_classes)))
            out = Path(tmp) / round_dir.name
            predict(round_dir / "model.pt", store, dict(zip(rows["name"], rows["path"])), out, progress=False)
            table.append((f"{round_dir.name} predictions", score(out, rows, num_predicted, num_classes)))
    print(f"{args.results.name} / train {args.train}: mIoU on split {args.split!r} ({len(rows)} images)")
    for label, value in table:
        print(f"  {label:<24} {value:6.2f}")
    print("  settings: " + json.dumps(chain["train"][args.train], sort_keys=True))


if __name__ == "__main__":
    main()
