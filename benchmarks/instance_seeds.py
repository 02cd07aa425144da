"""How much one self-training round's quality moves with its seed alone.

Retrains round ``--round`` of an instances variant that the pipeline already ran, from the same inputs (that
round's targets and the previous round's model, as the workflow gives them) with each ``--seeds`` value, detects
with the CRF when the variant uses it, and prints each seed's AP / AP50 / AP75 / AR@1 / AR@10 / AR@100 as the
round's report scores them. Seed 0 (the default) reproduces the pipeline's own metrics exactly, a check that the
inputs are the same. Outputs go to ``--out`` (a throw-away folder, default under /tmp).

Usage (from the project root, after ``snakemake ... results/synthetic/instances/maskrcnn-comp/report.md``)::

    .venv/bin/python benchmarks/instance_seeds.py --results results/synthetic --config benchmarks/configs/demo.yaml \\
        --variant maskrcnn-comp --round 3 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from unseg.config.schema import variant_settings  # noqa: E402
from unseg.data.index import image_paths, names_by_id, read_index  # noqa: E402
from unseg.stages.instances.stage import run_instances_predict, run_instances_train  # noqa: E402
from unseg.stages.proposals import evaluate_proposals  # noqa: E402
from unseg.training.rounds import settings_of_round  # noqa: E402

KEYS = ("AP", "AP50", "AP75", "AR1", "AR10", "AR100")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, default=ROOT / "results" / "synthetic")
    parser.add_argument("--config", type=Path, default=ROOT / "benchmarks" / "configs" / "demo.yaml",
                        help="the config the pipeline ran with (the variant's settings are read from it)")
    parser.add_argument("--variant", default="maskrcnn-comp")
    parser.add_argument("--round", type=int, default=3)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    config = yaml.safe_load(args.config.read_text())
    schema = ROOT / "workflow" / "schemas" / "config.schema.yaml"
    variant = variant_settings("instances", config["instances"][args.variant], schema)  # with the defaults
    proposals = variant_settings("proposals", config["proposals"][config["instances"][args.variant]["proposals"]],
                                 schema)
    variant["features"] = config["instances"][args.variant]["features"]
    proposals["saliency"] = config["proposals"][config["instances"][args.variant]["proposals"]]["saliency"]
    results, base = args.results, args.results / "instances" / args.variant
    index_csv = results / "index" / "images.csv"
    index = read_index(index_csv)
    paths = image_paths(index_csv)
    store = results / "features" / f"{variant['features']}.zarr"
    targets = (base / f"round-{args.round}" / "targets.json" if args.round > 1
               else results / "proposals" / variant["proposals"] / "proposals.json")
    previous = base / f"round-{args.round - 1}" / "model.pt" if args.round > 1 else None
    out = args.out or Path(tempfile.mkdtemp(prefix="instance-seeds-"))
    print(f"{args.variant} round {args.round} of {results}, seeds {args.seeds} -> {out}")
    print("seed  " + "  ".join(f"{key:>6s}" for key in KEYS))
    for seed in args.seeds:
        settings = {**settings_of_round(variant, args.round, "instances"), "seed": seed}
        folder = out / f"seed-{seed}"
        folder.mkdir(parents=True, exist_ok=True)
        run_instances_train(store, targets, names_by_id(index), folder, settings, image_paths=paths,
                            initial_model=previous if variant.get("init_from_previous", True) else None,
                            progress=False)
        run_instances_predict(folder / "model.pt", store, list(index.name), folder / "instances.json", paths,
                              progress=False, rescore=variant.get("rescore", "coherence"),
                              rescore_facet=variant.get("rescore_facet", "keys"), crf=bool(variant.get("crf", False)))
        metrics = evaluate_proposals(index_csv, results / "index" / "ground_truth", folder / "instances.json",
                                     results / "saliency" / proposals["saliency"], folder / "metrics.json",
                                     folder / "report.md", split=proposals.get("report_split", "all"))
        print(f"{seed:4d}  " + "  ".join(f"{metrics[key]:6.1f}" for key in KEYS), flush=True)


if __name__ == "__main__":
    main()
