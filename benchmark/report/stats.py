"""Statistics of a benchmark's groups: summaries, tests against a reference method, Holm correction.

All standard deviations are unbiased (``ddof=1``); confidence intervals use Student's t. The tests
are scipy's: Welch's t-test (unequal variances) on independent seeds, or the paired t-test on the
seeds two methods share. The p-values of one table's comparisons are Holm-corrected together.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np
from scipy import stats as _st

__all__ = ["describe", "welch", "welch_from_stats", "paired", "holm", "compare", "TESTS"]

TESTS = ("welch", "paired")


def describe(values: Sequence[float], confidence: float = 0.95) -> dict[str, float]:
    """Mean, unbiased standard deviation, n and the Student-t confidence interval of the finite values.

    >>> d = describe([1.0, 2.0, 3.0])
    >>> d["mean"], d["std"], d["n"]
    (2.0, 1.0, 3)
    >>> round(d["ci_high"] - d["mean"], 4)   # t(0.975, 2) * 1 / sqrt(3)
    2.4841
    """
    x = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    n = int(x.size)
    mean = float(x.mean()) if n else math.nan
    std = float(x.std(ddof=1)) if n > 1 else math.nan
    if n > 1:
        half = float(_st.t.ppf(0.5 + confidence / 2, n - 1) * std / math.sqrt(n))
    else:
        half = math.nan
    return {"mean": mean, "std": std, "n": n, "ci_low": mean - half, "ci_high": mean + half, "ci_half": half}


def welch(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """Welch's t statistic and two-sided p-value of ``mean(a) - mean(b)`` (NaN when undefined)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.size < 2 or b.size < 2:
        return math.nan, math.nan
    res = _st.ttest_ind(a, b, equal_var=False)
    return float(res.statistic), float(res.pvalue)


def welch_from_stats(mean_a: float, sd_a: float, n_a: int, mean_b: float, sd_b: float, n_b: int
                     ) -> tuple[float, float]:
    """Welch's t statistic and two-sided p-value from two groups' means, sample (ddof 1) sds and sizes.

    For a measured group against a published one, where only the summary statistics are known.
    NaN when a group has fewer than 2 members, or a non-finite sd, or both sds are 0.

    >>> t, p = welch_from_stats(2.0, 1.0, 3, 2.0, 1.0, 3)
    >>> t, p
    (0.0, 1.0)
    """
    values = (mean_a, sd_a, mean_b, sd_b)
    if n_a < 2 or n_b < 2 or not all(math.isfinite(v) for v in values) or (sd_a == 0 and sd_b == 0):
        return math.nan, math.nan
    res = _st.ttest_ind_from_stats(mean_a, sd_a, n_a, mean_b, sd_b, n_b, equal_var=False)
    return float(res.statistic), float(res.pvalue)


def paired(a: Mapping[int, float], b: Mapping[int, float]) -> tuple[float, float, int]:
    """Paired t statistic, two-sided p-value and the number of shared seeds of ``a - b``."""
    shared = sorted(set(a) & set(b))
    if len(shared) < 2:
        return math.nan, math.nan, len(shared)
    res = _st.ttest_rel([a[s] for s in shared], [b[s] for s in shared])
    return float(res.statistic), float(res.pvalue), len(shared)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (NaN entries stay NaN and do not count).

    >>> holm([0.01, 0.04, 0.03])
    [0.03, 0.06, 0.06]
    """
    p = [float(v) for v in pvalues]
    finite = [i for i, v in enumerate(p) if np.isfinite(v)]
    m = len(finite)
    adjusted = [math.nan] * len(p)
    running = 0.0
    for rank, i in enumerate(sorted(finite, key=lambda k: p[k])):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adjusted[i] = running
    return adjusted


def compare(samples: Mapping[str, Mapping[int, float]], reference: str, *, higher_is_better: bool,
            test: str = "welch", alpha: float = 0.05) -> dict[str, dict]:
    """Test every method of one table against ``reference``.

    ``samples`` maps method -> {seed: value} (completed runs only). Returns, per method other than
    the reference: ``statistic``, ``p``, ``p_holm``, ``n`` and ``verdict``: ``win`` or ``loss``
    (significant after Holm's correction, in the metric's direction), ``ns`` (not significant) or
    ``n/a`` (too few runs); the reference itself gets ``ref``.
    """
    if test not in TESTS:
        raise ValueError(f"test={test!r}: allowed: {', '.join(TESTS)}")
    out: dict[str, dict] = {}
    if reference not in samples:
        return {m: {"statistic": math.nan, "p": math.nan, "p_holm": math.nan, "n": len(v), "verdict": "n/a"}
                for m, v in samples.items()}
    ref = samples[reference]
    others = [m for m in samples if m != reference]
    for m in others:
        if test == "welch":
            stat, p = welch(list(samples[m].values()), list(ref.values()))
            n = len(samples[m])
        else:
            stat, p, n = paired(samples[m], ref)
        out[m] = {"statistic": stat, "p": p, "n": n}
    adjusted = holm([out[m]["p"] for m in others])
    for m, p_adj in zip(others, adjusted):
        out[m]["p_holm"] = p_adj
        if not np.isfinite(p_adj):
            out[m]["verdict"] = "n/a"
        elif p_adj < alpha:
            better = out[m]["statistic"] > 0 if higher_is_better else out[m]["statistic"] < 0
            out[m]["verdict"] = "win" if better else "loss"
        else:
            out[m]["verdict"] = "ns"
    out[reference] = {"statistic": math.nan, "p": math.nan, "p_holm": math.nan, "n": len(ref), "verdict": "ref"}
    return out
