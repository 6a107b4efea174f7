"""Reports on hand-made records: aggregation with known means, standard deviations and test
statistics (checked against scipy), Holm's correction, table rendering (Markdown, LaTeX, CSV),
figure files, the results-folder report and the README's generated leaderboard section."""

from __future__ import annotations

import json
import math
import os
import stat
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as st

from benchmark.cli import main
from benchmark.record import SCHEMA_VERSION, validate_record, write_json_atomic, write_record
from benchmark.report import README_END, README_START, collect_results, suite_report, write_report
from benchmark.report.aggregate import Collection, SuiteInfo, runs_frame, summarize
from benchmark.report.stats import compare, describe, holm, paired, welch
from benchmark.report.tables import build_tables, to_latex, to_markdown

VARIANTS = {"strict": ("projected",), "unconstrained": ("relaxed", "projected"),
            "ace-elastic": ("relaxed", "projected"), "ace-eq": ("projected", "relaxed")}


def make_record(method: str, seed: int, test: float, *, eq: float = 1e-3, status: str = "completed",
                train_size: int = 100, task: str = "nbody", params: int = 1000, higher: bool = False,
                epochs: int = 4, extra_diag: dict | None = None) -> dict:
    """A schema-valid record whose every number is given (curves end at ``test``)."""
    variants = VARIANTS.get(method, ("relaxed",))
    relaxed = method != "strict"
    curves = []
    for epoch in range(1, epochs + 1):
        row = {"epoch": epoch, "train_loss": test * (1 + 1 / epoch)}
        for v in variants:
            row[v] = {"val_metric": test * (1 + 1 / epoch), "equivariance": {"abs": eq, "rel": eq * (1 + 1 / epoch)}}
        if relaxed:
            gamma = [1.0 / epoch, 0.5 / epoch]
            row.update(gamma=gamma, gamma_bar=max(gamma), truncation_error=0.3 * max(gamma))
            if method.startswith("ace"):
                row.update({"lambda": [0.01 * epoch, 0.02 * epoch]})
            if method == "ace-elastic":
                row.update(u=[0.1 / epoch, 0.2 / epoch])
        curves.append(row)
    diag = {"layers": ["layer0", "layer1"], "gamma": [0.25, 0.125], "gamma_bar": 0.25} if relaxed else {}
    if method.startswith("ace"):
        diag["lambda"] = [0.04, 0.08]
    if method == "ace-elastic":
        diag["u"] = [0.025, 0.05]
    diag.update(extra_diag or {})
    done = status == "completed"
    record = {
        "schema_version": SCHEMA_VERSION, "task": task, "backbone": "egnn", "method": method, "seed": seed,
        "train_size": train_size, "status": status, "reason": None if done else f"{status} on purpose",
        "config": {"hash": f"{method}{seed}{train_size}".encode().hex()[:16].ljust(16, "0"),
                   "resolved": {"task": task, "method": method, "seed": seed, "train_size": train_size,
                                "train": {"epochs": epochs}, "model_cfg": {"hidden": 16}}},
        "variants": {v: {"best_epoch": epochs, "val_metric": test * 1.1, "test_metric": test,
                         "equivariance": {"abs": eq, "rel": eq}} for v in variants} if done else {},
        "headline": variants[0],
        "metric": {"name": "acc" if higher else "mse", "higher_is_better": higher, "scale": 1.0},
        "curves": curves if done else curves[:1], "diagnostics": diag, "params": params,
        "timing": {"wall_seconds": 1.0, "train_seconds": 0.5, "median_step_seconds": 0.01, "epochs": epochs,
                   "steps": 4 * epochs},
        "provenance": {"git_sha": None},
    }
    validate_record(record)
    return record


def save(results: Path, record: dict) -> Path:
    path = (results / "runs" / record["task"] / record["backbone"] / record["method"]
            / f"n{record['train_size']}-seed{record['seed']}-{record['config']['hash']}.json")
    write_record(path, record)
    return path


def collection(records: list[dict], name: str = "s", reference: str = "strict", planned: int | None = None):
    expected = {}
    for r in records:
        key = (r["task"], r["backbone"], r["method"], r["train_size"])
        expected[key] = planned or expected.get(key, 0) + 1
    info = SuiteInfo(name, "hand-made protocol", "relaxbench suite run s", reference, {}, expected)
    return Collection([(name, r, None) for r in records], {name: info})


