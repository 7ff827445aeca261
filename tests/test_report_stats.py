"""The method itself: fed arms whose true answer is known, the intervals and verdicts must say so."""

from __future__ import annotations

import numpy as np
import pytest

from tlsearch.report import stats


def _verdicts(advantage: float, pairs: int, repeats: int = 3, noise: float = 0.3, seed: int = 0) -> list[str]:
    """Compute-to-target of both arms drawn lognormally; scratch costs ``advantage`` times pretrained's."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(pairs):
        pretrained = 50.0 * np.exp(rng.normal(0.0, noise, repeats))
        scratch = 50.0 * advantage * np.exp(rng.normal(0.0, noise, repeats))
        ratio = stats.ratio_interval(list(scratch), list(pretrained), seed=i)
        out.append(stats.verdict(repeats, repeats, ratio))
    return out


def test_identical_arms_say_saves_in_at_most_5_percent() -> None:
    verdicts = _verdicts(advantage=1.0, pairs=400)
    assert verdicts.count("saves") / len(verdicts) <= 0.05
    assert verdicts.count("costs more") / len(verdicts) <= 0.05
    assert verdicts.count("no evidence") / len(verdicts) >= 0.9


def test_a_true_3x_advantage_is_found_in_most() -> None:
    verdicts = _verdicts(advantage=3.0, pairs=400)
    assert verdicts.count("saves") / len(verdicts) >= 0.75  # measured: 0.82 with 30% lognormal noise
    assert "costs more" not in verdicts


def test_more_repeats_find_a_smaller_advantage() -> None:
    few = _verdicts(advantage=1.5, pairs=200, repeats=3).count("saves")
    many = _verdicts(advantage=1.5, pairs=200, repeats=10).count("saves")
    assert many > few


def test_the_interval_on_a_known_case() -> None:
    ratio = stats.ratio_interval([30.0, 30.0, 30.0], [10.0, 10.0, 10.0])
    assert (ratio.value, ratio.low, ratio.high) == pytest.approx((3.0, 3.0, 3.0))  # no spread, no doubt
    wide = stats.ratio_interval([20.0, 30.0, 45.0], [10.0, 10.0, 10.0])
    assert wide.value == pytest.approx((20 * 30 * 45) ** (1 / 3) / 10)  # ratio of geometric means
    assert wide.low is not None and wide.high is not None and wide.low < wide.value < wide.high
    assert stats.ratio_interval([30.0], [10.0, 11.0]).low is None  # one run: no interval


def test_mean_interval_and_the_verdict_vocabulary() -> None:
    m = stats.mean_interval([0.8, 0.9, 1.0])
    assert m.value == pytest.approx(0.9) and m.low == pytest.approx(0.9 - 4.303 * 0.1 / 3 ** 0.5, abs=1e-3)
    assert stats.verdict(0, 3, None) == "scratch never reached"
    assert stats.verdict(3, 0, None) == "costs more"
    assert stats.verdict(1, 3, stats.ratio_interval([30.0], [10.0, 11.0, 12.0])) == "no evidence"
    assert stats.verdict(3, 3, stats.Interval(0.5, 0.3, 0.8, 3)) == "costs more"
    assert set(stats.VERDICTS) == {"saves", "no evidence", "costs more", "scratch never reached"}
