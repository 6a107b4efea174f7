"""Running a suite: which runs are done, which to run, progress, and the suite's status.

Guarantees
----------
* A run is skipped when its record exists with the same configuration hash and status
  ``completed`` or ``diverged`` (a divergence is a result: the same configuration diverges again).
  A ``failed`` run is rerun only with ``retry_failed``; a missing one always runs, resuming from
  its checkpoint when an earlier attempt was interrupted.
* Task data are prepared once, in this process, before any worker starts, so workers never
  generate the same data cache concurrently.
* Ctrl-C stops the workers; completed records stay, interrupted runs keep their last checkpoint.
"""

from __future__ import annotations

import fnmatch
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from benchmark.config import ConfigError
from benchmark.fileio import quarantine
from benchmark.provenance import portable_command
from benchmark.record import STATUSES, read_or_quarantine, record_path, write_json_atomic
from benchmark.suite.spec import Cell, PlannedRun, Spec

__all__ = ["DataPreparationError", "Estimate", "estimate", "measured_step_times", "Plan", "plan_suite", "parse_only", "ONLY_KEYS", "prepare_data", "run_suite", "cell_status", "format_status",
           "write_manifest", "SuiteResult", "STATES"]

STATES = STATUSES + ("missing",)


def existing_status(results: Path, run: PlannedRun) -> str:
    """``completed``/``diverged``/``failed`` from the run's record, or ``missing``.

    A file in the record's place that is not a valid record of this run is moved to
    ``quarantine/`` beside it with one warning, and the run counts as missing (it reruns)."""
    path = record_path(results, run.cfg)
    if not path.is_file():
        return "missing"
    record = read_or_quarantine(path)
    if record is None:
        return "missing"
    if record["config"]["hash"] != run.cfg.hash:
        quarantine(path, f"holds the record of configuration {record['config']['hash']}, not {run.cfg.hash}")
        return "missing"
    return record["status"]


@dataclass
class Plan:
    spec: Spec
    runs: list[PlannedRun]
    states: dict[str, str]                  # run_id -> state before running
    todo: list[PlannedRun]

    def counts(self) -> Counter:
        return Counter(self.states.values())


ONLY_KEYS = ("task", "backbone", "method", "seed", "train_size")


def parse_only(items: list[str] | None) -> dict[str, list[str]]:
    """``["backbone=segnn", "method=ace-*,strict"]`` as ``{key: [patterns]}`` (keys: ONLY_KEYS)."""
    only: dict[str, list[str]] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in ONLY_KEYS or not value.strip():
            raise ConfigError(f"--only {item!r}: expected KEY=PATTERN[,PATTERN...] with KEY one of "
                              f"{', '.join(ONLY_KEYS)}")
        only.setdefault(key, []).extend(v.strip() for v in value.split(",") if v.strip())
    return only


def _selected(run: PlannedRun, only: dict[str, list[str]]) -> bool:
    cfg = run.cfg
    return all(any(fnmatch.fnmatchcase(str(getattr(cfg, key)), pattern) for pattern in patterns)
               for key, patterns in only.items())


def plan_suite(spec: Spec, results: Path, *, retry_failed: bool = False,
               only: dict[str, list[str]] | None = None) -> Plan:
    """The suite's runs (those matching ``only``, a part of the grid, if given) and their states."""
    runs = [run for run in spec.runs() if not only or _selected(run, only)]
    states = {run.run_id: existing_status(results, run) for run in runs}
    rerun = {"missing", "failed"} if retry_failed else {"missing"}
    todo = [run for run in runs if states[run.run_id] in rerun]
    return Plan(spec, runs, states, todo)


class DataPreparationError(RuntimeError):
    """A task's data could not be prepared (generated, verified); the message is one line."""


def prepare_data(runs: list[PlannedRun], *, progress: bool = True) -> int:
    """Build the task of each distinct task configuration once (generating its data if needed)."""
    from benchmark.registry import TASKS
    from benchmark.train import DTYPES
    seen = set()
    for run in runs:
        cfg = run.cfg
        key = (cfg.task, repr(cfg.task_cfg), cfg.train.dtype)
        if key in seen:
            continue
        seen.add(key)
        task_cls = TASKS.get(cfg.task).obj
        try:
            task_cls(cfg.task_cfg, train_size=cfg.train_size, dtype=DTYPES[cfg.train.dtype], progress=progress)
        except (KeyboardInterrupt, MemoryError):
            raise
        except Exception as exc:  # noqa: BLE001 - one line, before any worker starts
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise DataPreparationError(f"data of task {cfg.task} ({run.run_id}): {text}") from exc
    return len(seen)


