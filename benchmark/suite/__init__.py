"""Suites: grids of benchmark runs from a YAML specification, run on a local pool or a cluster.

``spec`` loads and validates a specification and expands its grid; ``runner`` decides what is
already done, runs the rest with a progress bar and reports a suite's status; ``executors``
holds the local process pool and the submitit executors (local processes and Slurm).
"""

from benchmark.suite.executors import EXECUTORS, make_executor
from benchmark.suite.runner import cell_status, plan_suite, prepare_data, run_suite
from benchmark.suite.spec import Cell, PlannedRun, Spec, SpecError, load_spec, parse_spec, shipped_suites

__all__ = ["Spec", "SpecError", "Cell", "PlannedRun", "load_spec", "parse_spec", "shipped_suites", "plan_suite",
           "prepare_data", "run_suite", "cell_status", "make_executor", "EXECUTORS"]
