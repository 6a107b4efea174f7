# relaxbench: set up, run the main job, test.
#   make setup quick     # a virtual environment with everything, then the `quick` suite (into build/quick)
#   make setup test      # the same environment, then every test
PYTHON ?= python3
VENV ?= .venv
# The CPU build of torch; any torch >= 2.1 works (pyproject keeps the range open).
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: setup quick test test-fast test-slow lint clean leaderboard

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

setup: $(BIN)/python
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)" "numpy<2" "pandas<3"
	$(BIN)/python -m pip install --quiet -e ".[dev]"

quick:
	$(BIN)/relaxbench suite run quick --results build/quick

test:
	$(BIN)/python -m pytest -q -m "slow or not slow" --doctest-modules tests benchmark baselines

test-fast:
	$(BIN)/python -m pytest -q -m "not slow" --doctest-modules tests benchmark baselines

test-slow:
	$(BIN)/python -m pytest -q -m slow

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
