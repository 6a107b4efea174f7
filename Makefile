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

# the images extra (escnn) builds py3nj, which needs a Fortran compiler: say so in one line, not a pip traceback
setup: $(BIN)/python
	@$(BIN)/python -c "import py3nj" 2>/dev/null || command -v gfortran >/dev/null || { echo "make setup: escnn (the images extra) needs py3nj, which builds only with a Fortran compiler: install the system package gfortran (Debian/Ubuntu: apt-get install gfortran; macOS: brew install gcc)" >&2; exit 2; }
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)" "numpy<2" "pandas<3"
	$(BIN)/python -m pip install --quiet -e ".[dev,images]"

# the quick suite trained afresh into build/quick, then checked run by run against the shipped records
quick:
	$(BIN)/relaxbench suite run quick --results build/quick
	$(BIN)/relaxbench suite compare quick --results build/quick --reference results --rtol 0.03

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
