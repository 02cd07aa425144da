#!/usr/bin/env bash
# The second GPU run of issue 20: the feature stage after the writer/8-bit fixes, and the fused path's images/s with
# ViT-S/8 and DINOv2-S/14 at 448 px (random weights: timing only).
#   bash benchmarks/gpu_fused.sh HORSE_IMAGES_DIR [LOG_DIR]
set -u
IMAGES=${1:?a folder of JPEGs}
LOGS=${2:-${OUT:-/tmp}}
PYTHON=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH}
common=(--resolution 448 --layout crop --images "$IMAGES/*.jpg" --limit 328 --batch-size 64 --workers 12 --writers 4)
timeout 100 "$PYTHON" benchmarks/bench_features.py "${common[@]}" --weights random --backbone dino_vits8 --repeat 16 \
    --facets keys --store-dir /var/tmp --startup --profile 2>&1 | grep -v -e '^features' -e Warning | tee "$LOGS/f_vits8.log"
timeout 60 "$PYTHON" benchmarks/bench_features.py "${common[@]}" --weights random --backbone dino_vits8 --repeat 8 \
    --facets keys --store-dir /var/tmp --quantize uint8 --compress zstd --startup 2>&1 \
    | grep -v -e '^features' -e Warning | tee "$LOGS/f_vits8_u8z.log"
for backbone in dino_vits8 dinov2_vits14; do
  timeout 80 "$PYTHON" benchmarks/bench_fused.py "${common[@]}" --backbone $backbone --repeat 4 --store-dir /var/tmp \
      2>&1 | grep -v -e '^features' -e Warning -e eigensolver | tee "$LOGS/fused_$backbone.log"
done
