"""The one train loop: every task, backbone and method.

Guarantees
----------
* Device-agnostic: ``device`` (else ``$RELAXBENCH_DEVICE``, else a GPU when there is one) only
  says where the tensors live; it is not part of the configuration, and checkpoints load on any
  device, so a run started on a GPU can be finished on a CPU. ``provenance.segments`` lists each
  process that trained the run: its first step, steps, device, commit, threads and median step
  time, so a record's timing never silently mixes devices.
* Deterministic under a seed on CPU: the data order of epoch ``e`` is drawn from a generator
  seeded by ``(seed, e)``, model initialisation from ``seed``, and evaluation's group elements from
  a fixed generator, so the same configuration gives the same numbers.
* Resumable: a checkpoint (model, optimiser, method state, RNG states, curves, best states) is
  written at every evaluation; a run restarted from it produces the same record as a run that was
  never interrupted (timings aside). Checkpoints hold tensors and plain values only and are read
  with ``weights_only=True`` after a checksum (:mod:`benchmark.checkpoint`); one that cannot be
  trusted (damaged, foreign, of another configuration) is moved to ``quarantine/`` with a warning
  and the run starts from scratch.
* One process per run: a run is claimed by a lock file (:class:`benchmark.fileio.RunLock`, with
  the owner's pid and host); a second process starting it raises :class:`~benchmark.fileio.RunLocked`
  before it writes anything. A lock whose owner died is free again.
* Refused up front: every folder the run writes is checked to be writable before anything is
  built (:class:`~benchmark.fileio.NotWritableError`). A write that fails during the run (a full
  disk) raises :class:`RunWriteError` without leaving a partial file or a ``failed`` record, so
  the same command resumes once the fault is fixed.
* Model selection is per evaluation variant: each variant's best validation epoch is chosen on its
  own, and its test metric is measured on the weights of that epoch.
* A run whose loss becomes non-finite, or exceeds ``train.divergence_threshold`` (at one step, or,
  with ``train.divergence_patience = k > 0``, as the mean of k consecutive epochs), ends with status
  ``diverged``; an exception ends it with ``failed``; either way a record is written.
* Subnormal floats are flushed to zero while a run trains on a CPU (:func:`flushed_subnormals`;
  each provenance segment says whether they were): the values below ``finfo.tiny`` (1.2e-38 in
  float32) that appear in a trained network's arithmetic otherwise make compiled CPU kernels
  several times slower (a compiled SEGNN ACE step after 685 epochs of the paper protocol:
  260 ms against 61 ms, ``benchmarks/subnormal_step_time.py``). Like the thread count, this
  touches only the last bits of a run's numbers and is not part of its configuration.
"""

from __future__ import annotations

import random
import statistics
import sys
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from benchmark.checkpoint import CheckpointError, capture_rng, load_checkpoint, restore_rng, save_checkpoint
from benchmark.devices import compile_model, resolve_device
from benchmark.evaluate import evaluate_variant, truncation_error
from benchmark.experiment import RunConfig
from benchmark.fileio import RunLock, RunLocked, check_writable, describe_os_error, quarantine
from benchmark.method import EpochContext, Method, StepContext
from benchmark.provenance import code_version, device_name, provenance
from benchmark.record import RunRecord, checkpoint_path, load_record, lock_path, record_path, write_record
from benchmark.registry import BACKBONES, METHODS, TASKS

__all__ = ["build", "train", "RunInterrupted", "RunWriteError", "RunLocked", "Built", "output_folders",
           "check_run_writable", "data_folders_to_write", "existing_record", "flushed_subnormals",
           "subnormals_flushed"]

DTYPES = {"float32": torch.float32, "float64": torch.float64}


class RunInterrupted(Exception):
    """Raised by a callback to stop a run after a checkpoint (used by tests and suites)."""


class RunWriteError(OSError):
    """A checkpoint or record could not be written (a full disk, a vanished folder); nothing partial
    was left, and the last checkpoint still holds the run."""

    def __init__(self, message: str, errno: int | None = None):
        super().__init__(message)
        self.errno = errno

    def __str__(self) -> str:
        return self.args[0]


@dataclass
class Built:
    """The objects of one run."""

    cfg: RunConfig
    task: Any
    model: Any
    method: Method
    optimizer: torch.optim.Optimizer


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _epoch_generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed((1_000_003 * seed + epoch) % 2**64)


