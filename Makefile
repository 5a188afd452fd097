# The two commands of the README: `make demo` and `make test`. Each sets up its own venv.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --quiet --disable-pip-version-check -c constraints-cpu.txt
RUN ?= runs/demo
ARTIFACT ?= runs/demo-artifact
HOST ?= 127.0.0.1
PORT ?= 8000
DEMO_TIME ?= 3m

.PHONY: demo test lint install-dev install-demo bench clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

# The CPU build of torch is pinned by constraints-cpu.txt (see README for GPU installs).
$(VENV)/.dev-installed: pyproject.toml constraints-cpu.txt | $(VENV)/bin/python
	$(PIP) torch==2.13.0
	$(PIP) -e '.[dev]'
	touch $@

$(VENV)/.demo-installed: pyproject.toml constraints-cpu.txt | $(VENV)/bin/python
	$(PIP) torch==2.13.0
	$(PIP) -e '.[train,export,serve]'
	touch $@

install-dev: $(VENV)/.dev-installed
install-demo: $(VENV)/.demo-installed

lint: $(VENV)/.dev-installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy service

test: lint
	$(VENV)/bin/pytest -q

# Train a small model on the embedded corpus unless one exists, export it, serve it.
demo: $(VENV)/.demo-installed
	@if [ ! -f $(RUN)/model.safetensors ]; then \
	  $(VENV)/bin/bert-pretrain --out $(RUN) --overwrite --preset mini --time-budget $(DEMO_TIME) \
	    --vocab-size 8000 --max-seq-len 128 --batch-size 32 --lr 1e-3 --warmup-steps 50 \
	    --eval-every 100 --save-every 100; \
	else echo "reusing the model in $(RUN) (delete it to retrain)"; fi
	@if [ ! -f $(ARTIFACT)/manifest.json ]; then $(VENV)/bin/bert-export $(RUN) $(ARTIFACT) --overwrite; \
	else echo "reusing the artifact in $(ARTIFACT)"; fi
	@echo ""
	@echo "Starting bert-serve on http://$(HOST):$(PORT) (Ctrl-C to stop). Try, in another shell:"
	@echo "  curl -s http://$(HOST):$(PORT)/embed -H 'content-type: application/json' -d '{\"inputs\": [\"Hello world\", \"你好，世界\"]}'"
	@echo "  curl -s http://$(HOST):$(PORT)/fill-mask -H 'content-type: application/json' -d '{\"inputs\": \"The [MASK] of the function is returned.\"}'"
	@echo "  curl -s http://$(HOST):$(PORT)/metrics | grep bertserve_"
	@echo ""
	$(VENV)/bin/bert-serve --model $(ARTIFACT) --host $(HOST) --port $(PORT)

bench: $(VENV)/.dev-installed
	$(PY) bench/train_throughput.py --preset mini --seq-len 128 --batch-size 32
	$(PY) bench/export_speed.py
	$(PY) bench/serve_throughput.py

clean:
	rm -rf $(VENV) runs
