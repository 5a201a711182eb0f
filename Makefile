# `make demo` and `make test` each build .venv on first use, then do their job.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# Torch comes first and pinned, so no later install pulls a different (multi-GB) build.
TORCH := torch==2.14.1 torchvision==0.29.1
PACKAGES := $(wildcard packages/nft-*)
STAMP := $(VENV)/.nft-installed
MMDET_STAMP := $(VENV)/.nft-mmdet
# `make test` also installs mmdet (its compiled mmcv is built once and cached: the first build
# takes about 7 minutes on 2 cores). `make test SKIP_MMDET=1` leaves it out; its tests then skip.
SKIP_MMDET ?= 0

.PHONY: venv mmdet demo test bench clean

venv: $(STAMP)

$(STAMP): $(wildcard packages/*/pyproject.toml) Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet $(TORCH)
	$(PIP) install --quiet $(foreach p,$(PACKAGES),-e $(p)[test]) pytest matplotlib
	touch $(STAMP)

mmdet: $(MMDET_STAMP)

$(MMDET_STAMP): $(STAMP) scripts/build_mmcv.sh
	PYTHON=$(PY) bash scripts/build_mmcv.sh
	touch $(MMDET_STAMP)

demo: venv
	$(PY) scripts/demo.py

test: venv $(if $(filter 1,$(SKIP_MMDET)),,mmdet)
	$(PY) -m pytest -q

bench: venv
	$(PY) benchmarks/run.py

clean:
	rm -rf $(VENV) .pytest_cache