def _augmentation(task, tc, seed: int, epoch: int) -> Callable[[Any], Any] | None:
    """The training-batch transform of ``train.augment`` for one epoch (``None``: no transform).

    ``rotation``: every sample of a batch moved by its own Haar-random rotation (the ``rotation``
    case of the task's group; the task's ``act_input`` moves inputs and targets), drawn from a
    generator of the run's seed and the epoch, so a resumed run sees the same rotations.
    """
    if tc.augment == "none":
        return None
    gen = torch.Generator().manual_seed((1_000_003 * seed + epoch + 7_777_777) % 2**64)

    def rotate(batch):
        return task.act_input(task.group.cases(len(batch), gen, task.dtype)["rotation"], batch)
    return rotate


def make_optimizer(groups: list[dict], train_cfg) -> torch.optim.Optimizer:
    groups = [g for g in groups if g["params"]]
    # fused: one kernel for all parameters (deterministic; falls back where unsupported)
    if train_cfg.optimizer in ("adam", "adamw"):
        cls = torch.optim.Adam if train_cfg.optimizer == "adam" else torch.optim.AdamW
        try:
            return cls(groups, lr=train_cfg.lr, weight_decay=train_cfg.weight_decay, fused=True)
        except (RuntimeError, TypeError):
            return cls(groups, lr=train_cfg.lr, weight_decay=train_cfg.weight_decay, foreach=True)
    return torch.optim.SGD(groups, lr=train_cfg.lr, weight_decay=train_cfg.weight_decay)


def build(cfg: RunConfig, *, progress: bool = False, device: torch.device | str | None = None) -> Built:
    """Build task, model, method and optimiser of ``cfg`` (seeded, in that order) on ``device``
    (see :func:`benchmark.devices.resolve_device`)."""
    dtype = DTYPES[cfg.train.dtype]
    device = resolve_device(device) if not isinstance(device, torch.device) else device
    task_cls = TASKS.get(cfg.task).obj
    task = task_cls(cfg.task_cfg, train_size=cfg.train_size, dtype=dtype, progress=progress)
    if device.type != "cpu":
        task.to(device)
    _seed_all(cfg.seed)
    model = BACKBONES.get(cfg.backbone).obj(cfg.model_cfg, task).to(dtype=dtype, device=device)
    method = METHODS.get(cfg.method).obj(cfg.method_cfg)
    method.seed = cfg.seed
    method.attach(model, task, cfg.train)
    optimizer = make_optimizer(method.param_groups(model, cfg.train), cfg.train)
    return Built(cfg, task, model, method, optimizer)


COMPILE_MIN_STEPS = 20_000


