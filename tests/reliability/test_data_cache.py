"""The N-body data cache under real faults on disk, the packaged reference fingerprints, and the
rename of the generator's seed to ``task.data_seed`` (with unchanged configuration hashes).

Faults are made for real: a truncated npz, garbled bytes, a deleted or garbled ``fingerprints.json``,
an array changed and its npz rewritten consistently. A bad cache must be moved to ``quarantine/``
with a one-line warning and regenerated; a cache is never accepted without its fingerprints.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from benchmark.config import ConfigError, config_hash
from benchmark.experiment import HASH_RENAMES, canonical_resolved, resolve
from benchmark.tasks import nbody, nbody_sim
from benchmark.tasks.nbody import DataCacheError, NBody, NBodyConfig

REPO = Path(__file__).resolve().parents[2]
TINY = ["task.num_train=64", "task.num_valid=32", "task.num_test=32"]


@pytest.fixture
def data_root(tmp_path, monkeypatch):
    root = tmp_path / "data"
    monkeypatch.setenv("RELAXBENCH_DATA", str(root))
    return root


@pytest.fixture
def cfg():
    return resolve("nbody", "egnn", "strict", train_size=16, overrides=TINY).task_cfg


@pytest.fixture
def generations(monkeypatch):
    """Counts calls of the generator (and lets them through)."""
    calls = []
    real = nbody_sim.generate

    def counting(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)
    monkeypatch.setattr(nbody_sim, "generate", counting)
    return calls


def build(cfg) -> NBody:
    return NBody(cfg, train_size=16, progress=False)


def leftovers(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.parent.iterdir() if p.name.startswith(".tmp-"))


def warnings_of(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("relaxbench: warning:")]


def same_data(a: NBody, b: NBody) -> bool:
    import torch
    return all(torch.equal(getattr(a.split(s), f), getattr(b.split(s), f))
               for s in ("train", "valid", "test") for f in ("pos", "vel", "edge_attr", "target"))


# -- a healthy cache --------------------------------------------------------------------------------

def test_cache_is_written_once_verified_once_and_reused(data_root, cfg, generations, monkeypatch, capsys):
    first = build(cfg)
    cache = nbody._cache_dir(cfg)
    assert sorted(p.name for p in cache.iterdir()) == ["fingerprints.json", "test.npz", "train.npz", "valid.npz"]
    manifest = json.loads((cache / "fingerprints.json").read_text())
    assert manifest["train"]["loc"]["shape"] == [64, 49, 3, 5] and manifest["test"]["charges"]["dtype"] == "float64"
    assert leftovers(cache) == [] and len(generations) == 1

    hashed = []
    real = nbody_sim.fingerprints
    monkeypatch.setattr(nbody_sim, "fingerprints", lambda arrays: hashed.append(1) or real(arrays))
    second = build(cfg)
    assert len(generations) == 1                        # read from the cache,
    assert len(hashed) == 1                             # whose fingerprints were taken once
    assert same_data(first, second)
    assert warnings_of(capsys.readouterr().err) == []
    assert not (cache.parent / nbody.QUARANTINE).exists()
    assert NBody.cache_folders_to_write(cfg) == []


def test_cache_folders_to_write_names_the_missing_cache(data_root, cfg):
    assert NBody.cache_folders_to_write(cfg) == [nbody._cache_dir(cfg).parent]


# -- faults on disk -----------------------------------------------------------------------------------

def _truncate(cache):
    path = cache / "train.npz"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _garble(cache):
    path = cache / "valid.npz"
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    data[mid:mid + 16] = bytes(b ^ 0xFF for b in data[mid:mid + 16])
    path.write_bytes(bytes(data))


def _delete_manifest(cache):
    (cache / "fingerprints.json").unlink()


def _garble_manifest(cache):
    (cache / "fingerprints.json").write_text('{"train": {"loc": ')


def _change_array(cache):
    arrays = nbody_sim.load_split(cache / "test.npz")
    arrays["loc"] = arrays["loc"].copy()
    arrays["loc"][0, 0, 0, 0] += 1e-9
    nbody_sim.save_split(cache, "test", arrays)         # a valid npz, with different data


FAULTS = {
    "truncated npz": (_truncate, "train.npz does not load"),
    "garbled bytes": (_garble, "valid.npz"),
    "deleted fingerprints.json": (_delete_manifest, "fingerprints.json is missing"),
    "garbled fingerprints.json": (_garble_manifest, "fingerprints.json is unreadable"),
    "changed array": (_change_array, "test/loc (sha256)"),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_a_bad_cache_is_moved_aside_and_regenerated(fault, data_root, cfg, generations, capsys):
    clean = build(cfg)
    cache = nbody._cache_dir(cfg)
    damage, why = FAULTS[fault]
    damage(cache)
    before = sorted((p.name, p.read_bytes()) for p in cache.iterdir())
    capsys.readouterr()

    again = build(cfg)

    warned = warnings_of(capsys.readouterr().err)
    assert len(warned) == 1, warned
    assert str(cache) in warned[0] and why in warned[0] and "regenerating" in warned[0]
    assert len(generations) == 2                        # regenerated, once
    assert same_data(clean, again)
    moved = list((cache.parent / nbody.QUARANTINE).iterdir())
    assert len(moved) == 1 and moved[0].name.startswith(cache.name + ".")
    assert sorted((p.name, p.read_bytes()) for p in moved[0].iterdir()) == before   # kept as it was
    assert nbody._read_cache(cache, cfg, None)[1] == ""  # the new cache verifies
    assert leftovers(cache) == []
    capsys.readouterr()
    build(cfg)                                          # and is used from then on
    assert len(generations) == 2 and warnings_of(capsys.readouterr().err) == []


def test_quarantine_names_are_unique(data_root, cfg, capsys):
    build(cfg)
    cache = nbody._cache_dir(cfg)
    for _ in range(2):
        _delete_manifest(cache)
        build(cfg)
    assert len(list((cache.parent / nbody.QUARANTINE).iterdir())) == 2


def test_a_standard_split_is_checked_against_the_reference_not_its_manifest(data_root, cfg, monkeypatch, capsys):
    """With a reference, a cache whose npz and fingerprints.json were both rewritten consistently is
    still caught (tiny data stand in for the 25-second standard split)."""
    reference = nbody_sim.fingerprints(nbody_sim.generate(num_train=64, num_valid=32, num_test=32))
    monkeypatch.setattr(nbody, "_reference_for", lambda c: reference)
    build(cfg)
    cache = nbody._cache_dir(cfg)
    _change_array(cache)
    manifest = nbody_sim.fingerprints({s: nbody_sim.load_split(cache / f"{s}.npz") for s in nbody_sim.SPLITS})
    (cache / "fingerprints.json").write_text(json.dumps(manifest))
    capsys.readouterr()
    build(cfg)
    warned = warnings_of(capsys.readouterr().err)
    assert len(warned) == 1 and "committed reference" in warned[0] and "test/loc" in warned[0]


def test_regenerated_data_that_miss_the_reference_are_an_error(data_root, cfg, monkeypatch, capsys):
    reference = nbody_sim.fingerprints(nbody_sim.generate(num_train=64, num_valid=32, num_test=32))
    reference["valid"]["vel"]["sha256"] = "0" * 64
    monkeypatch.setattr(nbody, "_reference_for", lambda c: reference)
    cache = nbody._cache_dir(cfg)
    cache.mkdir(parents=True)
    (cache / "train.npz").write_bytes(b"not a zip file")
    with pytest.raises(DataCacheError) as info:
        build(cfg)
    text = str(info.value)
    assert str(cache) in text and "valid/vel" in text and "numpy build" in text
    assert "relaxbench data nbody" not in text           # that command writes to --out, not the cache
    assert not cache.exists() and leftovers(cache) == []  # moved aside, nothing cached
    assert len(warnings_of(capsys.readouterr().err)) == 1


def test_a_missing_reference_file_is_an_error(data_root, monkeypatch):
    monkeypatch.setattr(nbody_sim, "REFERENCE_RESOURCE", ("benchmark.tasks", "_reference", "absent.json"))
    monkeypatch.setattr(nbody_sim, "_REFERENCE_CACHE", {})
    monkeypatch.setattr(nbody_sim, "generate", lambda *a, **k: pytest.fail("generated without a reference"))
    with pytest.raises(FileNotFoundError, match="reference fingerprints are missing"):
        nbody_sim.load_reference_fingerprints()
    with pytest.raises(FileNotFoundError):
        nbody_sim.verify({"test": {}})
    with pytest.raises(FileNotFoundError):
        NBody(NBodyConfig(), train_size=16, progress=False)


def test_reference_fingerprints_are_package_data():
    path = REPO / "benchmark" / "tasks" / "_reference" / "nbody_checksums.json"
    assert nbody_sim.load_reference_fingerprints() == json.loads(path.read_text())
    assert nbody_sim.REFERENCE_FINGERPRINTS["test"]["loc"]["shape"] == [2000, 49, 3, 5]
    assert not (REPO / "datasets" / "nbody" / "checksums.json").exists()
    assert not list((REPO / "datasets").rglob("*.py"))   # datasets/ stays free of Python


_WORKER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from benchmark.tasks import nbody, nbody_sim
    cfg = nbody.NBodyConfig(num_train=64, num_valid=32, num_test=32)
    barrier, me, n = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    (barrier / me).touch()
    deadline = time.time() + 60
    while len(list(barrier.iterdir())) < n and time.time() < deadline:   # start together
        time.sleep(0.01)
    cache, data = nbody._load_or_generate(cfg, progress=False)
    print(nbody_sim.fingerprint(data["train"]["loc"]))
""")


