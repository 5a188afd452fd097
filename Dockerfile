# bert-serve images. The service needs no torch and no training code.
#   CPU: docker build -t bertserve .
#   GPU: docker build -t bertserve:gpu \
#          --build-arg RUNTIME_BASE=nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04 --build-arg EXTRA=gpu .
#   run: docker run -p 8000:8000 -v "$PWD/runs/demo-artifact:/models:ro" bertserve
ARG RUNTIME_BASE=python:3.11-slim

FROM python:3.11-slim AS wheel
WORKDIR /src
COPY pyproject.toml README.md ./
# one wheel holds every stage (under bertserve.*); the [serve] extra installs only the service's
# dependencies, and bert-pretrain / bert-export then say which extra they need
COPY bertserve/ bertserve/
COPY service/ service/
COPY export/ export/
COPY training/ training/
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM ${RUNTIME_BASE} AS runtime
ARG EXTRA=serve
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    BERTSERVE_MODEL=/models \
    BERTSERVE_HOST=0.0.0.0 \
    BERTSERVE_PORT=8000 \
    PATH=/opt/venv/bin:$PATH
# CUDA bases ship without Python; the slim base already has it.
# hadolint ignore=DL3008
RUN if ! command -v python3 >/dev/null; then \
      apt-get update && apt-get install -y --no-install-recommends python3 python3-venv \
      && rm -rf /var/lib/apt/lists/*; \
    fi \
    && python3 -m venv /opt/venv
COPY --from=wheel /wheels /wheels
RUN pip install --no-cache-dir "$(ls /wheels/bertserve-*.whl)[${EXTRA}]" && rm -rf /wheels \
    && useradd --system --uid 10001 --no-create-home bertserve
USER 10001
EXPOSE 8000
VOLUME ["/models"]
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
  CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen(f\"http://127.0.0.1:{os.environ.get('BERTSERVE_PORT', '8000')}/ready\", timeout=2)"]
ENTRYPOINT ["bert-serve"]