STRICT = [0.10, 0.12, 0.11]
UNC = [0.20, 0.22, 0.26]
ELASTIC = [0.050, 0.052, 0.049]


def three_methods() -> list[dict]:
    recs = [make_record("strict", s, v, eq=1e-7, params=800) for s, v in enumerate(STRICT)]
    recs += [make_record("unconstrained", s, v, eq=0.2) for s, v in enumerate(UNC)]
    recs += [make_record("ace-elastic", s, v, eq=0.01) for s, v in enumerate(ELASTIC)]
    return recs


# -- statistics -----------------------------------------------------------------------------------

def test_atomic_json_write_honours_the_umask_and_leaves_nothing_behind(tmp_path):
    """A record gets the permissions a plain open() would give it (mkstemp's private 0600
    would hide a shared results folder from its group); a failed write keeps the old file."""
    target = tmp_path / "runs" / "r.json"
    old = os.umask(0o027)
    try:
        write_json_atomic(target, {"a": 1.5})
    finally:
        os.umask(old)
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    assert json.loads(target.read_text()) == {"a": 1.5}

    with pytest.raises(TypeError):
        write_json_atomic(target, {"a": object()})
    assert json.loads(target.read_text()) == {"a": 1.5}
    assert sorted(p.name for p in target.parent.iterdir()) == ["r.json"]

def test_describe_matches_numpy_and_student_t():
    x = [0.5, 0.7, 0.65, 0.9]
    d = describe(x)
    assert d["mean"] == pytest.approx(np.mean(x)) and d["std"] == pytest.approx(np.std(x, ddof=1)) and d["n"] == 4
    half = st.t.ppf(0.975, 3) * np.std(x, ddof=1) / 2
    assert (d["ci_low"], d["ci_high"]) == pytest.approx((np.mean(x) - half, np.mean(x) + half))
    one = describe([0.3, float("nan")])
    assert one["n"] == 1 and one["mean"] == 0.3 and math.isnan(one["std"]) and math.isnan(one["ci_low"])


def test_welch_paired_and_holm_against_scipy():
    t, p = welch(UNC, STRICT)
    ref = st.ttest_ind(UNC, STRICT, equal_var=False)
    assert (t, p) == pytest.approx((ref.statistic, ref.pvalue))
    t, p, n = paired({0: 1.0, 1: 2.0, 2: 3.5, 7: 9.0}, {0: 0.5, 1: 1.9, 2: 2.0})
    ref = st.ttest_rel([1.0, 2.0, 3.5], [0.5, 1.9, 2.0])
    assert n == 3 and (t, p) == pytest.approx((ref.statistic, ref.pvalue))
    assert holm([0.01, 0.04, 0.03, float("nan")])[:3] == pytest.approx([0.03, 0.06, 0.06])
    assert math.isnan(holm([0.01, float("nan")])[1])
    assert holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])


def test_compare_marks_wins_and_losses_in_the_metric_direction():
    samples = {"strict": dict(enumerate(STRICT)), "unconstrained": dict(enumerate(UNC)),
               "ace-elastic": dict(enumerate(ELASTIC))}
    out = compare(samples, "strict", higher_is_better=False, alpha=0.05)
    p_unc = st.ttest_ind(UNC, STRICT, equal_var=False).pvalue
    p_ace = st.ttest_ind(ELASTIC, STRICT, equal_var=False).pvalue
    expected = holm([p_unc, p_ace])
    assert out["unconstrained"]["p_holm"] == pytest.approx(expected[0])
    assert out["ace-elastic"]["p_holm"] == pytest.approx(expected[1])
    assert out["unconstrained"]["verdict"] == "loss" and out["ace-elastic"]["verdict"] == "win"
    assert out["strict"]["verdict"] == "ref"
    flipped = compare(samples, "strict", higher_is_better=True, alpha=0.05)
    assert flipped["unconstrained"]["verdict"] == "win" and flipped["ace-elastic"]["verdict"] == "loss"
    paired_out = compare(samples, "strict", higher_is_better=False, test="paired")
    assert paired_out["ace-elastic"]["p"] == pytest.approx(st.ttest_rel(ELASTIC, STRICT).pvalue)
    too_few = compare({"strict": {0: 1.0}, "x": {0: 2.0}}, "strict", higher_is_better=False)
    assert too_few["x"]["verdict"] == "n/a"


