# The two commands of the README: `make demo` and `make test`. Each sets up its own venv.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --quiet --disable-pip-version-check -c constraints-cpu.txt
RUN ?= runs/demo
ARTIFACT ?= runs/demo-artifact
HOST ?= 127.0.0.1
PORT ?= 8000
DEMO_TIME ?= 10m
# the defaults are the best recipe of bench/pretrain_quality.py (MLM only, warmup-stable-decay,
# bf16 where the CPU has it); a small vocabulary suits the small model and corpus; at lr 1e-3
# this corpus stayed at the unigram plateau (held-out accuracy 0.045 with the training masking after 800 steps), at 5e-4
# it left it within 200 steps
DEMO_RECIPE ?= --preset mini --vocab-size 8000 --max-seq-len 128 --batch-size 32 --lr 5e-4 \
  --warmup-steps 100 --eval-fraction 0.02 --eval-every 200 --save-every 200
DEMO_SETTINGS := $(DEMO_RECIPE) --time-budget $(DEMO_TIME)

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

# Train a small model on the shipped corpus unless one was trained with these very settings
# (DEMO_TIME=5m make demo retrains), export it unless the artifact is newer, serve it.
demo: $(VENV)/.demo-installed
	@if [ -f $(RUN)/model.safetensors ] && [ "$$(cat $(RUN).settings 2>/dev/null)" = "$(DEMO_SETTINGS)" ]; then \
	  echo "reusing the model in $(RUN), trained with these settings (delete it to retrain)"; \
	else \
	  $(VENV)/bin/bert-pretrain --out $(RUN) --overwrite $(DEMO_SETTINGS) \
	  && echo "$(DEMO_SETTINGS)" > $(RUN).settings; \
	fi
	@if [ -f $(ARTIFACT)/manifest.json ] && [ $(ARTIFACT)/manifest.json -nt $(RUN)/model.safetensors ]; then \
	  echo "reusing the artifact in $(ARTIFACT)"; \
	else $(VENV)/bin/bert-export $(RUN) $(ARTIFACT) --overwrite; fi
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
