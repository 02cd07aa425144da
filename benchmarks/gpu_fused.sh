#!/usr/bin/env bash
# Issue 20's GPU measurements after the writer / 8-bit fixes: the feature stage (steady rate against the bare
# forward), the masks' per-image host work on one thread against the job's threads, and the fused path's images/s,
# ViT-S/8 and DINOv2-S/14 at 448 px (random weights: timing only). About 4 minutes on an H200.
#
#   bash benchmarks/gpu_fused.sh HORSE_IMAGES_DIR [LOG_DIR]
#
# On a bare GPU image install these wheels first (cp312, `pip download --no-deps --only-binary=:all: ...`): zarr,
# numcodecs, donfig, google-crc32c, pycocotools, jsonschema, jsonschema-specifications, referencing, rpds-py and
# faiss-cpu (the masks' k-means). Each step runs even when an earlier one fails.
set -u
IMAGES=${1:?a folder of JPEGs}
LOGS=${2:-${OUT:-/tmp}}
PYTHON=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH}
common=(--resolution 448 --layout crop --images "$IMAGES/*.jpg" --batch-size 64 --workers 12 --writers 4)
quiet() { grep -v -e '^features' -e Warning -e eigensolver; }
timeout 100 "$PYTHON" benchmarks/bench_features.py "${common[@]}" --limit 328 --weights random --backbone dino_vits8 \
    --repeat 16 --facets keys --store-dir /var/tmp --startup --profile 2>&1 | quiet | tee "$LOGS/f_vits8.log"
timeout 60 "$PYTHON" benchmarks/bench_features.py "${common[@]}" --limit 328 --weights random --backbone dino_vits8 \
    --repeat 8 --facets keys --store-dir /var/tmp --quantize uint8 --compress zstd --startup 2>&1 | quiet \
    | tee "$LOGS/f_vits8_u8z.log"
timeout 60 "$PYTHON" benchmarks/bench_masks_host.py --images "$IMAGES/*.jpg" --limit 64 2>&1 | quiet \
    | tee "$LOGS/masks_host.log"
for backbone in dino_vits8 dinov2_vits14; do  # 328 images: the unfused masks stage alone took > 60 s for 1,312
  timeout 120 "$PYTHON" benchmarks/bench_fused.py "${common[@]}" --limit 328 --backbone $backbone --store-dir /var/tmp \
      2>&1 | quiet | tee "$LOGS/fused_$backbone.log"
done