def test_summary_counts_every_status_and_keeps_diverged_out_of_the_mean():
    recs = three_methods()
    recs.append(make_record("unconstrained", 3, 99.0, status="diverged"))
    recs.append(make_record("ace-elastic", 3, 0.0, status="failed"))
    col = collection(recs, planned=5)
    summary = summarize(runs_frame(col), col)
    head = summary[summary.headline].set_index("method")
    assert head.loc["unconstrained", "mean"] == pytest.approx(np.mean(UNC))
    assert head.loc["unconstrained", "std"] == pytest.approx(np.std(UNC, ddof=1))
    assert head.loc["unconstrained", "n"] == 3 and head.loc["unconstrained", "n_diverged"] == 1
    assert head.loc["ace-elastic", "n_failed"] == 1 and head.loc["ace-elastic", "n_planned"] == 5
    assert head.loc["strict", "variant"] == "projected" and head.loc["ace-elastic", "variant"] == "relaxed"
    assert head.loc["strict", "params"] == 800 and head.loc["strict", "median_step_seconds"] == 0.01
    ci = st.t.ppf(0.975, 2) * np.std(ELASTIC, ddof=1) / math.sqrt(3)
    assert head.loc["ace-elastic", "ci95_high"] == pytest.approx(np.mean(ELASTIC) + ci)
    # both variants of a two-variant method are summarised
    assert set(summary[summary.method == "unconstrained"].variant) == {"relaxed", "projected"}


# -- tables ---------------------------------------------------------------------------------------
def test_tables_render_markdown_latex_and_csv():
    recs = three_methods() + [make_record("unconstrained", 3, 99.0, status="diverged")]
    col = collection(recs)
    rep = suite_report(col, "s")
    md = rep.markdown
    assert "| method | variant | mse ↓ | equivariance error (rel) ↓ | params | runs |" in md
    lines = {line.split("|")[1].strip(): line for line in md.splitlines() if line.startswith("| ")}
    assert lines["strict"].startswith("| strict | projected |")
    assert f"**{np.mean(ELASTIC):.3g} ± {np.std(ELASTIC, ddof=1):.2g}** ▲" in lines["ace-elastic"]
    assert "▼" in lines["unconstrained"] and "3/4 (1 diverged)" in lines["unconstrained"]
    assert "**800**" in lines["strict"] and "**1.00e-07 ± 0**" in lines["strict"]
    assert "unbiased standard deviation" in md and "n = 3" in md and "Holm" in md
    assert "Protocol: hand-made protocol" in md and "ace-elastic: relaxed" in md
    # the leaderboard ranks by the headline metric
    board = [line.split("|")[2].strip() for line in rep.leaderboard_markdown.splitlines()
             if line.startswith("| ") and not line.startswith("| rank")]
    assert board == ["ace-elastic", "strict", "unconstrained"]
    tex = to_latex(rep.tables[0])
    assert r"\toprule" in tex and r"\midrule" in tex and r"\bottomrule" in tex
    assert r"\textbf{" in tex and r"$\pm$" in tex and r"$\downarrow$" in tex and r"$^{\blacktriangle}$" in tex
    csv = rep.tables[0].frame
    assert {"mean", "std", "n", "ci95_low", "p_holm", "verdict", "params"} <= set(csv.columns)
    assert csv.set_index("method").loc["ace-elastic", "verdict"] == "win"