def test_concurrent_processes_regenerate_a_bad_cache_safely(data_root, cfg, tmp_path):
    build(cfg)
    cache = nbody._cache_dir(cfg)
    _truncate(cache)
    env = {**os.environ, "RELAXBENCH_DATA": str(data_root), "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    procs = [subprocess.Popen([sys.executable, "-c", _WORKER, str(barrier), str(i), "3"], env=env, cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(3)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [err for _, err in outs]
    assert len({out.strip() for out, _ in outs}) == 1
    assert nbody._read_cache(cache, cfg, None)[1] == ""
    assert leftovers(cache) == []
    assert 1 <= len(list((cache.parent / nbody.QUARANTINE).iterdir())) <= 3
    assert all(len(warnings_of(err)) <= 1 for _, err in outs)


def test_relaxbench_run_recovers_from_a_corrupt_cache(data_root, cfg, tmp_path):
    build(cfg)
    cache = nbody._cache_dir(cfg)
    _garble_manifest(cache)
    env = {**os.environ, "RELAXBENCH_DATA": str(data_root), "RELAXBENCH_DEVICE": "cpu", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "benchmark", "run", "--task", "nbody", "--backbone", "egnn", "--method", "strict",
           "--epochs", "1", "--train-size", "16", "--results", str(tmp_path / "res"), "--quiet",
           *TINY, "model.hidden=16", "model.layers=2", "train.batch_size=16", "train.compile=off"]
    proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    warned = warnings_of(proc.stderr)
    assert len(warned) == 1 and str(cache) in warned[0] and "fingerprints.json is unreadable" in warned[0]
    records = list((tmp_path / "res" / "runs").rglob("*.json"))
    assert len(records) == 1 and json.loads(records[0].read_text())["status"] == "completed"
    assert nbody._read_cache(cache, cfg, None)[1] == ""
    assert len(list((cache.parent / nbody.QUARANTINE).iterdir())) == 1


# -- task.seed -> task.data_seed, hashes unchanged ---------------------------------------------------

def test_the_data_seed_is_task_data_seed():
    cfg = resolve("nbody", "egnn", "strict", overrides=["task.data_seed=7"])
    assert cfg.task_cfg.data_seed == 7 and cfg.seed == 0
    assert cfg.resolved()["task_cfg"]["data_seed"] == 7 and "seed" not in cfg.resolved()["task_cfg"]
    assert "_seed7" in nbody._cache_dir(cfg.task_cfg).name
    with pytest.raises(ConfigError):
        resolve("nbody", "egnn", "strict", overrides=["task.seed=7"])


def test_a_bare_seed_override_is_an_error():
    # the run's seed is --seed (a suite's `seeds`), never a key=value override
    with pytest.raises(ConfigError):
        resolve("nbody", "egnn", "strict", overrides=["seed=1"])


@pytest.mark.parametrize("record, build_args", [
    ("nbody/egnn/ace-elastic/n3000-seed0-6466feee1fc0137e.json",
     dict(backbone="egnn", method="ace-elastic", seed=0, epochs=200, overrides=["train.eval_every=10"])),
    ("nbody/segnn/ace-elastic/n3000-seed2-a7f15e33bce38e1f.json",
     dict(backbone="segnn", method="ace-elastic", seed=2, epochs=300, overrides=["train.compile=on"])),
])
def test_hashes_of_committed_records_are_unchanged(record, build_args):
    cfg = resolve("nbody", train_size=3000, **build_args)
    want = record.rsplit("-", 1)[1].removesuffix(".json")
    assert cfg.hash == want                                     # pinned
    path = REPO / "results" / "runs" / record
    if path.exists():
        stored = json.loads(path.read_text())["config"]
        assert stored["hash"] == want and config_hash(stored["resolved"]) == want
        assert canonical_resolved(cfg.resolved()) == stored["resolved"]


def test_canonical_resolved_maps_renamed_fields_back():
    cfg = resolve("nbody", "egnn", "strict", train_size=16, overrides=TINY + ["task.data_seed=5"])
    new = cfg.resolved()
    old = canonical_resolved(new)
    assert old["task_cfg"]["seed"] == 5 and "data_seed" not in old["task_cfg"]
    assert new["task_cfg"]["data_seed"] == 5                    # the input is not changed
    assert canonical_resolved(old) == old                       # an old record's dict is already canonical
    assert cfg.hash == config_hash(old)
    other = dict(new, task="another-task")
    assert canonical_resolved(other)["task_cfg"] == other["task_cfg"]   # renames are per task
    assert any(r.section == "task_cfg" and (r.new, r.old) == ("data_seed", "seed") for r in HASH_RENAMES)


@pytest.mark.parametrize("method, new, old", [
    ("unconstrained", ["method.gamma_init=0.5", "method.gamma_learnable=true"], {"gamma": 0.5, "learnable": True}),
    ("remul", ["method.gamma_init=0.25", "method.gamma_learnable=true"], {"gamma_value": 0.25, "gamma": "learnable"}),
    ("remul", [], {"gamma_value": 1.0, "gamma": "fixed"}),
    ("rpp", ["method.gamma_init=0.5"], {"gamma": 0.5}),
    ("lie-anneal", ["method.gamma_max=0.5"], {"theta_max": 0.5}),
])
def test_one_gamma_spelling_hashes_as_the_old_names(method, new, old):
    """gamma_init / gamma_learnable / gamma_max are hashed under each method's former names (and
    remul's former string values), so every run keeps its id."""
    cfg = resolve("nbody", "egnn", method, train_size=16, overrides=TINY + new)
    canon = canonical_resolved(cfg.resolved())["method_cfg"]
    assert {k: canon[k] for k in old} == old
    assert not {"gamma_init", "gamma_learnable", "gamma_max"} & set(canon)


def test_added_settings_at_their_default_leave_the_hash_alone():
    base = resolve("nbody", "segnn", "ace-eq", train_size=16, overrides=TINY)
    canon = canonical_resolved(base.resolved())
    assert "branch_act" not in canon["model_cfg"] and "dual_eps" not in canon["method_cfg"]
    assert base.resolved()["model_cfg"]["branch_act"] == "gelu"          # recorded all the same
    other = resolve("nbody", "segnn", "ace-eq", train_size=16, overrides=TINY + ["model.branch_act=silu"])
    assert other.hash != base.hash and canonical_resolved(other.resolved())["model_cfg"]["branch_act"] == "silu"
    egnn = resolve("nbody", "egnn", "ace-eq", train_size=16, overrides=TINY + ["model.branch_act=gelu"])
    assert canonical_resolved(egnn.resolved())["model_cfg"]["branch_act"] == "gelu"   # egnn's default is silu


# -- the installed package ---------------------------------------------------------------------------

@pytest.mark.slow
def test_an_installed_wheel_loads_the_reference_fingerprints(tmp_path):
    import shutil
    src = tmp_path / "src"                      # build from a copy: no build/ or egg-info in the checkout
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    for name in ("benchmark", "baselines"):
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    wheels, site = tmp_path / "wheels", tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input", "-q"]
    subprocess.run(pip + ["wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(src)],
                   check=True, cwd=tmp_path, timeout=300)
    wheel = next(wheels.glob("relaxbench-*.whl"))
    subprocess.run(pip + ["install", "--no-deps", "--target", str(site), str(wheel)],
                   check=True, cwd=tmp_path, timeout=300)
    probe = ("import benchmark.tasks.nbody_sim as ns; assert ns.__file__.startswith(%r), ns.__file__; "
             "ref = ns.load_reference_fingerprints(); assert ref and ref == ns.REFERENCE_FINGERPRINTS; "
             "print(len(ref), sum(len(v) for v in ref.values()))" % str(site))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(site)
    out = subprocess.run([sys.executable, "-c", probe], env=env, cwd=elsewhere, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["3", "12"]
