"""Where a suite's runs execute: a local process pool, or submitit (locally or on Slurm).

Every executor calls the same job function, :func:`execute`, which rebuilds the run's configuration
from its picklable arguments, trains it with :func:`benchmark.train.train` and writes the record
into the shared results tree. Records therefore look the same whichever executor produced them,
and a suite can be started on one machine and finished on another.

Guarantees
----------
* ``local``: at most ``workers`` runs at once, each process limited to ``cores // workers`` torch
  threads. Workers ignore Ctrl-C; the parent stops them, and they exit by themselves when the
  parent is killed, so only the runs in flight lose the work since their last checkpoint
  (``train`` resumes from it next time).
* ``submitit-local`` runs the same job function in submitit's local processes (same throttling);
  ``slurm`` submits one job array with ``array_parallelism = workers``. Interrupting the parent of
  a Slurm suite leaves the jobs running on the cluster.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

__all__ = ["execute", "Outcome", "Executor", "LocalPoolExecutor", "SubmititExecutor", "make_executor",
           "EXECUTORS", "available_cores"]

EXECUTORS = ("local", "submitit-local", "slurm")


def available_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _limit_threads(threads: int | None) -> None:
    if not threads:
        return
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)
    import torch
    torch.set_num_threads(threads)


@dataclass
class Outcome:
    """What the parent learns about a finished run (the record itself is on disk)."""

    run_id: str
    status: str                 # completed / diverged / failed / error (no record was written) /
                                # running (another live process holds the run; nothing written)
    reason: str | None = None
    wall_seconds: float = 0.0
    record_path: str | None = None


def execute(args, results: str, threads: int | None = None,
            after: Callable[[dict], Any] | None = None, command: Sequence[str] | None = None) -> Outcome:
    """Train one run in this process and write its record; the job function of every executor.

    ``after(record)`` is called once the record is on disk (used for W&B); whatever it raises is
    reported on standard error and ignored, since the record is the source of truth.
    """
    _limit_threads(threads)
    from benchmark.fileio import RunLocked
    from benchmark.train import train
    cfg = args.resolve()
    argv = list(command) if command else ["relaxbench", "suite", "run"]
    try:
        record, path = train(cfg, results=Path(results), progress=False, argv=argv,
                             unless_recorded=("completed", "diverged"))
    except RunLocked as exc:    # another process (another suite, a `relaxbench run`) has it
        return Outcome(cfg.run_id, "running", str(exc))
    if after is not None:
        try:
            after(record)
        except Exception as exc:  # noqa: BLE001 - a logger never fails a run
            print(f"relaxbench: warning: post-run hook failed for {cfg.run_id}: {exc}", file=sys.stderr)
    reason = (record.get("reason") or "").splitlines()[0] if record.get("reason") else None
    return Outcome(cfg.run_id, record["status"], reason, float(record["timing"]["wall_seconds"] or 0.0), str(path))


def _error(job, exc: BaseException) -> Outcome:
    text = f"{type(exc).__name__}: {exc}".strip()
    return Outcome(job.run_id, "error", text.splitlines()[0] if text else type(exc).__name__)


class Executor:
    """Base class: ``run(jobs, started, finished)`` calls ``started(job)`` when a run begins and
    ``finished(job, outcome)`` when it ends; it returns when every job has finished."""

    name = "base"

    def __init__(self, *, results: Path, workers: int = 1, threads: int | None = None,
                 after: Callable[[dict], Any] | None = None, options: dict | None = None,
                 command: Sequence[str] | None = None):
        self.results = Path(results)
        self.command = list(command) if command else None
        self.workers = max(1, int(workers))
        self.threads = threads
        self.after = after
        self.options = dict(options or {})

    def run(self, jobs: Sequence, started: Callable, finished: Callable) -> None:
        raise NotImplementedError


def _exit_with_parent(parent: int) -> None:
    while True:
        time.sleep(1.0)
        if os.getppid() != parent:   # the suite was killed: stop too (the checkpoint stays)
            os._exit(1)


def _init_worker(threads: int | None, parent: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops the pool
    import threading
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()
    _limit_threads(threads)


class LocalPoolExecutor(Executor):
    """A pool of ``workers`` fresh (spawned) processes on this machine."""

    name = "local"

    def _pool(self):
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor
        return ProcessPoolExecutor(max_workers=self.workers, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_init_worker, initargs=(self.threads, os.getpid()))

    def run(self, jobs, started, finished) -> None:
        from concurrent.futures import FIRST_COMPLETED, wait
        from concurrent.futures.process import BrokenProcessPool
        pending = list(jobs)
        inflight: dict = {}
        pool = self._pool()
        try:
            while pending or inflight:
                while pending and len(inflight) < self.workers:
                    job = pending.pop(0)
                    inflight[pool.submit(execute, job.args, str(self.results), self.threads, self.after,
                                          self.command)] = job
                    started(job)
                done, _ = wait(list(inflight), return_when=FIRST_COMPLETED)
                broken = False
                for fut in done:
                    job = inflight.pop(fut)
                    try:
                        outcome = fut.result()
                    except BrokenProcessPool as exc:
                        broken = True
                        outcome = _error(job, exc)
                    except Exception as exc:  # noqa: BLE001 - reported per run
                        outcome = _error(job, exc)
                    finished(job, outcome)
                if broken:  # a worker died (killed, out of memory): the others are lost too
                    for fut, job in list(inflight.items()):
                        finished(job, _error(job, RuntimeError("worker process died")))
                    inflight.clear()
                    pool.shutdown(wait=False, cancel_futures=True)
                    pool = self._pool()
        except BaseException:
            _stop_pool(pool)
            raise
        pool.shutdown(wait=True)


def _stop_pool(pool) -> None:
    processes = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for proc in processes:
        if proc.is_alive():
            proc.terminate()
    for proc in processes:
        proc.join(timeout=10)


class SubmititExecutor(Executor):
    """submitit's ``AutoExecutor``: ``cluster="local"`` (processes here) or ``"slurm"``."""

    poll_seconds = 0.5

    def __init__(self, *, cluster: str = "local", folder: Path | None = None, **kwargs):
        super().__init__(**kwargs)
        self.cluster = cluster
        self.name = "submitit-local" if cluster == "local" else cluster
        self.folder = Path(folder) if folder is not None else Path(self.results) / "submitit"
        if cluster != "local":
            self.poll_seconds = 15.0

    def parameters(self) -> dict[str, Any]:
        """``update_parameters`` arguments from the options (time in minutes, mem in GB)."""
        opts = self.options
        params: dict[str, Any] = {"name": "relaxbench", "timeout_min": int(opts.get("time") or 24 * 60)}
        if self.cluster == "local":
            if opts.get("gpus"):
                params["gpus_per_node"] = int(opts["gpus"])
            return params
        params["cpus_per_task"] = int(opts.get("cpus") or self.threads or 1)
        if opts.get("gpus"):
            params["gpus_per_node"] = int(opts["gpus"])
        if opts.get("mem"):
            params["mem_gb"] = float(opts["mem"])
        for key in ("partition", "account", "qos", "constraint"):
            if opts.get(key):
                params[f"slurm_{key}"] = str(opts[key])
        params["slurm_array_parallelism"] = int(opts.get("array_parallelism") or self.workers)
        return params

    def _executor(self):
        try:
            import submitit
        except ImportError:
            raise RuntimeError("the submitit executors need submitit: pip install 'relaxbench[slurm]'") from None
        ex = submitit.AutoExecutor(folder=str(self.folder / "%j"), cluster=self.cluster)
        ex.update_parameters(**self.parameters())
        return ex

    def run(self, jobs, started, finished) -> None:
        ex = self._executor()
        threads = self.threads
        if self.cluster != "local":
            threads = int(self.options.get("cpus") or self.threads or 1)
        results = str(Path(self.results).resolve())
        pending = list(jobs)
        inflight: dict = {}
        if self.cluster != "local":   # one job array; the scheduler throttles it
            with ex.batch():
                handles = [ex.submit(execute, job.args, results, threads, self.after, self.command)
                           for job in pending]
            inflight = dict(zip(handles, pending))
            pending = []
        running: set = set()
        try:
            while pending or inflight:
                while pending and len(inflight) < self.workers:
                    job = pending.pop(0)
                    handle = ex.submit(execute, job.args, results, threads, self.after, self.command)
                    inflight[handle] = job
                for handle, job in list(inflight.items()):
                    if handle not in running and (self.cluster == "local" or handle.state == "RUNNING"
                                                  or handle.done()):
                        running.add(handle)
                        started(job)
                    if handle.done():
                        inflight.pop(handle)
                        try:
                            outcome = handle.result()
                        except Exception as exc:  # noqa: BLE001 - reported per run
                            outcome = _error(job, exc)
                        finished(job, outcome)
                if inflight:
                    time.sleep(self.poll_seconds)
        except BaseException:
            if self.cluster == "local":
                for handle in inflight:
                    try:
                        handle.cancel(check=False)
                    except Exception:  # noqa: BLE001
                        pass
            else:
                print(f"relaxbench: {len(inflight)} Slurm jobs keep running; follow them with "
                      "`relaxbench suite status`", file=sys.stderr)
            raise


def make_executor(kind: str, *, results: Path, workers: int, after=None, options: dict | None = None,
                  folder: Path | None = None, command: Sequence[str] | None = None,
                  threads: int | None = None) -> Executor:
    """An executor by name; ``workers`` runs at once, each with ``threads`` torch threads (default
    on this machine: the free cores divided among the workers, :func:`benchmark.devices.default_threads`,
    so that a busy machine is not oversubscribed; on Slurm: ``cores // workers`` of a node)."""
    if kind not in EXECUTORS:
        from benchmark.config import ConfigError
        raise ConfigError(f"--executor={kind}: allowed: {', '.join(EXECUTORS)}")
    if threads is None:
        if kind == "slurm":
            threads = max(1, available_cores() // max(1, workers))
        else:
            from benchmark.devices import default_threads
            threads = default_threads(workers)[0]
    if kind == "local":
        return LocalPoolExecutor(results=results, workers=workers, threads=threads, after=after,
                                 options=dict(options or {}), command=command)
    cluster = "local" if kind == "submitit-local" else "slurm"
    return SubmititExecutor(results=results, workers=workers, threads=threads, after=after,
                            options=dict(options or {}), cluster=cluster, folder=folder, command=command)
