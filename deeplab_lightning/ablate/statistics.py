"""The statistics of an ablation's rows: over seeds, a mean with its Student-t 95 % interval; against the
baseline row, the paired difference over the seeds both rows ran (same seed: same initial weights, same batches
in the same order, same augmentation), its interval and a two-sided paired t-test.

What they do not say: an interval over 3 seeds describes the spread of training runs on this split, not the
error of the split's mIoU as an estimate on unseen images; a p-value above 0.05 means "not distinguishable with
n seeds", not "equal".
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from scipy import stats

LEVEL = 0.95


@dataclass(frozen=True)
class Summary:
    """A metric over the seeds of one row: mean, sample standard deviation (ddof 1), n and the ``LEVEL``
    interval of the mean (t with n - 1 degrees of freedom; None for n < 2)."""

    mean: float
    std: float | None
    n: int
    low: float | None
    high: float | None


@dataclass(frozen=True)
class Paired:
    """A row minus the baseline, seed by seed over the ``seeds`` both ran: mean difference, its interval and the
    two-sided p-value of the paired t-test (None for n < 2; 0 or 1 when every difference is the same)."""

    mean: float
    n: int
    low: float | None
    high: float | None
    p: float | None
    seeds: tuple[int, ...]

    @property
    def distinguishable(self) -> bool | None:
        """Whether the interval excludes 0 (None without one)."""
        return None if self.low is None else not (self.low <= 0.0 <= self.high)


def t_interval(mean: float, std: float, n: int, level: float = LEVEL) -> tuple[float, float]:
    """The ``level`` interval of a mean of n values with sample standard deviation ``std``."""
    half = stats.t.ppf(0.5 + level / 2, n - 1) * std / math.sqrt(n)
    return mean - half, mean + half


def summarize(values: Sequence[float], level: float = LEVEL) -> Summary:
    """Mean, standard deviation, n and interval of ``values`` (one per seed)."""
    n = len(values)
    if n == 0:
        raise ValueError("no values to summarise")
    mean = math.fsum(values) / n
    if n < 2:
        return Summary(mean, None, n, None, None)
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
    return Summary(mean, std, n, *t_interval(mean, std, n, level))


def paired(row: dict[int, float], baseline: dict[int, float], level: float = LEVEL) -> Paired | None:
    """``row`` minus ``baseline`` over the seeds both have (values keyed by seed); None when they share none."""
    seeds = tuple(sorted(set(row) & set(baseline)))
    if not seeds:
        return None
    diffs = [row[s] - baseline[s] for s in seeds]
    summary = summarize(diffs, level)
    if summary.n < 2:
        return Paired(summary.mean, 1, None, None, None, seeds)
    if summary.std == 0:  # t is infinite (or 0/0): the interval is the point
        return Paired(summary.mean, summary.n, summary.mean, summary.mean, 1.0 if summary.mean == 0 else 0.0, seeds)
    t = summary.mean / (summary.std / math.sqrt(summary.n))
    p = 2 * stats.t.sf(abs(t), summary.n - 1)
    return Paired(summary.mean, summary.n, summary.low, summary.high, float(p), seeds)
