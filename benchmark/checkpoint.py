"""Checkpoints: tensors and plain values only, checksummed, loaded without running any code.

A checkpoint file is a ``torch.save`` of ``{"format", "version", "sha256", "payload"}`` where
``payload`` is the serialised state as a ``uint8`` tensor and ``sha256`` its digest. Both layers
are read with ``torch.load(weights_only=True)``, which unpickles nothing but tensors and plain
containers: a pickle planted where a checkpoint is expected is refused, never run.

Guarantees
----------
* :func:`save_checkpoint` refuses state that is not made of tensors, numbers, strings, ``None``,
  lists, tuples and dicts (numpy values are converted; anything else raises ``TypeError`` at save
  time, not at the resume a day later), and writes through a uniquely named temporary file and a
  rename (a crash or a full disk leaves the previous checkpoint, never a torn one).
* :func:`load_checkpoint` raises :class:`CheckpointError` for anything it cannot trust: an empty,
  truncated or garbled file, a checksum mismatch, a foreign format, a pickle with code in it, or a
  checkpoint of another configuration. The caller moves such a file aside and starts afresh.
* :func:`capture_rng` / :func:`restore_rng` turn the torch, numpy and Python RNG states into
  tensors and ints and back, exactly.
"""

from __future__ import annotations

import hashlib
import io
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmark.fileio import write_bytes_atomic

__all__ = ["CheckpointError", "save_checkpoint", "load_checkpoint", "to_plain", "capture_rng", "restore_rng",
           "FORMAT", "VERSION"]

FORMAT = "relaxbench-checkpoint"
VERSION = 2


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message says why in a few words."""


def to_plain(obj: Any, where: str = "state") -> Any:
    """``obj`` as tensors and plain Python values (numpy scalars and arrays converted)."""
    if obj is None or isinstance(obj, (bool, int, float, str, torch.Tensor)):
        return obj
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(obj))
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if not isinstance(k, (str, int)):
                raise TypeError(f"{where}: key {k!r} of type {type(k).__name__} cannot be checkpointed safely")
            out[k] = to_plain(v, f"{where}.{k}")
        return out
    if isinstance(obj, (list, tuple)):
        items = [to_plain(v, f"{where}[{i}]") for i, v in enumerate(obj)]
        return items if isinstance(obj, list) else tuple(items)
    if isinstance(obj, torch.Size):
        return tuple(obj)
    raise TypeError(f"{where}: a {type(obj).__name__} cannot be checkpointed safely (use tensors and plain values)")


def capture_rng() -> dict:
    """The torch, numpy (legacy global) and Python RNG states as tensors and ints."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    version, state, gauss = random.getstate()
    return {"torch": torch.get_rng_state(),
            "numpy": {"name": str(name), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
                      "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
            "python": {"version": int(version), "state": torch.tensor(state, dtype=torch.int64),
                       "gauss": None if gauss is None else float(gauss)}}


def restore_rng(rng: dict) -> None:
    torch.set_rng_state(rng["torch"])
    n = rng["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = rng["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["state"].tolist()), p["gauss"]))


def save_checkpoint(path: Path | str, state: dict) -> Path:
    """Write ``state`` (made plain by :func:`to_plain`) to ``path`` atomically, with its digest."""
    buf = io.BytesIO()
    torch.save(to_plain(state), buf)
    data = buf.getvalue()
    outer = {"format": FORMAT, "version": VERSION, "sha256": hashlib.sha256(data).hexdigest(),
             "payload": torch.frombuffer(bytearray(data), dtype=torch.uint8)}
    out = io.BytesIO()
    torch.save(outer, out)
    # the bytes are written by plain file I/O, so a full disk raises OSError (ENOSPC), not a
    # serialiser's RuntimeError, and the temporary file is removed
    return write_bytes_atomic(path, out.getvalue())


def load_checkpoint(path: Path | str, *, config_hash: str | None = None) -> dict:
    """The state saved at ``path``; :class:`CheckpointError` when it cannot be trusted."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise CheckpointError(f"unreadable ({exc.strerror or exc})") from None
    if size == 0:
        raise CheckpointError("empty file")
    try:
        outer = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - whatever the bytes are, they are not a usable checkpoint
        raise CheckpointError(f"not a loadable checkpoint ({_short(exc)})") from None
    if not isinstance(outer, dict) or outer.get("format") != FORMAT:
        raise CheckpointError("not a relaxbench checkpoint (written by an older version or another program)")
    if outer.get("version") != VERSION:
        raise CheckpointError(f"checkpoint format version {outer.get('version')!r} (this code reads {VERSION})")
    payload = outer.get("payload")
    if not isinstance(payload, torch.Tensor) or payload.dtype != torch.uint8 or payload.dim() != 1:
        raise CheckpointError("checkpoint payload is missing")
    data = payload.numpy().tobytes()
    if hashlib.sha256(data).hexdigest() != outer.get("sha256"):
        raise CheckpointError("checksum mismatch (the file was altered or damaged)")
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(f"checkpoint payload does not load ({_short(exc)})") from None
    if not isinstance(state, dict):
        raise CheckpointError("checkpoint payload is not a mapping")
    if config_hash is not None and state.get("config_hash") != config_hash:
        raise CheckpointError(f"checkpoint of configuration {state.get('config_hash')!r}, not of this run "
                              f"({config_hash})")
    return state


def _short(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:160]}" if text else type(exc).__name__
