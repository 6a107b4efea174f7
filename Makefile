# relaxbench: set up, run the main job, test.
#   make setup quick     # a virtual environment with everything, then the `quick` suite (into build/quick),
#                        # checked against the shipped records
#   make setup test      # the same environment, then every test
PYTHON ?= python3
VENV ?= .venv
# The CPU build of torch; any torch >= 2.1 works (pyproject keeps the range open).
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: setup quick test test-fast test-slow clean leaderboard

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

setup: $(BIN)/python
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)" "numpy<2" "pandas<3"
	$(BIN)/python -m pip install --quiet -e ".[dev]"

# the quick suite trained afresh into build/quick, then checked run by run against the shipped records
quick:
	$(BIN)/relaxbench suite run quick --results build/quick
	$(BIN)/relaxbench suite compare quick --results build/quick --reference results

test:
	$(BIN)/python -m pytest -q -m "slow or not slow" --doctest-modules tests benchmark baselines

test-fast:
	$(BIN)/python -m pytest -q -m "not slow" --doctest-modules tests benchmark baselines

test-slow:
	$(BIN)/python -m pytest -q -m slow

# every suite's tables and figures, and the leaderboard in results/README.md, regenerated from the records
leaderboard:
	$(BIN)/relaxbench report --results results --readme results/README.md

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
