#!/usr/bin/env bash
# One short GPU session: CUDA training-step throughput and MFU (bf16 + SDPA), ours vs
# transformers, an end-to-end bert-pretrain run on CUDA, and which ORT providers exist.
# Usage on a GPU machine: OUT=/some/dir bash bench/gpu_check.sh
set -uo pipefail
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 BERTSERVE_CACHE=/tmp/bertserve-cache
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch, onnxruntime as ort, transformers; print('torch', torch.__version__, 'ort', ort.__version__, ort.get_available_providers(), 'transformers', transformers.__version__)"
} 2>&1 | tee "$OUT/env.txt"
timeout 150 python3 bench/train_throughput.py --device cuda --preset base --batch-size 64 \
  --seq-len 128 --iters 10 --rounds 3 --compile --json "$OUT/base.json" 2>&1 | grep -v Warning | tee "$OUT/base.txt"
timeout 60 python3 bench/train_throughput.py --device cuda --preset mini --batch-size 128 \
  --seq-len 128 --iters 10 --rounds 3 --json "$OUT/mini.json" 2>&1 | grep -v Warning | tee "$OUT/mini.txt"
timeout 120 python3 -m bertserve.training --device cuda --corpus tests/data/english.txt tests/data/chinese.txt \
  --out /tmp/gpu-run --preset base --max-steps 150 --batch-size 64 --max-seq-len 128 \
  --lr 2e-4 --warmup-steps 20 --log-every 50 --eval-every 150 --save-every 100 --no-progress --compile \
  2>&1 | grep -v Warning | tail -8 | tee "$OUT/e2e.txt"
tail -3 /tmp/gpu-run/metrics.jsonl >> "$OUT/e2e.txt" 2>/dev/null
timeout 60 python3 -m bertserve.training --resume /tmp/gpu-run --max-steps 160 --no-progress 2>&1 | tail -2 | tee -a "$OUT/e2e.txt"
