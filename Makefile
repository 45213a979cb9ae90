# The two commands: `make demo` runs the main job on its embedded default; `make test` runs the suite.
# Both create or reuse .venv and install what they need.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint install bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/worldsim demo

# ruff (lint + format) and mypy, alone; `make test` runs them first and stops on a finding.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	@mkdir -p build/typecheck && ln -sfn ../../worldsim build/typecheck/worldsim \
		&& ln -sfn ../../plugins build/typecheck/worldsim_plugins && ln -sfn ../../envs build/typecheck/worldsim_envs
	$(BIN)/mypy

test: lint
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python benchmarks/train_throughput.py
	$(BIN)/python benchmarks/backbones.py

clean:
	rm -rf $(VENV) runs .pytest_cache
