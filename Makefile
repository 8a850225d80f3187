# `make test` and `make demo` set everything up themselves on a fresh machine (Python >= 3.10 and
# pip access to the package registry are all they need).
VENV ?= .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE := 1

.PHONY: install test demo bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $@

test: install
	$(PY) -m pytest

demo: install
	$(PY) -m latentcot demo

bench: install
	$(PY) benchmarks/engine.py

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