def use_compile(cfg: RunConfig, method: Method) -> bool:
    """Whether the training forward is compiled (``train.compile``; ``auto``: long runs only).

    Methods that cannot run under ``torch.compile`` declare ``compile_safe = False`` and train eagerly.
    """
    mode = cfg.train.compile
    if mode == "off" or not method.compile_safe:
        return False
    if mode == "on":
        return True
    steps = cfg.train.epochs * -(-cfg.train_size // cfg.train.batch_size)
    return steps >= COMPILE_MIN_STEPS


@dataclass
class _State:
    epoch: int = 0                      # epochs completed
    step: int = 0
    curves: list = field(default_factory=list)
    best: dict = field(default_factory=dict)          # variant -> best summary
    best_states: dict = field(default_factory=dict)   # variant -> model state dict
    step_times: list = field(default_factory=list)
    wall: float = 0.0
    segments: list = field(default_factory=list)       # one per process that trained the run
    over: int = 0                       # consecutive epochs with a mean loss above the threshold


def subnormals_flushed() -> bool:
    """Whether this thread's CPU arithmetic flushes subnormal floats to zero (torch has no getter
    for :func:`torch.set_flush_denormal`, so it is measured: a subnormal times one)."""
    tiny = torch.tensor([torch.finfo(torch.float32).tiny / 4], dtype=torch.float32)
    return bool((tiny * 1.0).item() == 0.0)


@contextmanager
def flushed_subnormals():
    """CPU arithmetic with subnormal floats flushed to zero inside the block, the previous mode
    restored after it; yields whether the CPU supports flushing.

    The mode is the calling thread's (and, on Linux, that of threads it starts inside the block);
    worker threads torch started before keep theirs, so with several torch threads some kernels
    may still meet subnormals. The suites' runs use one thread per worker."""
    before = subnormals_flushed()
    supported = torch.set_flush_denormal(True)
    try:
        yield supported
    finally:
        torch.set_flush_denormal(before)


def _open_segment(state: _State, device: torch.device, git_sha: str | None) -> None:
    """Start the provenance segment of this process: where and from which code its steps ran."""
    state.segments.append({"first_step": state.step, "steps": 0, "device": device_name(device),
                           "git_sha": git_sha, "torch_threads": torch.get_num_threads(),
                           "subnormals_flushed": subnormals_flushed(), "median_step_seconds": None})


def _close_segment(state: _State) -> None:
    """Bring the open segment's step count and median step time up to date (its step times are
    all in memory: only earlier segments' are truncated in a checkpoint)."""
    if not state.segments:
        return
    seg = state.segments[-1]
    seg["steps"] = state.step - seg["first_step"]
    own = state.step_times[len(state.step_times) - seg["steps"]:] if seg["steps"] else []
    seg["median_step_seconds"] = statistics.median(own) if own else None


def _model_state(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _save_checkpoint(path: Path, built: Built, state: _State) -> None:
    payload = {
        "config_hash": built.cfg.hash,
        "model": built.model.state_dict(),
        "optimizer": built.optimizer.state_dict(),
        "method": built.method.state_dict(),
        "state": {"epoch": state.epoch, "step": state.step, "curves": state.curves, "best": state.best,
                  "best_states": state.best_states, "step_times": state.step_times[-5000:], "wall": state.wall,
                  "segments": state.segments, "over": state.over},
        "rng": capture_rng(),
    }
    try:
        save_checkpoint(path, payload)
    except OSError as exc:
        raise RunWriteError(f"checkpoint not written: {describe_os_error(exc, path)}", exc.errno) from None


def _load_checkpoint(path: Path, built: Built) -> _State | None:
    """The state saved at ``path`` applied to ``built``; ``None`` when there is none.

    Raises :class:`CheckpointError` when the file cannot be trusted or does not fit the run (the
    objects of ``built`` may then be partly overwritten: build them again)."""
    if not path.exists():
        return None
    payload = load_checkpoint(path, config_hash=built.cfg.hash)
    try:
        built.model.load_state_dict(payload["model"])
        built.optimizer.load_state_dict(payload["optimizer"])
        built.method.load_state_dict(payload["method"])
        restore_rng(payload["rng"])
        s = payload["state"]
        # a checkpoint from before segments were kept: its steps ran somewhere not on record
        segments = s.get("segments") or ([{"first_step": 0, "steps": s["step"], "device": None, "git_sha": None,
                                           "torch_threads": None, "subnormals_flushed": None,
                                           "median_step_seconds": None}] if s["step"] else [])
        return _State(epoch=s["epoch"], step=s["step"], curves=s["curves"], best=s["best"],
                      best_states=s["best_states"], step_times=list(s["step_times"]), wall=s["wall"],
                      segments=[dict(seg) for seg in segments], over=int(s.get("over", 0)))
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError, AttributeError) as exc:
        raise CheckpointError(f"does not fit this run ({type(exc).__name__}: {str(exc)[:160]})") from None


def _better(a: float, b: float | None, higher: bool) -> bool:
    if b is None:
        return True
    return a > b if higher else a < b


#: Validation samples on which each evaluation measures the equivariance error of its curve row
#: (with ``train.equivariance_samples`` group elements each, as before). The metric, hence model
#: selection, always uses the whole split, and the best epoch's equivariance in the record is
#: measured on the whole split, from that epoch's saved state, once the run ends
#: (:func:`_finish_variants`): the same numbers a whole-split measurement at every evaluation
#: gives, paid once. The curve rows are an estimate of the same mean from the split's first 64
#: samples (each row says how many, ``equivariance_on``): equivariance errors span orders of
#: magnitude over training, and 64 samples place a row well within its decade. An evaluation of
#: a two-variant method on N-body's 2000 validation samples drops from eight passes over the split
#: to about 2.2; on MoCap's 240 (with the vertical group) from seven to about 2.6.
CURVE_EQUIVARIANCE_SUBSET = 64


def _evaluate(built: Built, state: _State, train_loss: float) -> dict:
    cfg, task, model, method = built.cfg, built.task, built.model, built.method
    tc = cfg.train
    row: dict[str, Any] = {"epoch": state.epoch, "train_loss": train_loss}
    preds = {}
    for variant in method.variants:
        out = evaluate_variant(model, task, "valid", variant, batch_size=tc.eval_batch_size,
                               equivariance_samples=tc.equivariance_samples, seed=cfg.seed,
                               equivariance_subset=CURVE_EQUIVARIANCE_SUBSET)
        preds[variant] = out["pred"]
        row[variant] = {"val_metric": out["metric"], "equivariance": out["equivariance"],
                        "equivariance_on": out["equivariance_on"]}
        summary = state.best.get(variant)
        if _better(out["metric"], None if summary is None else summary["val_metric"], task.higher_is_better):
            # the equivariance of the summary is measured on the whole split when the run ends
            state.best[variant] = {"best_epoch": state.epoch, "val_metric": out["metric"],
                                   "equivariance": out["equivariance"]}
            state.best_states[variant] = _model_state(model)
    if model.relaxed_layers():
        gam = model.gammas().detach()
        row["gamma"] = gam.tolist()
        row["gamma_bar"] = gam.abs().max().item() if gam.numel() else 0.0
        data = task.split("valid")
        relaxed = preds.get("relaxed")
        projected = preds.get("projected")
        row["truncation_error"] = truncation_error(model, data, tc.eval_batch_size, relaxed=relaxed,
                                                   projected=projected)
    diagnostics = method.diagnostics()
    if diagnostics:     # the method's own quantities, apart from the harness's columns
        row["diagnostics"] = dict(diagnostics)
    return row


def evaluate_once(built: Built) -> dict:
    """One evaluation exactly as the train loop runs it (every variant, equivariance errors,
    truncation error, diagnostics), on a fresh state: what ``relaxbench bench`` times."""
    return _evaluate(built, _State(), float("nan"))


def _finish_variants(built: Built, state: _State) -> dict:
    """Test metric of each variant at its best validation epoch, and its equivariance error
    there, measured on the whole validation split from that epoch's state."""
    model, tc = built.model, built.cfg.train
    current = _model_state(model)
    variants = {}
    try:
        for variant in built.method.variants:
            if variant not in state.best:
                continue
            model.load_state_dict(state.best_states[variant])
            test = evaluate_variant(model, built.task, "test", variant, batch_size=tc.eval_batch_size,
                                    with_equivariance=False)
            valid = evaluate_variant(model, built.task, "valid", variant, batch_size=tc.eval_batch_size,
                                     equivariance_samples=tc.equivariance_samples, seed=built.cfg.seed)
            variants[variant] = {**state.best[variant], "equivariance": valid["equivariance"],
                                 "test_metric": test["metric"], "params": variant_parameters(model, variant)}
            breakdown = built.task.test_breakdown(test["pred"], built.task.split("test"))
            if breakdown:
                variants[variant]["test_breakdown"] = breakdown
    finally:
        model.load_state_dict(current)
    return variants


def variant_parameters(model, variant: str) -> int:
    """Parameters of the network that evaluation variant ``variant`` runs: the projected network
    has no branches (gamma = 0 never runs them), the others run the whole model."""
    if variant == "projected":
        return sum(p.numel() for p in model.equivariant_parameters())
    return model.num_parameters()


def output_folders(results: Path | str, cfg: RunConfig) -> list[Path]:
    """Every folder a run of ``cfg`` writes into (its record's and its checkpoint's)."""
    return [record_path(results, cfg).parent, checkpoint_path(results, cfg).parent]


def data_folders_to_write(cfg: RunConfig) -> list[Path]:
    """The folders the run's task must still write its data cache into (none once it exists)."""
    return [Path(f) for f in TASKS.get(cfg.task).obj.cache_folders_to_write(cfg.task_cfg)]


def check_run_writable(results: Path | str, cfg: RunConfig) -> None:
    """Raise :class:`~benchmark.fileio.NotWritableError` unless every folder a run of ``cfg``
    writes (record, checkpoint, data cache still to generate) can be written."""
    for folder in data_folders_to_write(cfg) + output_folders(results, cfg):
        check_writable(folder)


def _diagnostics(built: Built) -> dict:
    model = built.model
    diag: dict[str, Any] = {}
    if model.relaxed_layers():
        gam = model.gammas().detach()
        diag["layers"] = [layer.layer_name for layer in model.relaxed_layers()]
        diag["gamma"] = gam.tolist()
        diag["gamma_bar"] = gam.abs().max().item()
    diag.update(built.method.diagnostics())
    return diag


def train(cfg: RunConfig, *, results: Path | str = "results", resume: bool = True, progress: bool = True,
          on_evaluation: Callable[[int, dict], None] | None = None, keep_checkpoint: bool = False,
          argv: list[str] | None = None, device: torch.device | str | None = None,
          unless_recorded: tuple[str, ...] = ()) -> tuple[dict, Path]:
    """Train and evaluate one run on ``device``; write and return its record and the record's path.

    ``unless_recorded``: statuses for which an existing record of this configuration, found once
    the run is claimed, is returned instead of training again (a suite passes ``completed`` and
    ``diverged``, so a run another process finished meanwhile is not trained twice).

    ``on_evaluation(epoch, row)`` is called after each evaluation's checkpoint; raising
    :class:`RunInterrupted` from it stops the run there (the checkpoint stays for a resume).
    Raises :class:`~benchmark.fileio.NotWritableError` (before anything is built) when a folder the
    run writes cannot be written, :class:`~benchmark.fileio.RunLocked` when another live process
    holds the run, and :class:`RunWriteError` when a checkpoint or the record cannot be written.
    """
    results = Path(results)
    rec_path = record_path(results, cfg)
    ckpt = checkpoint_path(results, cfg)
    device = resolve_device(device) if not isinstance(device, torch.device) else device  # bad name: ConfigError
    for folder in output_folders(results, cfg):
        check_writable(folder)
    with RunLock(lock_path(results, cfg)):
        done = existing_record(results, cfg) if unless_recorded else None
        if done is not None and done["status"] in unless_recorded:
            return done, rec_path
        with flushed_subnormals():
            return _train_locked(cfg, results, rec_path, ckpt, resume=resume, progress=progress,
                                 on_evaluation=on_evaluation, keep_checkpoint=keep_checkpoint, argv=argv,
                                 device=device)


def existing_record(results: Path | str, cfg: RunConfig) -> dict | None:
    """The valid record of ``cfg`` under ``results``, if there is one."""
    try:
        rec = load_record(record_path(results, cfg))
    except (OSError, ValueError):
        return None
    return rec if rec["config"]["hash"] == cfg.hash else None


def _train_locked(cfg: RunConfig, results: Path, rec_path: Path, ckpt: Path, *, resume: bool, progress: bool,
                  on_evaluation, keep_checkpoint: bool, argv, device: torch.device) -> tuple[dict, Path]:
    started = time.perf_counter()
    started_at_commit = code_version()              # the code this process runs, before it can change
    state = _State()
    status, reason = "completed", None
    built: Built | None = None
    try:
        built = build(cfg, progress=progress, device=device)
        if resume:
            try:
                state = _load_checkpoint(ckpt, built) or state
                if state.epoch:
                    print(f"relaxbench: {cfg.run_id}: resuming from epoch {state.epoch} (its checkpoint)",
                          file=sys.stderr, flush=True)
            except CheckpointError as exc:
                quarantine(ckpt, f"{exc}; the run starts from scratch")
                built = build(cfg, progress=progress, device=device)
        _open_segment(state, device, started_at_commit)
        status, reason = _loop(built, state, ckpt, progress, on_evaluation, started)
    except (RunInterrupted, KeyboardInterrupt, RunWriteError):
        raise
    except Exception as exc:  # a failed run still leaves a record that says why
        status = "failed"
        reason = f"{type(exc).__name__}: {exc}".strip()
        reason += "\n" + "".join(traceback.format_exception(exc)[-3:])
    wall = state.wall + (time.perf_counter() - started) if status != "completed" else state.wall
    _close_segment(state)
    record = RunRecord(
        task=cfg.task, backbone=cfg.backbone, method=cfg.method, seed=cfg.seed, train_size=cfg.train_size,
        status=status, reason=reason,
        config={"hash": cfg.hash, "resolved": cfg.resolved()},
        variants=_finish_variants(built, state) if built is not None and state.best else {},
        headline=built.method.variants[0] if built is not None else None,
        metric={"name": built.task.metric, "higher_is_better": built.task.higher_is_better,
                "scale": built.task.metric_scale} if built is not None else None,
        curves=state.curves,
        diagnostics=_diagnostics(built) if built is not None else {},
        params=built.model.num_parameters() if built is not None else 0,
        timing={"wall_seconds": wall, "train_seconds": sum(state.step_times),
                "median_step_seconds": statistics.median(state.step_times) if state.step_times else None,
                "epochs": state.epoch, "steps": state.step,
                "compiled": use_compile(cfg, built.method) if built is not None else False},
        provenance={**provenance(argv, device=device, git_sha=started_at_commit), "segments": state.segments},
    ).to_dict()
    try:
        write_record(rec_path, record)
    except OSError as exc:
        raise RunWriteError(f"record not written: {describe_os_error(exc, rec_path)}", exc.errno) from None
    if status == "completed" and not keep_checkpoint and ckpt.exists():
        ckpt.unlink()
    return record, rec_path


def step_objective(built: Built, batch, forward, *, epoch: int, step: int) -> tuple[StepContext, torch.Tensor]:
    """The first half of one training step: the forward pass, the task loss and the method's
    objective (its :class:`StepContext` and the total to descend)."""
    model, tc = built.model, built.cfg.train
    gammas = model.gammas()
    ctx = StepContext(model=model, task=built.task, batch=batch, pred=None, task_loss=None,  # type: ignore[arg-type]
                      gammas=gammas, gammas_before=gammas.detach().clone(), epoch=epoch,
                      step=step, num_epochs=tc.epochs, train_cfg=tc, forward=forward)
    ctx.pred = forward(batch)
    ctx.task_loss = built.task.loss(ctx.pred, batch)
    return ctx, built.method.loss(ctx)


def apply_step(built: Built, ctx: StepContext, total: torch.Tensor) -> None:
    """The second half: backward, gradient clipping, the primal optimiser's step and the method's
    ``after_step`` (the dual step and the like)."""
    opt, tc = built.optimizer, built.cfg.train
    opt.zero_grad(set_to_none=True)
    total.backward()
    if tc.grad_clip is not None:
        torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], tc.grad_clip)
    opt.step()
    built.method.after_step(ctx)