def write_manifest(spec: Spec, plan: Plan, results: Path, command: list[str]) -> Path:
    """``<results>/suites/<name>.json``: the suite's protocol, headlines and the run ids of the whole
    grid (also when ``plan`` covers only a part of it)."""
    runs = spec.runs()
    data = {**spec.summary(), "runs": [run.run_id for run in runs], "command": portable_command(command),
            # the task with the settings a grid varies (nbody-field[eps=0.1]): one table per value
            "task_labels": {run.run_id: run.cell.task_label for run in runs if run.cell.task_settings}}
    return write_json_atomic(Path(results) / "suites" / f"{spec.name}.json", data)


@dataclass
class SuiteResult:
    outcomes: dict = field(default_factory=dict)       # run_id -> Outcome
    interrupted: bool = False
    seconds: float = 0.0

    def failed(self) -> list:
        return [o for o in self.outcomes.values() if o.status != "completed"]


class _Progress:
    """One bar over the suite: runs done, running, failed, estimated time left."""

    def __init__(self, total: int, name: str, skipped: int, enabled: bool):
        self.running = 0
        self.failed = 0
        self.skipped = skipped
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm
            self.bar = tqdm(total=total, desc=f"suite {name}", unit="run", file=sys.stderr, dynamic_ncols=True)
            self._postfix()

    def _postfix(self) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(f"running={self.running} failed={self.failed} skipped={self.skipped}")

    def started(self, job) -> None:
        self.running += 1
        self._postfix()

    def finished(self, job, outcome) -> None:
        self.running = max(0, self.running - 1)
        if outcome.status == "running":
            self.skipped += 1
            if self.bar is not None:
                self.bar.write(f"{job.run_id}: skipped, {outcome.reason}", file=sys.stderr)
        elif outcome.status != "completed":
            self.failed += 1
            if self.bar is not None:
                self.bar.write(f"{job.run_id}: {outcome.status} ({outcome.reason})", file=sys.stderr)
        self._postfix()
        if self.bar is not None:
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run_suite(plan: Plan, executor, *, progress: bool = True,
              on_finished: Callable | None = None) -> SuiteResult:
    """Run ``plan.todo`` on ``executor`` with a progress bar; Ctrl-C propagates after cleanup."""
    result = SuiteResult()
    bar = _Progress(len(plan.todo), plan.spec.name, len(plan.runs) - len(plan.todo), progress and bool(plan.todo))
    start = time.perf_counter()

    def finished(job, outcome):
        result.outcomes[job.run_id] = outcome
        bar.finished(job, outcome)
        if on_finished is not None:
            on_finished(job, outcome)

    try:
        if plan.todo:
            executor.run(plan.todo, bar.started, finished)
    except KeyboardInterrupt:
        result.interrupted = True
        raise
    finally:
        bar.close()
        result.seconds = time.perf_counter() - start
    return result


# -- status -------------------------------------------------------------------------------------
def cell_status(spec: Spec, results: Path) -> dict[Cell, Counter]:
    """Per cell: how many seeds are completed / diverged / failed / missing."""
    out: dict[Cell, Counter] = {}
    for run in spec.runs():
        out.setdefault(run.cell, Counter())[existing_status(results, run)] += 1
    return out


