"""Instance segmenter speed: training steps/s and images/s (stored tokens; images through the ViT for copy-paste and
flips), and detection images/s against a bare forward pass of the same model in the same process.

Reads a finished demo run (``snakemake --cores 2``: results/synthetic/features/dinov2-s14.zarr, whose tokens and
keys it uses, and proposals/default/proposals.json as targets). Configurations: ``cpu`` (the benchmark configs'
64-channel pyramid at scales 2, 1, 0.5 with 128 regions per image) and ``default`` (the method's defaults: ViTDet's
256-channel pyramid at scales 4, 2, 1, 0.5, 512 regions).

Usage (from the project root)::

    .venv/bin/python benchmarks/bench_instances.py
    .venv/bin/python benchmarks/bench_instances.py --device cuda --steps 50    # on a GPU machine
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

CONFIGS = {
    "cpu": {"channels": 64, "scales": [2, 1, 0.5], "rois_per_image": 128},
    "default": {},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", default="results/synthetic")
    parser.add_argument("--features", default="dinov2-s14")
    parser.add_argument("--proposals", default="default")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--steps", type=int, default=6, help="timed training steps (after one warm-up step)")
    parser.add_argument("--images", type=int, default=8, help="images detected (after one warm-up image)")
    args = parser.parse_args()

    import torch

    from unseg.config.schema import load_methods, variant_settings
    from unseg.core.io import read_json
    from unseg.data.index import image_paths, names_by_id, read_index
    from unseg.features.store import FeatureStore
    from unseg.methods.instances import reads_images
    from unseg.stages.instances.data import InstanceDataset
    from unseg.stages.instances.detect import detect_instances
    from unseg.stages.instances.training import build_instance_model, detection_losses
    from unseg.training.data import token_tensor

    load_methods()
    results = Path(args.results)
    store_path = results / "features" / f"{args.features}.zarr"
    store = FeatureStore(store_path)
    index = read_index(results / "index" / "images.csv")
    names = names_by_id(index)
    paths = image_paths(results / "index" / "images.csv")
    detections: dict[str, list[dict]] = {name: [] for name in names.values()}
    for det in read_json(results / "proposals" / args.proposals / "proposals.json"):
        detections[names[int(det["image_id"])]].append(det)
    device = torch.device(args.device)
    schema = ROOT / "workflow" / "schemas" / "config.schema.yaml"
    rows = []
    for label, overrides in CONFIGS.items():
        for path in ("tokens", "images"):
            augment = {"copy_paste": 0.5, "hflip": 0.5} if path == "images" else {}
            settings = variant_settings("instances", {**overrides, **augment}, schema)
            config = {**settings, "embed_dim": int(store.attrs["embed_dim"]), "reads_images": reads_images(settings),
                      **{key: store.attrs[key] for key in ("backbone", "weights", "weights_digest")}}
            torch.manual_seed(0)
            model = build_instance_model(config).to(device).train()
            spec_mean_std = {}
            if path == "images":
                from unseg.features.backbones import get_backbone_spec

                spec = get_backbone_spec(config["backbone"])
                spec_mean_std = {"mean": spec.mean, "std": spec.std}
            dataset = InstanceDataset(store_path, "tokens", detections, paths if path == "images" else None,
                                      {"copy_paste": 0.5, "hflip": 0.5, "copy_paste_scale": [0.5, 1.0]}
                                      if path == "images" else None, **spec_mean_std)
            optimizer = torch.optim.AdamW(model.parameter_groups(1e-4), lr=1e-4)
            count = len(dataset)

            def step(number: int) -> None:
                items = [dataset[((number * args.batch_size + k) % count, number * 100 + k)]
                         for k in range(args.batch_size)]
                optimizer.zero_grad()
                detection_losses(model, items, args.batch_size, device)
                optimizer.step()

            step(0)
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            for number in range(1, args.steps + 1):
                step(number)
            if device.type == "cuda":
                torch.cuda.synchronize()
            seconds = (time.perf_counter() - start) / args.steps
            rows.append({"config": label, "path": path, "train_steps_per_s": round(1 / seconds, 3),
                         "train_images_per_s": round(args.batch_size / seconds, 3)})
            print(json.dumps(rows[-1]), flush=True)
            if path == "images":
                continue
            # detection: the bare forward of the model vs detect_instances (paste at full size, RLE, rescoring)
            model.eval()
            shown = list(detections)[: args.images + 1]
            with torch.inference_mode():
                model([token_tensor(store, shown[0], "tokens")[0].to(device)])
                start = time.perf_counter()
                for name in shown[1:]:
                    model([token_tensor(store, name, "tokens")[0].to(device)])
                if device.type == "cuda":
                    torch.cuda.synchronize()
                bare = (time.perf_counter() - start) / args.images
            start = time.perf_counter()
            found = detect_instances(model, config, store, shown[1:], device=device, progress=False)
            full = (time.perf_counter() - start) / args.images
            rows.append({"config": label, "path": "detect", "bare_forward_images_per_s": round(1 / bare, 3),
                         "detect_images_per_s": round(1 / full, 3), "ratio_detect_vs_bare": round(bare / full, 3),
                         "detections_per_image": round(len(found) / args.images, 1)})
            print(json.dumps(rows[-1]), flush=True)


if __name__ == "__main__":
    main()
