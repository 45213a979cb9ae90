# The two commands: `make demo` runs the main job on its embedded default; `make test` runs the suite.
# Both create or reuse .venv and install what they need.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint docs install bench clean d4rl chromium gpu-check

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

# The pages in docs/ (mkdocs.yml), built with mkdocs-material in strict mode: a broken link or anchor fails.
DOCS_STAMP := $(VENV)/.docs-installed
$(DOCS_STAMP): $(STAMP)
	$(BIN)/pip install -q -c constraints.txt -e '.[docs]'
	touch $(DOCS_STAMP)

docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict -d build/site

test: lint docs chromium
	$(BIN)/python -m pytest -q

# Headless Chromium for tests/test_play_browser.py: Debian's package, installed where it is missing (as root, or
# through sudo). Where it cannot be installed the test is skipped, except in CI, where it fails.
chromium:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || { \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		echo "installing Debian's chromium for the browser test"; \
		$$SUDO apt-get install -y -q --no-install-recommends chromium >/dev/null 2>&1 \
		|| { $$SUDO apt-get update -q >/dev/null 2>&1 && $$SUDO apt-get install -y -q --no-install-recommends chromium >/dev/null; } \
		|| echo "could not install chromium: the browser test is skipped (and fails in CI)"; }

bench: $(STAMP)
	$(BIN)/python benchmarks/train_throughput.py
	$(BIN)/python benchmarks/backbones.py

# The CUDA path in one call: every backbone trained (bf16 autocast, torch.compile), the shipped planner and video
# model, cached vs uncached rollouts; a table of throughput and peak memory, non-zero exit on any failure.
# `make gpu-check ARGS=--cpu` runs the same items on the CPU on tiny shapes (fp32, no compile), as CI does.
gpu-check: $(STAMP)
	$(BIN)/python benchmarks/gpu_check.py $(ARGS)

# The original D4RL maze2d envs (MuJoCo 2.1 through mujoco-py, gym 0.23), optional and apart from worldsim's own venv:
# `worldsim plan NAME --env d4rl:maze2d-umaze-v1` runs them in a subprocess of $(D4RL_VENV). Nothing is downloaded
# but packages: free-mujoco-py ships MuJoCo 2.1 in its wheel; its extension compiles on first import (~3 minutes).
# Needs root for apt-get (OSMesa headers and patchelf, which mujoco-py's build uses). Not part of `make test` or CI.
D4RL_VENV := .venv-d4rl
$(D4RL_VENV)/.installed:
	apt-get update -q && apt-get install -y -q libosmesa6-dev patchelf
	$(PY) -m venv $(D4RL_VENV)
	$(D4RL_VENV)/bin/pip install -q "numpy<2" gym==0.23.1 "Cython<3" "cffi<2" fasteners==0.15 "glfw<2" "imageio<3" h5py termcolor click tqdm
	$(D4RL_VENV)/bin/pip install -q --no-deps --ignore-requires-python free-mujoco-py==2.1.6
	$(D4RL_VENV)/bin/pip install -q --no-deps d4rl==1.1
	$(D4RL_VENV)/bin/python -c "import mujoco_py"
	$(D4RL_VENV)/bin/python -c "import gym, d4rl.pointmaze; gym.make('maze2d-umaze-v1').reset()"
	touch $@

d4rl: $(D4RL_VENV)/.installed

clean:
	rm -rf $(VENV) $(D4RL_VENV) runs .pytest_cache
