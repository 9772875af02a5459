# Two commands on a fresh machine:  `make run` (set up, then the main job)  and  `make test` (the whole suite).
# Any torch 2.4-2.14 works: `make run TORCH=torch` takes pip's choice (2.13.0 is the CPU wheel this project pins).
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test docs

$(BIN)/adapt: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check "$(TORCH)"
	$(BIN)/pip install --quiet --disable-pip-version-check -e ".[test,docs]"
	touch $@

run: $(BIN)/adapt
	$(BIN)/adapt run recipes/lora-sst2.toml

test: $(BIN)/adapt
	$(BIN)/pytest

docs: $(BIN)/adapt
	$(BIN)/mkdocs build --strict