def test_csv_of_several_tables_keeps_dtypes_and_column_order_when_one_has_an_all_missing_column():
    from benchmark.report.tables import Table, to_csv_frame

    def table(frame):
        return Table("t", {}, [], [], [], [], [], [], frame)

    # a table whose rows have no Welch p against a paper: an all-None (object) column
    without = pd.DataFrame({"method": ["strict"], "mean": [1.0], "paper_p_welch": [None]})
    with_paper = pd.DataFrame({"method": ["ace-eq"], "paper_p_welch": [0.016], "mean": [2.0],
                               "paper_n": [3]})
    with warnings.catch_warnings():
        warnings.simplefilter("error")                   # pandas' all-NA concatenation warning
        both = to_csv_frame([table(without), table(pd.DataFrame()), table(with_paper)])
    assert list(both.columns) == ["method", "mean", "paper_p_welch", "paper_n"]
    assert both["mean"].tolist() == [1.0, 2.0] and both["mean"].dtype == np.float64
    assert both["paper_p_welch"].dtype == np.float64
    assert math.isnan(both.loc[0, "paper_p_welch"]) and both.loc[1, "paper_p_welch"] == 0.016
    assert pd.isna(both.loc[0, "paper_n"]) and both.loc[1, "paper_n"] == 3
    assert both.to_csv(index=False).splitlines()[1:] == ["strict,1.0,,", "ace-eq,2.0,0.016,3"]   # a count stays 3
    flags = to_csv_frame([table(pd.DataFrame({"in": [None]})), table(pd.DataFrame({"in": [True, False]}))])
    assert flags["in"].dtype == "boolean" and flags.to_csv(index=False).split() == ["in", '""', "True", "False"]
    assert to_csv_frame([table(pd.DataFrame())]).empty


def test_a_tasks_further_test_numbers_become_columns_with_their_mean_and_sd():
    recs = three_methods()
    for rec, confusion in zip(recs, [1.0, 2.0, 3.0, 10.0, 20.0, 30.0, 4.0, 4.0, 4.0]):
        for var in rec["variants"].values():
            var["test_breakdown"] = {"six_as_nine": confusion, "per_class_error": [0.0] * 10}
    md = suite_report(collection(recs), "s").markdown
    assert "| method | variant | mse ↓ | six as nine (test) | equivariance error (rel) ↓ |" in md
    lines = {line.split("|")[1].strip(): line for line in md.splitlines() if line.startswith("| ")}
    assert "| 2.00 ± 1.0 |" in lines["strict"] and "| 20.0 ± 10 |" in lines["unconstrained"]
    # records without them: no such column
    assert "six as nine" not in suite_report(collection(three_methods()), "s").markdown


def test_higher_is_better_metric_gets_an_up_arrow_and_best_is_the_largest():
    recs = [make_record("strict", s, v, higher=True) for s, v in enumerate([0.8, 0.82])]
    recs += [make_record("unconstrained", s, v, higher=True) for s, v in enumerate([0.9, 0.91])]
    col = collection(recs)
    runs = runs_frame(col)
    tables = build_tables(summarize(runs, col), runs, col.suites)
    md = to_markdown(tables[0])
    assert "acc ↑" in md and "**0.905" in md


def test_all_variants_and_paired_test_options():
    col = collection(three_methods())
    runs = runs_frame(col)
    tables = build_tables(summarize(runs, col), runs, col.suites, all_variants=True, test="paired")
    md = to_markdown(tables[0])
    assert "| unconstrained | projected |" in md and "paired t-test" in md


