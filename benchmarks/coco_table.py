"""The object table of a COCO-format run: every proposals (or instances round) variant's class-agnostic scores, one
markdown row each, from the ``metrics.json`` the workflow wrote, with the wall time of each stage it consumed.

Columns: AP, AP50, AP75, AR@1/10/100, APs/m/l, ARs/m/l (pycocotools, percent), AP50 of the top proposal per image
(single) and of all (multi), recall@0.5 by the number of same-class instances in the image (Engstler et al. 2023,
Table 1: 1, 2, 3, 4, 5, 6+), proposals per image, and the seconds of the masks, saliency and proposals jobs (from
their provenance sidecars; the features job's once, below the table).

Usage (from the project root, after the run of ``benchmarks/configs/coco-val500.yaml``)::

    .venv/bin/python benchmarks/coco_table.py --results results/coco-val500
    .venv/bin/python benchmarks/coco_table.py --results results/coco-val500 --proposals template-vote3-border \
        --instances cutler-cpu

``--instances`` adds a table of each instances variant's rounds (every ``round-{r}/metrics.json`` there is), with
the seconds of each round's training and detection jobs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

METRICS = ("AP", "AP50", "AP75", "AR1", "AR10", "AR100", "APs", "APm", "APl", "ARs", "ARm", "ARl")


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def wall_time(provenance: Path) -> float | None:
    """The job's wall time in seconds from a provenance sidecar, or None when the sidecar is absent."""
    return read_json(provenance)["run"].get("wall_time_s") if provenance.is_file() else None


def seconds(value: float | None) -> str:
    return "" if value is None else f"{value:.0f}"


def number(value: float | None) -> str:
    return "" if value is None else f"{value:.1f}"


def proposals_row(results: Path, variant: str) -> str:
    """One markdown row of the proposals variant ``variant`` under ``results``."""
    folder = results / "proposals" / variant
    metrics = read_json(folder / "metrics.json")
    chain = read_json(folder / "proposals.json.provenance.json")["config"]["proposals"][variant]
    masks, saliency = chain["masks"], chain["saliency"]
    voters = [masks, *chain.get("votes", [])]
    voting = f" (votes: {', '.join(f'`{name}`' for name in voters[1:])})" if voters[1:] else ""
    cells = [f"`{variant}`", f"`{masks}`{voting} + `{saliency}`", *score_cells(metrics)]
    cells += [" + ".join(seconds(wall_time(results / "masks" / str(name) / "masks.json.provenance.json"))
                         for name in voters),
              seconds(wall_time(results / "saliency" / str(saliency) / "provenance.json")),
              seconds(wall_time(folder / "proposals.json.provenance.json"))]
    return "| " + " | ".join(cells) + " |"


def score_cells(metrics: dict) -> list[str]:
    """The score columns shared by both tables: METRICS, AP50 single / multi, recall by instances, per image."""
    recall = (metrics.get("recall_by_instance_count") or {}).get("recall", {})
    cells = [number(metrics.get(key)) for key in METRICS]
    cells += [number(metrics.get("single", {}).get("AP50")), number(metrics.get("multi", {}).get("AP50"))]
    cells += [" / ".join(number(value) for value in recall.values())]
    return cells + [f"{metrics['num_detections'] / max(metrics['num_images'], 1):.1f}"]


def instances_rows(results: Path, variant: str) -> list[str]:
    """One markdown row per round of the instances variant ``variant`` under ``results``."""
    rows = []
    rounds = sorted((results / "instances" / variant).glob("round-*/metrics.json"),
                    key=lambda path: int(path.parent.name.split("-")[1]))
    for metrics_path in rounds:
        folder = metrics_path.parent
        targets = "the proposals" if folder.name == "round-1" else "`targets.json`"
        cells = [f"`{variant}` {folder.name.replace('-', ' ')}", targets, *score_cells(read_json(metrics_path)),
                 seconds(wall_time(folder / "model.pt.provenance.json")),
                 seconds(wall_time(folder / "instances.json.provenance.json"))]
        rows.append("| " + " | ".join(cells) + " |")
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, default=Path("results/coco-val500"))
    parser.add_argument("--proposals", nargs="*", help="variants (default: every one with a metrics.json)")
    parser.add_argument("--instances", nargs="*", default=[], help="instances variants: a table of their rounds")
    args = parser.parse_args(argv)
    variants = args.proposals or sorted(path.parent.name for path in
                                        (args.results / "proposals").glob("*/metrics.json"))
    if not variants:
        print(f"no proposals metrics under {args.results}/proposals", file=sys.stderr)
        return 1
    header = ["variant", "masks + saliency", *METRICS, "AP50 single", "AP50 multi",
              "recall@0.5, 1 / 2 / 3 / 4 / 5 / 6+ same-class", "per image", "masks s", "saliency s", "proposals s"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for variant in variants:
        print(proposals_row(args.results, variant))
    if args.instances:
        header = ["instances round", "trained on", *METRICS, "AP50 single", "AP50 multi",
                  "recall@0.5, 1 / 2 / 3 / 4 / 5 / 6+ same-class", "per image", "train s", "detect s"]
        print("\n| " + " | ".join(header) + " |")
        print("|" + "---|" * len(header))
        for variant in args.instances:
            print("\n".join(instances_rows(args.results, variant)))
    features = sorted((args.results / "features").glob("*/provenance.json"))
    for provenance in features:
        print(f"\nfeatures `{provenance.parent.stem}`: {seconds(wall_time(provenance))} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
