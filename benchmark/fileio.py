"""Files a run writes: atomic replacement, quarantine of bad files, write checks, run locks.

Guarantees
----------
* :func:`atomic_path` (and :func:`write_text_atomic`, :func:`write_json_atomic`) write to a
  temporary file with a unique name in the target folder and rename it into place: a reader sees
  the old file or the new one, never a partial one, and a failed write (a full disk, a signal)
  leaves neither a partial target nor a temporary file behind.
* :func:`quarantine` moves a bad file into a ``quarantine/`` folder beside it (never deletes it),
  so the next reader recomputes what it held and a person can still look at it.
* :func:`check_writable` proves, before any work, that a folder can be created and written.
* :class:`RunLock` claims a run for one process: a lock file holding the owner's pid and host,
  locked with ``flock`` so that a crashed owner's lock is free again at once (where the file system
  has no ``flock``, a lock whose pid is gone on this host is taken over).
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import secrets
import socket
import sys
import time
from pathlib import Path
from typing import Any, Iterator

__all__ = ["move_aside", "atomic_path", "write_bytes_atomic", "write_text_atomic", "write_json_atomic", "json_safe", "quarantine",
           "QUARANTINE", "check_writable", "NotWritableError", "RunLock", "RunLocked", "warn",
           "describe_os_error"]

QUARANTINE = "quarantine"


def warn(message: str) -> None:
    """One line on standard error, prefixed like every warning of the command."""
    print(f"relaxbench: warning: {message}", file=sys.stderr, flush=True)


def describe_os_error(exc: OSError, path: Path | str | None = None) -> str:
    """``<path>: <strerror>`` with a hint for the faults a user can fix."""
    where = path if path is not None else (exc.filename or "")
    text = f"{where}: {exc.strerror or exc}"
    if exc.errno == errno.ENOSPC:
        text += " (free some space, then run the same command again: it resumes from the last checkpoint)"
    elif exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        text += " (choose a writable --results folder)"
    return text


@contextlib.contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same suffix, so writers that infer a format from it
    still work); on a clean exit it is renamed onto ``path``, on an exception it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".tmp-{path.stem}-{os.getpid()}-{secrets.token_hex(4)}{path.suffix}"
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _open_new(tmp: Path, binary: bool):
    # Not tempfile.mkstemp: it creates the file private (0600). Mode 0666 through the umask gives
    # the file the permissions a plain open() would, so a shared results folder stays readable.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    return os.fdopen(fd, "wb")


def write_bytes_atomic(path: Path | str, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        with _open_new(tmp, True) as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    return Path(path)


def write_text_atomic(path: Path | str, text: str) -> Path:
    return write_bytes_atomic(path, text.encode())


def json_safe(obj: Any) -> Any:
    """``obj`` with non-finite floats as JSON-legal values (NaN -> null, inf -> "inf")."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def write_json_atomic(path: Path | str, data: Any) -> Path:
    return write_text_atomic(path, json.dumps(json_safe(data), indent=1, sort_keys=False) + "\n")


def move_aside(path: Path | str) -> Path | None:
    """Move ``path`` (a file or a folder) to a unique name in ``quarantine/`` beside it; returns the
    new path, ``None`` when ``path`` is already gone (another process moved it first), and raises
    :class:`OSError` when it cannot be moved."""
    path = Path(path)
    folder = path.parent / QUARANTINE
    target = folder / f"{path.name}.{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}-{secrets.token_hex(3)}"
    folder.mkdir(parents=True, exist_ok=True)
    try:
        os.rename(path, target)
    except FileNotFoundError:
        return None
    return target


def quarantine(path: Path | str, why: str, *, announce: bool = True) -> Path | None:
    """Move ``path`` into ``quarantine/`` beside it and warn ``skipped <path>: <why>``; returns the
    new path, or ``None`` when it could not be moved (it is then left where it is)."""
    path = Path(path)
    folder = path.parent / QUARANTINE
    try:
        target = move_aside(path)
        if target is None:
            return None                     # another reader moved it first
    except OSError as exc:
        if announce:
            warn(f"skipped {path}: {why} (could not move it to {folder}: {exc.strerror or exc})")
        return None
    if announce:
        warn(f"skipped {path}: {why}; moved to {target}")
    return target


class NotWritableError(OSError):
    """A folder a run must write cannot be written; the message is one line."""


def check_writable(folder: Path | str) -> None:
    """Create ``folder`` (and its parents) and write and remove a probe file in it, or raise
    :class:`NotWritableError` naming the folder and the reason."""
    folder = Path(folder)
    probe = folder / f".probe-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        if folder.exists() and not folder.is_dir():
            raise NotWritableError(f"{folder}: exists and is not a folder")
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, b"x")
            os.fsync(fd)
        finally:
            os.close(fd)
        os.unlink(probe)
    except NotWritableError:
        raise
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(probe)
        bad = Path(exc.filename) if exc.filename else folder
        if bad == probe:
            bad = folder
        raise NotWritableError(f"cannot write to {folder}: {describe_os_error(exc, bad)}") from None


class RunLocked(Exception):
    """Another live process holds the run."""

    def __init__(self, path: Path, owner: dict):
        self.path, self.owner = path, owner
        super().__init__(f"already running (pid {owner.get('pid', '?')}"
                         + (f" on {owner['host']}" if owner.get("host") and owner["host"] != socket.gethostname()
                            else "") + ")")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunLock:
    """An exclusive claim on one run: ``with RunLock(path): ...`` or :meth:`acquire`/:meth:`release`.

    The lock file holds ``{"pid", "host", "since"}``. It is ``flock``-ed while held, so a process
    that dies (even by ``kill -9``) frees it; a second process raises :class:`RunLocked` with the
    owner's pid. The file is removed on release.
    """

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self._fd: int | None = None

    def _owner(self) -> dict:
        try:
            data = json.loads(self.path.read_text() or "{}")
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    def acquire(self) -> "RunLock":
        import fcntl
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(100):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    raise RunLocked(self.path, self._owner()) from None
                # no flock on this file system: judge the owner by its pid on this host
                owner = self._owner()
                if owner.get("host") == socket.gethostname() and isinstance(owner.get("pid"), int) \
                        and not _pid_alive(owner["pid"]):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(self.path)
                    continue
                if owner:
                    raise RunLocked(self.path, owner) from None
                raise
            # the previous owner may have removed the file between our open and our lock
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                     "since": time.strftime("%Y-%m-%dT%H:%M:%S")}).encode())
            self._fd = fd
            return self
        raise RuntimeError(f"{self.path}: could not be locked")

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