# -- files, figures, results folder, README ---------------------------------------------------------
def test_report_files_and_figures(tmp_path):
    recs = three_methods()
    recs += [make_record(m, s, v * 0.5, train_size=400, eq=e) for m, vals, e in
             (("strict", STRICT, 1e-7), ("unconstrained", UNC, 0.2), ("ace-elastic", ELASTIC, 0.01))
             for s, v in enumerate(vals)]
    recs += [make_record("ace-eq", s, 0.07 + 0.001 * s) for s in range(3)]
    col = collection(recs)
    (rep,) = write_report(col, tmp_path / "reports")
    folder = tmp_path / "reports" / "s"
    for name in ("tables.md", "tables.tex", "tables.csv", "leaderboard.md", "leaderboard.csv", "summary.csv",
                 "runs.csv", "report.json"):
        assert (folder / name).is_file(), name
    assert len(pd.read_csv(folder / "runs.csv")) == sum(len(r["variants"]) for r in recs)
    stems = {"sample_efficiency_nbody_egnn", "training_dynamics_nbody_egnn_n100", "training_dynamics_nbody_egnn_n400",
             "relaxation_parameters_nbody_egnn_n100", "layer_relaxation_ace-elastic", "layer_relaxation_ace-eq",
             "gamma_bar_errors_nbody_egnn"}
    for stem in stems:
        for ext in ("png", "pdf"):
            path = folder / "figures" / f"{stem}.{ext}"
            assert path.is_file() and path.stat().st_size > 1000, path
    assert (folder / "figures" / "sample_efficiency_nbody_egnn.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (folder / "figures" / "gamma_bar_errors_nbody_egnn.pdf").read_bytes()[:5] == b"%PDF-"
    assert set(rep.files) >= {folder / "figures" / f"{s}.png" for s in stems}


def test_sample_efficiency_axis_of_a_nonnegative_metric_ends_at_zero_under_a_wide_interval(tmp_path, monkeypatch):
    import benchmark.report.figures as figures
    limits = {}

    def keep(fig, out, stem):
        limits[stem] = fig.axes[0].get_ylim(), fig.axes[0].get_yscale()
        __import__("matplotlib.pyplot").pyplot.close(fig)
        return []

    monkeypatch.setattr(figures, "_save", keep)
    rows = [dict(suite="s", task="t", backbone="b", method="m", status="completed", headline=True,
                 metric="mse", higher_is_better=False, train_size=n, test_metric=v)
            for n, v in [(1000, 1.0), (1000, 1.1), (2000, 0.9), (2000, 0.3)]]  # n=2: t(1) makes a wide band
    figures.sample_efficiency(pd.DataFrame(rows), tmp_path)
    (low, high), scale = limits["sample_efficiency_t_b"]
    assert scale == "linear" and low == 0 and high > 1.1
    rows = [dict(r, test_metric=r["test_metric"] - 2) for r in rows]               # a metric that can be negative
    figures.sample_efficiency(pd.DataFrame(rows), tmp_path)
    assert limits["sample_efficiency_t_b"][0][0] < -2


def test_results_folder_report_groups_by_suite_and_updates_the_readme(tmp_path, capsys):
    results = tmp_path / "results"
    paths = [save(results, r) for r in three_methods()]
    run_ids = [str(p.relative_to(results / "runs").with_suffix("")) for p in paths]
    write_json_atomic(results / "suites" / "demo.json",
                      {"name": "demo", "protocol": "demo protocol", "source": "demo", "reference": "strict",
                       "headline": {}, "runs": run_ids[:6]})           # ace-elastic runs belong to no suite
    col = collect_results(results)
    assert set(col.suites) == {"demo"} | {s for s in col.suites if s.startswith("ad-hoc-")}
    assert len([s for s in col.suites if s.startswith("ad-hoc-")]) == 1
    readme = results / "README.md"
    readme.write_text(f"# Results\n\nschema text\n\n{README_START}\nold table\n{README_END}\n\nafter\n")
    assert main(["report", "--results", str(results), "--readme", str(readme), "--no-figures"]) == 0
    out = capsys.readouterr().out
    assert "## Suite demo" in out and "| strict | projected |" in out
    text = readme.read_text()
    assert "old table" not in text and text.startswith("# Results\n\nschema text\n\n" + README_START)
    assert text.endswith(f"{README_END}\n\nafter\n")
    section = text.split(README_START)[1].split(README_END)[0]
    assert "Suite `demo`" in section and "demo protocol" in section and "| rank |" in section
    assert f"relaxbench report --results {results} --readme {readme}" in section
    assert "relaxbench suite run demo" in section and "ad-hoc" not in section
    # a README without markers is refused and left alone
    bare = results / "BARE.md"
    bare.write_text("# nothing\n")
    assert main(["report", "--results", str(results), "--readme", str(bare), "--no-figures"]) == 2
    assert "leaderboard:start" in capsys.readouterr().err and bare.read_text() == "# nothing\n"


def test_reports_written_with_an_absolute_root_name_no_folder_above_the_working_directory(
        tmp_path, monkeypatch, capsys):
    results = tmp_path / "project" / "results"
    paths = [save(results, r) for r in three_methods()]
    run_ids = [str(p.relative_to(results / "runs").with_suffix("")) for p in paths]
    write_json_atomic(results / "suites" / "demo.json",
                      {"name": "demo", "protocol": "demo protocol", "source": "demo", "reference": "strict",
                       "headline": {}, "runs": run_ids})
    readme = results / "README.md"
    readme.write_text(f"# Results\n\n{README_START}\n{README_END}\n")
    monkeypatch.chdir(tmp_path / "project")
    assert main(["report", "--results", str(results), "--readme", str(readme), "--no-figures"]) == 0
    capsys.readouterr()
    written = sorted((results / "reports").rglob("*.*")) + [readme]
    assert len(written) > 3
    for path in written:
        assert str(tmp_path) not in path.read_text(), path
    assert "relaxbench report --results results --readme results/README.md" in readme.read_text()
    rows = pd.read_csv(results / "reports" / "demo" / "runs.csv")
    assert sorted(rows.record.unique()) == sorted(f"results/{p.relative_to(results).as_posix()}" for p in paths)
    assert "`relaxbench suite run demo --results results`" in (results / "reports" / "demo" / "tables.md").read_text()


def test_report_of_a_spec_reads_only_its_runs(tmp_path, capsys):
    import yaml

    from benchmark.record import record_path
    from benchmark.suite import parse_spec
    from conftest import tiny_overrides
    data = {"name": "only-strict", "protocol": "p", "epochs": 2, "overrides": tiny_overrides("nbody", "egnn"),
            "grid": {"tasks": ["nbody"], "backbones": ["egnn"], "methods": ["strict"], "train_sizes": [48],
                     "seeds": [0, 1]}}
    spec_path = tmp_path / "only-strict.yaml"
    spec_path.write_text(yaml.safe_dump(data))
    spec = parse_spec(data, path=spec_path)
    results = tmp_path / "results"
    run = spec.runs()[0]
    record = make_record("strict", 0, 0.5, train_size=48)
    record["config"]["hash"] = run.cfg.hash
    write_record(record_path(results, run.cfg), record)
    save(results, make_record("unconstrained", 0, 0.7))              # not in the suite
    assert main(["report", str(spec_path), "--results", str(results), "--no-figures"]) == 0
    out = capsys.readouterr().out
    assert "| strict | projected | 0.500 |" in out and "unconstrained" not in out and "1/2 (1 missing)" in out
    readme = tmp_path / "README.md"
    readme.write_text(f"{README_START}\n{README_END}\n")
    assert main(["report", str(spec_path), "--results", str(results), "--readme", str(readme), "--no-figures"]) == 0
    assert f"relaxbench report {spec_path} --results {results} --readme {readme}" in readme.read_text()
    capsys.readouterr()
    assert main(["report", "no-such-thing", "--results", str(results)]) == 2
    assert "results folder" in capsys.readouterr().err


def test_samples_to_match_reads_a_power_law_exactly_and_never_extrapolates():
    import math
    from benchmark.report.sample_efficiency import samples_to_match
    sizes = [500, 1000, 2000, 3000, 5000, 7000, 9000]
    curve = [0.5 * n ** -0.7 for n in sizes]                    # a learning curve, mse = c n^-a
    for n_true in (640.0, 2500.0, 4321.0, 8000.0):
        assert samples_to_match(sizes, curve, 0.5 * n_true ** -0.7) == pytest.approx(n_true, rel=1e-9)
    assert samples_to_match(sizes, curve, curve[-1]) == pytest.approx(9000)
    assert samples_to_match(sizes, curve, 1.0) == 500           # reached at the smallest size already
    assert math.isinf(samples_to_match(sizes, curve, curve[-1] / 2))   # never reached: no extrapolation
    accuracy = [1 - v for v in curve]
    assert samples_to_match(sizes, accuracy, 1 - 0.5 * 2500 ** -0.7, higher_is_better=True) == \
        pytest.approx(2500, rel=2e-2)         # a power law in the error, read as one in the accuracy
    with pytest.raises(ValueError):
        samples_to_match([], [], 0.1)


def test_sample_efficiency_table_from_a_summary():
    import pandas as pd
    from benchmark.report.sample_efficiency import sample_efficiency_tables, to_markdown
    rows = []
    for method, scale in (("strict", 1.0), ("ace-eq", 2.0)):      # ace-eq needs 2^(1/0.5) = 4x the data
        for n in (1000, 4000, 16000):
            rows.append({"suite": "s", "task": "nbody", "backbone": "segnn", "method": method, "train_size": n,
                         "variant": "projected", "headline": True, "higher_is_better": False, "metric": "mse",
                         "mean": scale * n ** -0.5, "n_completed": 3 if n < 16000 or method == "strict" else 0,
                         "n_planned": 3})
    tables = sample_efficiency_tables(pd.DataFrame(rows), "strict",
                                      planned={("nbody", "segnn", "strict", 32000): 3})
    (table,) = tables
    assert table["sizes"] == [1000, 4000, 16000, 32000] and table["target_size"] == 16000
    by = {r["method"]: r for r in table["rows"]}
    assert by["strict"]["to_match"] == pytest.approx(16000)
    assert by["ace-eq"]["to_match"] == float("inf")              # its 16000 cell has no runs: "> 4,000"
    text = to_markdown(table)
    assert "n to match strict at 16,000" in text and "> 4,000" in text and "| – |" in text
    assert by["strict"].get("to_match_ci") is None             # no per-seed runs given: no interval
    per_seed = pd.DataFrame([{**{k: r[k] for k in ("suite", "task", "backbone", "method", "train_size", "variant")},
                              "status": "completed", "seed": seed, "test_metric": r["mean"] * (1 + 0.01 * seed)}
                             for r in rows if r["n_completed"] for seed in range(3)])
    (table,) = sample_efficiency_tables(pd.DataFrame(rows), "strict", runs=per_seed)
    by = {r["method"]: r for r in table["rows"]}
    assert by["strict"]["to_match_ci"] == (16000.0, 16000.0)
    assert by["ace-eq"]["to_match_ci"] == (float("inf"), float("inf"))
    assert "| 16,000 | 16,000 – 16,000 |" in to_markdown(table)
    assert "training steps" not in to_markdown(table)          # runs without step counts: no such row

    # The steps row: the median over a size's completed runs (300 epochs of batch 100 here, one
    # run cut short at 1000), "–" where no run completed.
    per_seed["headline"] = True
    per_seed["steps"] = per_seed.train_size * 3
    per_seed.loc[(per_seed.train_size == 1000) & (per_seed.method == "strict") & (per_seed.seed == 0), "steps"] = 5
    (table,) = sample_efficiency_tables(pd.DataFrame(rows), "strict", runs=per_seed,
                                        planned={("nbody", "segnn", "strict", 32000): 3})
    assert table["steps"] == {1000: 3000, 4000: 12000, 16000: 48000}
    assert "| *training steps* | | 3,000 | 12,000 | 48,000 | – | | |" in to_markdown(table)


def test_bootstrap_interval_of_samples_to_match():
    import math
    from benchmark.report.sample_efficiency import bootstrap_samples_to_match
    sizes = [1000, 2000, 4000, 8000]
    # identical seeds: the interval collapses onto the point reading (2 n^-1/2 needs 4x the data)
    assert bootstrap_samples_to_match({n: [2 * n ** -0.5] * 3 for n in sizes}, [1000 ** -0.5] * 3) == \
        pytest.approx((4000.0, 4000.0))
    # the reference read against its own target cell uses one draw for both: exactly its largest size
    noisy = {n: [n ** -0.5 * f for f in (0.95, 1.0, 1.05)] for n in sizes}
    assert bootstrap_samples_to_match(noisy, noisy[8000], same_cell=8000) == (8000.0, 8000.0)
    # seeds within a factor 0.9..1.1 of the curve: the reading stays in 4000 * [0.9^2, 1.1^2]
    slower = {n: [2 * n ** -0.5 * f for f in (0.9, 1.0, 1.1)] for n in sizes}
    low, high = bootstrap_samples_to_match(slower, [1000 ** -0.5] * 3)
    assert 4000 * 0.81 <= low < 4000 < high <= 4000 * 1.21
    # a target at the curve's last mean: reached in some replicates only; below its band: never
    low, high = bootstrap_samples_to_match(slower, [2 * 8000 ** -0.5] * 3)
    assert low < 8000 and math.isinf(high)
    assert bootstrap_samples_to_match(slower, [0.85 * 2 * 8000 ** -0.5] * 3) == (math.inf, math.inf)
    # a single-seed cell is held at its value; no cell (or no target) with two seeds: no interval
    assert bootstrap_samples_to_match({1000: [0.1], 2000: [0.05, 0.06]}, [0.1, 0.1]) == (1000.0, 1000.0)
    assert bootstrap_samples_to_match({1000: [0.1], 2000: [0.05]}, [0.05, 0.05]) is None
    assert bootstrap_samples_to_match(slower, [0.01]) is None