def _loop(built: Built, state: _State, ckpt: Path, progress: bool, on_evaluation, started: float):
    cfg, task, model, method = built.cfg, built.task, built.model, built.method
    tc = cfg.train
    forward = compile_model(model) if use_compile(cfg, method) else model
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=tc.epochs, initial=state.epoch, desc=f"{cfg.method} {cfg.backbone}/{cfg.task}",
                   unit="ep", dynamic_ncols=True, leave=False)
    wall_at_start = state.wall
    try:
        model.train()
        while state.epoch < tc.epochs:
            epoch = state.epoch
            method.before_epoch(EpochContext(model, task, epoch, tc.epochs, tc))
            losses, totals = [], []
            augment = _augmentation(task, tc, cfg.seed, epoch)
            for batch in task.batches("train", tc.batch_size, shuffle=True,
                                      generator=_epoch_generator(cfg.seed, epoch), drop_last=tc.drop_last):
                t0 = time.perf_counter()
                if augment is not None:
                    batch = augment(batch)
                ctx, total = step_objective(built, batch, forward, epoch=epoch, step=state.step)
                value = total.item()
                if not np.isfinite(value) or (not tc.divergence_patience and value > tc.divergence_threshold):
                    return "diverged", f"training loss {value} at epoch {epoch}, step {state.step}"
                totals.append(value)
                apply_step(built, ctx, total)
                state.step += 1
                state.step_times.append(time.perf_counter() - t0)
                losses.append(ctx.task_loss.item())
            method.after_epoch(EpochContext(model, task, epoch, tc.epochs, tc))
            state.epoch += 1
            if tc.divergence_patience:
                mean_total = float(np.mean(totals)) if totals else 0.0
                state.over = state.over + 1 if mean_total > tc.divergence_threshold else 0
                if state.over >= tc.divergence_patience:
                    return "diverged", (f"mean training loss above {tc.divergence_threshold:g} for "
                                        f"{state.over} consecutive epochs ({mean_total:.6g} at epoch {epoch})")
            train_loss = float(np.mean(losses)) if losses else float("nan")
            if state.epoch % tc.eval_every == 0 or state.epoch == tc.epochs:
                row = _evaluate(built, state, train_loss)
                state.curves.append(row)
                state.wall = wall_at_start + (time.perf_counter() - started)
                _close_segment(state)
                _save_checkpoint(ckpt, built, state)
                if bar is not None:
                    head = method.variants[0]
                    bar.set_postfix(loss=f"{train_loss:.3g}", val=f"{row[head]['val_metric']:.3g}")
                if on_evaluation is not None:
                    on_evaluation(state.epoch, row)
            if bar is not None:
                bar.update(1)
        state.wall = wall_at_start + (time.perf_counter() - started)
        return "completed", None
    finally:
        if bar is not None:
            bar.close()
