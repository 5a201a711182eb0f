# `make demo` and `make test` each build .venv on first use, then do their job.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# Torch comes first and pinned, so no later install pulls a different (multi-GB) build.
TORCH := torch==2.14.1 torchvision==0.29.1
PACKAGES := $(wildcard packages/nft-*)
STAMP := $(VENV)/.nft-installed

.PHONY: venv demo test bench clean

venv: $(STAMP)

$(STAMP): $(wildcard packages/*/pyproject.toml) Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet $(TORCH)
	$(PIP) install --quiet $(foreach p,$(PACKAGES),-e $(p)[test]) pytest matplotlib
	touch $(STAMP)

demo: venv
	$(PY) scripts/demo.py

test: venv
	$(PY) -m pytest -q

bench: venv
	$(PY) benchmarks/run.py

clean:
	rm -rf $(VENV) .pytest_cache
