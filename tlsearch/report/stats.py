"""Intervals and verdicts for confirmed runs: numbers a reviewer can check.

Test accuracy is given as a mean with its Student-t 95% interval. The compute ratio is scratch / pretrained of
the geometric mean compute-to-target of each arm's runs. Its 95% interval is a bootstrap interval over the
repeats (seeded, so the same tables always give the same interval): each arm's log costs are resampled on their
own, the bootstrap variance of each arm's mean (small-sample corrected by n / (n - 1)) gives the standard error
of the log ratio, and Welch's t quantile its width. With three repeats a percentile bootstrap is far too narrow
(a resampled mean of three values takes only ten values); this form keeps the stated 5% error rate, which the
tests check by feeding the comparison arms whose true answer is known.

A run that never reached the target enters with what it paid in all: a lower bound on its compute-to-target.
That keeps every verdict conservative: ``saves`` needs every pretrained run to have reached the target (the
scratch numbers are then exact or too small, so the ratio can only be understated), ``costs more`` every scratch
run.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

LEVEL = 0.95
RESAMPLES = 4000
# The fixed vocabulary.
VERDICTS = ("saves", "no evidence", "costs more", "scratch never reached")


def t_quantile(level: float, df: float) -> float:
    """The two-sided Student-t quantile for ``level`` (scipy is imported here: it takes a second to load)."""
    from scipy import stats as scipy_stats

    return float(scipy_stats.t.ppf(0.5 + level / 2, df))


@dataclass(frozen=True)
class Interval:
    """A mean (or ratio) with its 95% interval; ``low``/``high`` are None when it cannot be formed (n < 2)."""

    value: float
    low: float | None
    high: float | None
    n: int

    def text(self, scale: float = 1.0, spec: str = ".1f", suffix: str = "") -> str:
        centre = format(self.value * scale, spec) + suffix
        if self.low is None or self.high is None:
            return f"{centre} (n={self.n})"
        return f"{centre} [{format(self.low * scale, spec)}, {format(self.high * scale, spec)}] (n={self.n})"


def mean_interval(values: Sequence[float], level: float = LEVEL) -> Interval:
    """Mean with a Student-t interval."""
    data = np.asarray(values, dtype=float)
    n = len(data)
    if n == 0:
        raise ValueError("mean_interval: no values")
    mean = float(data.mean())
    if n < 2:
        return Interval(mean, None, None, n)
    half = t_quantile(level, n - 1) * float(data.std(ddof=1)) / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n)


def ratio_interval(scratch: Sequence[float], pretrained: Sequence[float], level: float = LEVEL,
                   resamples: int = RESAMPLES, seed: int = 0) -> Interval:
    """scratch / pretrained of the geometric means, with the bootstrap interval described above."""
    arms = [np.log(np.asarray(values, dtype=float)) for values in (scratch, pretrained)]
    if any(len(a) == 0 for a in arms) or any(not np.isfinite(a).all() for a in arms):
        raise ValueError("ratio_interval: every arm needs at least one positive value")
    ratio = float(math.exp(arms[0].mean() - arms[1].mean()))
    n = min(len(a) for a in arms)
    if n < 2:
        return Interval(ratio, None, None, n)
    rng = np.random.default_rng(seed)
    var = [float(rng.choice(a, size=(resamples, len(a))).mean(axis=1).var(ddof=1)) * len(a) / (len(a) - 1)
           for a in arms]
    se = math.sqrt(sum(var))
    if se == 0:
        return Interval(ratio, ratio, ratio, n)
    df = sum(var) ** 2 / sum(v ** 2 / (len(a) - 1) for v, a in zip(var, arms, strict=True))
    half = t_quantile(level, df) * se
    return Interval(ratio, ratio * math.exp(-half), ratio * math.exp(half), n)


@dataclass(frozen=True)
class RunCompute:
    """One run's compute-to-target: where it first reached the target, else all it paid (a lower bound)."""

    compute: float
    reached: bool


@dataclass(frozen=True)
class Comparison:
    ratio: Interval | None  # None when an arm has no run that reached the target
    verdict: str


def compare(scratch: Sequence[RunCompute], pretrained: Sequence[RunCompute], seed: int = 0) -> Comparison:
    """The compute ratio scratch / pretrained with its interval, and a verdict from :data:`VERDICTS`."""
    scratch_hits = sum(r.reached for r in scratch)
    pretrained_hits = sum(r.reached for r in pretrained)
    if scratch_hits == 0:
        return Comparison(None, "scratch never reached")
    # No pretrained run at the target is not a verdict by itself (with scratch's own mean as the target, three
    # identical pretrained runs all fall short one time in eight): its runs enter with what they paid, a lower
    # bound, so the ratio below is an upper bound and "costs more" still needs it clearly below 1.
    ratio = ratio_interval([r.compute for r in scratch], [r.compute for r in pretrained], seed=seed)
    if ratio.low is not None and ratio.low > 1 and pretrained_hits == len(pretrained):
        return Comparison(ratio, "saves")
    if ratio.high is not None and ratio.high < 1 and scratch_hits == len(scratch):
        return Comparison(ratio, "costs more")
    return Comparison(ratio, "no evidence")