def format_status(status: dict[Cell, Counter]) -> str:
    headers = ("task", "backbone", "method", "train size") + STATES
    rows = [(c.task_label, c.backbone, c.method, str(c.train_size)) + tuple(str(n[s]) for s in STATES)
            for c, n in status.items()]
    total = Counter()
    for n in status.values():
        total.update(n)
    rows.append(("total", "", "", "") + tuple(str(total[s]) for s in STATES))
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    line = lambda cells: "  ".join(c.ljust(w) if i < 4 else c.rjust(w)  # noqa: E731
                                   for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([line(headers), line(tuple("-" * w for w in widths))] + [line(r) for r in rows])


# -- cost ---------------------------------------------------------------------------------------
@dataclass
class Estimate:
    """Training and evaluation time of some runs, from what earlier runs' records measured."""

    seconds: float = 0.0              # training steps, summed over the runs that have a measurement
    measured: int = 0                 # runs with a measured step time of their kind
    unmeasured: int = 0               # runs without one (not counted in ``seconds``)
    records: int = 0                  # records the step times come from
    eval_seconds: float = 0.0         # evaluations (and the rest of a run outside its steps)

    def describe(self, workers: int = 1) -> str:
        if not self.measured:
            return "no estimate (no record of these backbones and methods has a measured step time yet)"
        total = self.seconds + self.eval_seconds
        hours = total / 3600
        text = f"about {hours:.1f} CPU-hours" if hours >= 0.1 else f"about {total / 60:.0f} CPU-minutes"
        text += f" ({self.seconds / 3600:.1f} h of training steps, {self.eval_seconds / 3600:.1f} h of " \
                "evaluation and the rest of a run)"
        if workers > 1:
            text += f", about {hours / workers:.1f} h on {workers} workers"
        text += f", from the median step times and per-evaluation costs of {self.records} records"
        if self.unmeasured:
            text += f"; {self.unmeasured} runs have no measurement and are not counted"
        return text + "; compilation comes on top"


def measured_step_times(results: Path, *, device: str = "cpu") -> tuple[dict[tuple, list[float]], int]:
    """Per (task, backbone, method, width): the median step times completed records under
    ``results`` measured on ``device`` (provenance segments); and how many records gave one."""
    from benchmark.record import iter_records
    import statistics
    times: dict[tuple, list[float]] = {}
    records = 0
    for _, rec in iter_records(results):
        if rec["status"] != "completed":
            continue
        segments = [seg for seg in (rec["provenance"].get("segments") or [])
                    if seg.get("device") == device and seg.get("median_step_seconds")]
        if segments:
            step = statistics.median(seg["median_step_seconds"] for seg in segments)
        elif not rec["provenance"].get("segments") and rec["provenance"].get("device") == device \
                and rec["timing"].get("median_step_seconds"):
            step = rec["timing"]["median_step_seconds"]     # a record from before segments were kept
        else:
            continue
        records += 1
        key = (rec["task"], rec["backbone"], rec["method"], rec["config"]["resolved"].get("model_cfg", {}).get("hidden"))
        times.setdefault(key, []).append(step)
        # the run's time outside its training steps, per evaluation (the last one carries the test
        # pass and the setting up); kept under the key with an "eval" tag
        timing, n_evals = rec["timing"], len(rec.get("curves") or [])
        if n_evals and timing.get("wall_seconds") and timing.get("train_seconds") is not None:
            rest = max(timing["wall_seconds"] - timing["train_seconds"], 0.0) / n_evals
            times.setdefault(("eval",) + key, []).append(rest)
    return times, records


def estimate(runs: list[PlannedRun], results: Path, *, device: str = "cpu",
             measured: tuple[dict[tuple, list[float]], int] | None = None) -> Estimate:
    """Time of ``runs``: each run's steps times the median step time that completed records of the
    same task, backbone, method and width measured on ``device``, plus its evaluations times their
    median cost per evaluation in those records (the run's wall time outside its steps, divided by
    its evaluations). ``measured``:
    :func:`measured_step_times` read once for several estimates."""
    import statistics
    times, records = measured if measured is not None else measured_step_times(results, device=device)
    out = Estimate(records=records)
    for run in runs:
        cfg = run.cfg
        key = (cfg.task, cfg.backbone, cfg.method, getattr(cfg.model_cfg, "hidden", None))
        if key not in times:
            out.unmeasured += 1
            continue
        per_epoch = cfg.train_size // cfg.train.batch_size if cfg.train.drop_last \
            else -(-cfg.train_size // cfg.train.batch_size)
        out.seconds += cfg.train.epochs * max(per_epoch, 1) * statistics.median(times[key])
        out.measured += 1
        if ("eval",) + key in times:
            evaluations = -(-cfg.train.epochs // cfg.train.eval_every)
            out.eval_seconds += evaluations * statistics.median(times[("eval",) + key])
    return out
