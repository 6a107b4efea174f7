"""Which device a run trains on: an execution choice, like the number of threads.

The device is not part of a run's configuration (nor of its hash): the same configuration trained
on a CPU or a GPU is the same experiment, and its record says where it ran
(``provenance.device``). A run can start on one device and resume on another.

Guarantee: :func:`resolve_device` returns a usable :class:`torch.device` or raises
:class:`~benchmark.config.ConfigError` naming the value and what is allowed.
"""

from __future__ import annotations

import os

import torch

from benchmark.config import ConfigError

__all__ = ["resolve_device", "DEVICE_ENV", "DEVICE_CHOICES", "default_threads", "compile_model",
           "compile_cache_dir", "COMPILE_CACHE_ENV"]

DEVICE_ENV = "RELAXBENCH_DEVICE"
DEVICE_CHOICES = ("auto", "cpu", "cuda", "cuda:N")


def resolve_device(name: str | None = None) -> torch.device:
    """``name`` (else ``$RELAXBENCH_DEVICE``, else ``auto``) as a device.

    ``auto`` is the first CUDA device when one is available and the CPU otherwise.
    """
    name = (name or os.environ.get(DEVICE_ENV) or "auto").strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device={name!r}: not a device; allowed: {', '.join(DEVICE_CHOICES)}") from None
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise ConfigError(f"device={name!r}: allowed: {', '.join(DEVICE_CHOICES)}")
    if not torch.cuda.is_available():
        raise ConfigError(f"device={name!r}: no CUDA device is available here; use device=cpu")
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"device={name!r}: only {torch.cuda.device_count()} CUDA device(s) here")
    return device


def default_threads(workers: int = 1) -> tuple[int, str]:
    """Torch threads for one of ``workers`` runs on this machine's CPU, and why, in words.

    Oversubscribed threads slow every run many times over (two threads on two busy cores were
    measured 6-10x slower per step than one), so a run takes the cores that are free: the cores
    this process may use, divided among the workers, less the load already running (the
    one-minute load average), and never fewer than one.
    """
    try:
        cores = max(1, len(os.sched_getaffinity(0)))
    except AttributeError:              # not on Linux
        cores = max(1, os.cpu_count() or 1)
    share = max(1, cores // max(1, workers))
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        load = 0.0
    free = max(1, int(cores - load + 0.5))
    threads = max(1, min(share, free))
    why = f"{cores} cores" + (f" / {workers} workers" if workers > 1 else "") + f", load {load:.1f}"
    return threads, why


#: Where compiled graphs are kept (overrides the default below).
COMPILE_CACHE_ENV = "RELAXBENCH_COMPILE_CACHE"


def compile_cache_dir() -> str:
    """The persistent compile cache of this user: ``$RELAXBENCH_COMPILE_CACHE``, else an inductor
    cache dir already set in ``$TORCHINDUCTOR_CACHE_DIR``, else ``$XDG_CACHE_HOME/relaxbench/
    torchinductor`` (``~/.cache/...``). Unlike inductor's own default under the temporary folder,
    it outlives a reboot and a cluster job's private ``/tmp``, so every run of a suite, and every
    suite on the machine (or on the cluster's shared home), reuses the graphs the first run
    compiled (inductor's FX-graph and AOT-autograd caches, both on by default)."""
    explicit = os.environ.get(COMPILE_CACHE_ENV) or os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if explicit:
        return explicit
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "relaxbench", "torchinductor")


def compile_model(model):
    """``torch.compile(model)`` with the persistent compile cache of :func:`compile_cache_dir`
    (set for this process before the first compilation reads it)."""
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = compile_cache_dir()
    return torch.compile(model)
