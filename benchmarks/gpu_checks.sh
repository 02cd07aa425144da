#!/usr/bin/env bash
# The GPU measurements of docs/benchmarks.md in one run (a lent GPU machine is held for minutes, not hours).
#
#   bash benchmarks/gpu_checks.sh [HORSE_DIR] [KEYS_STORE] [LOG_DIR]
#
# HORSE_DIR holds images/*.jpg (default ../shared/data/weizmann-horse); KEYS_STORE is the DINOv2 key store that
# bench_eigensolver.py extracts at 392 px (default resources/cache/bench_horse_keys_392.zarr); logs and the
# profiler table go to LOG_DIR (default $OUT, else /tmp). Each step runs even when an earlier one fails. Needs
# torch, timm, zarr and pycocotools importable (PYTHONPATH gets src/ prepended; on a bare GPU image install the
# zarr, numcodecs, donfig, google-crc32c and pycocotools wheels first).
set -u
HORSES=${1:-../shared/data/weizmann-horse}
STORE=${2:-resources/cache/bench_horse_keys_392.zarr}
LOGS=${3:-${OUT:-/tmp}}
PYTHON=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH}
mkdir -p "$LOGS"

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$PYTHON" -c "import torch, timm, zarr; print('torch', torch.__version__, 'timm', timm.__version__, 'zarr', zarr.__version__)"

# Eigensolver: accuracy against exact float64 spectra, reference timing on one CPU thread, GPU throughput, for
# both orthonormalizations of the Krylov blocks (batched Householder QR may loop over the batch on CUDA).
for k in 10 5 20; do
  for method in householder cholesky; do
    batches="256 1024 4096"; profile=()
    [ "$k" = 10 ] && batches="64 256 1024 4096 8192" && profile=(--profile "$LOGS/eigensolver_profile_k10_$method.txt")
    OMP_NUM_THREADS=1 timeout 200 "$PYTHON" benchmarks/bench_eigensolver.py --images 48 --k "$k" --store "$STORE" \
        --data "$HORSES" --reference-images 16 --throughput-batch $batches --orthonormalization "$method" \
        "${profile[@]}" 2>&1 | grep -v '^USDT' | tee "$LOGS/eigensolver_k${k}_$method.log"
  done
done

# Feature stage: end to end vs the bare forward, ViT-S/8 at 448 px (56 x 56 tokens), random weights (timing only).
timeout 300 "$PYTHON" benchmarks/bench_features.py --backbone dino_vits8 --weights random --resolution 448 \
    --images "$HORSES/images/*.jpg" --limit 328 --repeat 8 --layout crop --batch-size 64 --workers 12 \
    --writers 4 --facets keys,cls,attn --store-dir /tmp 2>&1 | tee "$LOGS/features_vits8.log"
