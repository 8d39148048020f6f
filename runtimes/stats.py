"""Confidence intervals for latency percentiles and their ratios (numpy only).

Every interval is a seeded percentile bootstrap. A resample's k-th order statistic is drawn
directly instead of resampling n values and sorting: resampling with replacement from sorted
values x is x[floor(n U)] for uniform U, and the k-th smallest of n uniforms is Beta(k, n+1-k),
so the k-th smallest of a resample is x[floor(n B)] with B ~ Beta(k, n+1-k); the next order
statistic is B + (1-B) Beta(1, n-k). That is the same distribution as the plain bootstrap at
O(resamples) cost whatever n, so 2,000 resamples take well under a millisecond.

The bootstrap treats runs as independent draws; runs measured in one block share the machine's
state, so callers widen intervals by a measured noise floor (`Interval.widened`), never trust
them bare across runs.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

RESAMPLES = 2000
LEVEL = 0.95
SAMPLE_LIMIT = 2000   # runs kept per measurement (a time-ordered random subset beyond it)


@dataclass(frozen=True)
class Interval:
    """A point estimate with its confidence interval."""

    estimate: float
    low: float
    high: float
    level: float = LEVEL

    def widened(self, margin: float) -> "Interval":
        """The interval stretched by `margin` in log space (a ratio's noise floor: 0.05 widens
        [0.98, 1.02] to about [0.93, 1.07])."""
        if margin <= 0:
            return self
        f = math.exp(margin)
        return Interval(self.estimate, self.low / f, self.high * f, self.level)

    def above(self, limit: float) -> bool:
        return self.low > limit

    def below(self, limit: float) -> bool:
        return self.high < limit

    def text(self, digits: int = 3) -> str:
        return (f"{self.estimate:.{digits}f} [{self.level:.0%} CI {self.low:.{digits}f}, "
                f"{self.high:.{digits}f}]")

    def to_dict(self) -> dict:
        return {"estimate": self.estimate, "low": self.low, "high": self.high, "level": self.level}

    @classmethod
    def from_dict(cls, d: dict) -> "Interval":
        return cls(d["estimate"], d["low"], d["high"], d.get("level", LEVEL))


def _sorted(x) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.shape[-1] < 2:
        raise ValueError(f"a bootstrap needs at least 2 values per sample, got {a.shape[-1]}")
    return np.sort(a, axis=-1)


def quantile_draws(x_sorted: np.ndarray, q: float, resamples: int,
                   rng: np.random.Generator) -> np.ndarray:
    """Bootstrap draws of the q-quantile (numpy's linear interpolation) of sorted samples.

    `x_sorted` has shape (..., n), sorted along the last axis; the result (..., resamples).
    """
    n = x_sorted.shape[-1]
    h = (n - 1) * q
    k = min(int(math.floor(h)), n - 1)
    frac = h - k
    lead = x_sorted.shape[:-1]
    u1 = rng.beta(k + 1, n - k, size=(*lead, resamples))
    low = np.take_along_axis(x_sorted, np.minimum((u1 * n).astype(np.int64), n - 1), -1)
    if frac == 0 or k + 1 >= n:
        return low
    u2 = u1 + (1 - u1) * rng.beta(1, n - k - 1, size=(*lead, resamples))
    high = np.take_along_axis(x_sorted, np.minimum((u2 * n).astype(np.int64), n - 1), -1)
    return low + frac * (high - low)


def _bounds(draws: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(draws, [tail, 100 - tail], axis=-1)
    return lo, hi


def quantile_ci(x, q: float, level: float = LEVEL, resamples: int = RESAMPLES,
                seed: int = 0) -> Interval:
    """The q-quantile of one sample with its bootstrap interval."""
    s = _sorted(x)
    lo, hi = _bounds(quantile_draws(s, q, resamples, np.random.default_rng(seed)), level)
    return Interval(float(np.quantile(s, q)), float(lo), float(hi), level)


def ratio_ci(a, b, q: float, level: float = LEVEL, resamples: int = RESAMPLES,
             seed: int = 0) -> Interval:
    """quantile_q(a) / quantile_q(b) with its bootstrap interval (the two samples resampled
    independently). Above 1: a is slower than b at that percentile."""
    rng = np.random.default_rng(seed)
    sa, sb = _sorted(a), _sorted(b)
    draws = quantile_draws(sa, q, resamples, rng) / quantile_draws(sb, q, resamples, rng)
    lo, hi = _bounds(draws, level)
    return Interval(float(np.quantile(sa, q) / np.quantile(sb, q)), float(lo), float(hi), level)


def ratio_bounds(a: np.ndarray, b: np.ndarray, q: float, level: float = LEVEL,
                 resamples: int = RESAMPLES, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`ratio_ci` for many pairs at once: `a`, `b` of shape (m, n); returns (estimate, low,
    high), each of shape (m,). For simulations of the gate."""
    rng = np.random.default_rng(seed)
    sa, sb = _sorted(a), _sorted(b)
    draws = quantile_draws(sa, q, resamples, rng) / quantile_draws(sb, q, resamples, rng)
    lo, hi = _bounds(draws, level)
    return np.quantile(sa, q, axis=-1) / np.quantile(sb, q, axis=-1), lo, hi


def keep_samples(durations_ns, limit: int = SAMPLE_LIMIT, seed: int = 0) -> list[float]:
    """Per-run durations in microseconds, rounded to 1 us (0.001 us below 10 us), in the order
    they were measured; beyond `limit` runs, a seeded random subset of `limit` of them, still
    in order (random rather than every k-th run, so a periodic disturbance is not aliased)."""
    ns = np.asarray(durations_ns, dtype=np.float64)
    if ns.size > limit:
        keep = np.sort(np.random.default_rng(seed).choice(ns.size, limit, replace=False))
        ns = ns[keep]
    us = ns / 1e3
    return [round(v, 3) if v < 10 else round(v) for v in us.tolist()]


# Two-sided 97.5% quantiles of Student's t by degrees of freedom (1..30); beyond 30, the normal's.
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
         2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
         2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def paired_ratio(a_rounds, b_rounds) -> Interval:
    """a / b from rounds in which both were measured next to each other: the geometric mean of
    the per-round ratios with a 95% Student-t interval over rounds (on their logarithms).

    The unit of evidence is the round, not the run: runs inside one round share the host's state
    (a busy or quiet stretch, a clock step), so only the spread between rounds says how far the
    ratio would move if it were measured again. Needs at least 2 rounds with positive values.
    """
    a, b = np.asarray(a_rounds, dtype=np.float64), np.asarray(b_rounds, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or a.size < 2:
        raise ValueError(f"paired_ratio needs two equal-length lists of at least 2 rounds, got "
                         f"{a.shape} and {b.shape}")
    if (a <= 0).any() or (b <= 0).any():
        raise ValueError("paired_ratio needs positive latencies in every round")
    est, low, high = paired_ratio_bounds(a[None], b[None])
    return Interval(float(est[0]), float(low[0]), float(high[0]), LEVEL)


def round_interval(values) -> Interval:
    """One model's statistic over rounds (e.g. each round's p50): the geometric mean with the
    same 95% Student-t interval over rounds that paired_ratio gives a ratio."""
    values = np.asarray(values, dtype=np.float64)
    return paired_ratio(values, np.ones_like(values))


def paired_ratio_bounds(a_rounds: np.ndarray, b_rounds: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`paired_ratio` for many pairs at once: arrays of shape (m, rounds); returns (estimate,
    low, high), each of shape (m,). For simulations of the verdicts."""
    logs = np.log(a_rounds) - np.log(b_rounds)
    n = logs.shape[-1]
    t = _T975[n - 2] if n - 1 <= len(_T975) else 1.96   # n - 1 degrees of freedom
    mean = logs.mean(axis=-1)
    half = t * logs.std(axis=-1, ddof=1) / math.sqrt(n)
    return np.exp(mean), np.exp(mean - half), np.exp(mean + half)
