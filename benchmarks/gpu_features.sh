#!/usr/bin/env bash
# The feature stage on a lent GPU (issue 20): end to end against the bare forward, the start-up against the steady
# rate, and each part alone (decode, H2D, forward, D2H, writes); store on disk against /dev/shm, writers 2/4/8,
# 8-bit + zstd, ViT-S/8 and DINOv2-S/14 at 448 px (crop layout, random weights: timing only).
#
#   bash benchmarks/gpu_features.sh HORSE_IMAGES_DIR [LOG_DIR]
#
# Needs torch, timm, zarr importable (on a bare GPU image install the zarr, numcodecs, donfig and google-crc32c
# wheels first). Each step runs even when an earlier one fails.
set -u
IMAGES=${1:?a folder of JPEGs}
LOGS=${2:-${OUT:-/tmp}}
PYTHON=${PYTHON:-python3}
DISK=${DISK:-/var/tmp}
export PYTHONUNBUFFERED=1 PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH}
mkdir -p "$LOGS"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
nproc; df -h "$DISK" /dev/shm | tail -2
"$PYTHON" -c "import torch, timm, zarr; print('torch', torch.__version__, 'timm', timm.__version__, 'zarr', zarr.__version__)"
bench() {  # log name, then bench_features arguments
  local name=$1; shift
  echo "== $name: $*"
  timeout 150 "$PYTHON" benchmarks/bench_features.py --resolution 448 --layout crop --weights random \
      --images "$IMAGES/*.jpg" --limit 328 --batch-size 64 --workers 12 --startup "$@" 2>&1 \
      | grep -v -e '^features' -e Warning | tee "$LOGS/features_$name.log"
}
bench vits8_kca_disk_w4 --backbone dino_vits8 --repeat 16 --facets keys,cls,attn --writers 4 --store-dir "$DISK" --profile
bench vits8_keys_shm_w4 --backbone dino_vits8 --repeat 8 --facets keys --writers 4 --store-dir /dev/shm
bench vits8_keys_disk_w2 --backbone dino_vits8 --repeat 8 --facets keys --writers 2 --store-dir "$DISK"
bench vits8_keys_disk_w8 --backbone dino_vits8 --repeat 8 --facets keys --writers 8 --store-dir "$DISK"
bench vits8_keys_u8zstd_disk_w4 --backbone dino_vits8 --repeat 8 --facets keys --writers 4 --store-dir "$DISK" \
    --quantize uint8 --compress zstd
bench dinov2_keys_disk_w4 --backbone dinov2_vits14 --repeat 16 --facets keys --writers 4 --store-dir "$DISK" --profile
