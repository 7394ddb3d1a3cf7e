# veil: `make demo` and `make test` are the two commands of the README's Quick start.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP_RUN := $(VENV)/.installed
STAMP_DEV := $(VENV)/.installed-dev
# checkov (Kubernetes manifest checks) pins dependencies the project's own would conflict
# with: it gets a virtual environment of its own, used by tests/integration/test_kubernetes_manifests.py
TOOLS  := .venv-tools
CHECKOV_VERSION := 3.3.30
STAMP_TOOLS := $(TOOLS)/.installed-checkov-$(CHECKOV_VERSION)

.PHONY: demo install test lint unit os-packages clean help images bench-volume bench-evidence bench-shield bench-cas

help:
	@echo "make demo   - install into .venv and run examples/quickstart on the embedded CAS (sim mode)"
	@echo "make install [PREFIX=/usr/local] - put veil on PATH: a link PREFIX/bin/veil to .venv/bin/veil"
	@echo "make test   - install dev dependencies and OS packages (as root), lint, run the whole suite"
	@echo "make lint   - ruff and mypy --strict"
	@echo "make images - the veil-cas and veil-las container images (OCI layouts, docker-archive tars) in build/images"
	@echo "make clean  - remove .venv and demo state"

$(STAMP_RUN): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e .
	@touch $@

$(STAMP_DEV): $(STAMP_RUN)
	$(BIN)/pip install -q -e '.[dev]'
	@touch $@

$(STAMP_TOOLS):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install -q checkov==$(CHECKOV_VERSION)
	@touch $@

PREFIX ?= /usr/local

demo: $(STAMP_RUN)
	bash examples/quickstart/run.sh
	@echo
	@echo "veil is installed in $(CURDIR)/$(BIN)/veil. To type 'veil' (and 'sudo veil'):"
	@echo "  make install            # links $(PREFIX)/bin/veil (as root; PREFIX=~/.local for yourself)"
	@echo "  or: export PATH=\"$(CURDIR)/$(BIN):\$$PATH\""

install: $(STAMP_RUN)
	mkdir -p $(PREFIX)/bin
	ln -sf $(CURDIR)/$(BIN)/veil $(PREFIX)/bin/veil
	@echo "veil -> $(PREFIX)/bin/veil ($$($(PREFIX)/bin/veil --version))"

os-packages:
	@bash scripts/install-os-packages

LINT_DIRS := $(wildcard src tests bench examples)

lint: $(STAMP_DEV)
	$(BIN)/ruff check $(LINT_DIRS)
	$(BIN)/ruff format --check $(LINT_DIRS)
	$(BIN)/mypy src

test: $(STAMP_DEV) $(STAMP_TOOLS) os-packages lint
	$(BIN)/pytest

images: $(STAMP_RUN) os-packages
	$(BIN)/python scripts/build_images.py --out build/images

bench-evidence: $(STAMP_DEV)
	$(BIN)/python bench/evidence.py

bench-volume: $(STAMP_DEV)
	@bash scripts/install-os-packages scripts/bench-packages.txt
	$(BIN)/python bench/volume.py
	$(BIN)/python bench/freshness.py

bench-cas: $(STAMP_DEV)
	$(BIN)/python bench/cas.py

bench-shield: $(STAMP_DEV)
	@bash scripts/install-os-packages scripts/bench-packages.txt
	$(BIN)/python bench/shield.py

clean:
	rm -rf $(VENV) $(TOOLS) build/images .veil-demo .veil-demo-network .veil-demo-multi-party .veil-demo-remote .pytest_cache .mypy_cache .ruff_cache
