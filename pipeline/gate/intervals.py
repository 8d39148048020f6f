"""Intervals over benchmark rows: a row's percentile, the ratio of two rows, the noise floor.

A row's `samples_us` are its per-run durations and its `rounds` each interleaved round's p50/p90.
Two rows of one benchmark are compared round by round (runtimes.stats.paired_ratio): the round is
the unit that repeats, runs inside one round share the machine's state; the interval's width
comes from the rounds and its centre from the rows' own pooled percentiles. Rows of different runs
(a baseline) have no rounds in common, so their ratio comes with a bootstrap interval over pooled
runs. Either is widened in log space by the noise floor: how far the benchmark's A/A pair (one
artifact measured twice, in two processes) strayed from 1.

Words used everywhere (report, gate, compare): a ratio a/b is "slower" when its interval lies
above 1, "faster" when below, "within noise" when it holds 1.
"""
from __future__ import annotations

import math

import numpy as np

from runtimes.stats import Interval, paired_ratio, quantile_ci, ratio_ci

QUANTILES = {"p50": 0.5, "p90": 0.9}
SLOWER, FASTER, WITHIN_NOISE = "slower", "faster", "within noise"
NOISY_FLOOR = 0.10   # an A/A ratio more than 10% from 1 marks the host as noisy


def samples(row: dict | None) -> np.ndarray | None:
    """The row's per-run durations in ms, or None when it has fewer than 2 (or none recorded)."""
    values = (row or {}).get("samples_us")
    if not values or len(values) < 2:
        return None
    return np.asarray(values, dtype=np.float64) / 1e3


def percentile(row: dict, stat: str) -> Interval | None:
    """p50 or p90 of one row (ms) with its interval; None without samples."""
    x = samples(row)
    return quantile_ci(x, QUANTILES[stat]) if x is not None else None


def margin(noise_floor: dict | None, stat: str) -> float:
    """How far (log) the A/A ratio of a run strayed from 1 at `stat`; 0 without a noise floor."""
    ratio = ((noise_floor or {}).get(stat) or {}).get("estimate")
    return abs(math.log(ratio)) if ratio and ratio > 0 else 0.0


def combined_margin(*floors: dict | None, stat: str) -> float:
    """The margin of a comparison across runs: each run's drift, added as independent errors."""
    return math.sqrt(sum(margin(f, stat) ** 2 for f in floors))


def paired_rounds(a: dict, b: dict, stat: str) -> tuple[list[float], list[float]] | None:
    """Both rows' per-round `stat` when they were timed in the same interleaved rounds (same
    benchmark run, same number of rounds); None otherwise."""
    ra, rb = a.get("rounds"), b.get("rounds")
    if not ra or not rb or len(ra) != len(rb) or len(ra) < 2:
        return None
    if not a.get("rounds_id") or a.get("rounds_id") != b.get("rounds_id"):
        return None
    return [r[f"{stat}_ms"] for r in ra], [r[f"{stat}_ms"] for r in rb]


def ratio(a: dict, b: dict, stat: str, widen: float = 0.0) -> Interval | None:
    """stat(a) / stat(b) with its interval widened by `widen` (log). Rows timed in the same
    rounds are compared round by round (runtimes.stats.paired_ratio); rows of different runs (a
    baseline) by a bootstrap of their pooled samples. None when a row has no samples (a report
    from before samples were kept)."""
    paired = paired_rounds(a, b, stat)
    if paired is not None:
        # The spread comes from the rounds; the estimate from all runs pooled (the rows' own
        # percentiles): a slow model's round has few runs, and a p90 of few runs leans high.
        spread = paired_ratio(*paired)
        pooled = a[f"{stat}_ms"] / b[f"{stat}_ms"]
        shift = pooled / spread.estimate
        return Interval(pooled, spread.low * shift, spread.high * shift, spread.level).widened(widen)
    xa, xb = samples(a), samples(b)
    if xa is None or xb is None:
        return None
    return ratio_ci(xa, xb, QUANTILES[stat]).widened(widen)


def claim(interval: Interval | None) -> str:
    """slower / faster / within noise for a ratio a/b; "no samples" without an interval."""
    if interval is None:
        return "no samples"
    return SLOWER if interval.above(1.0) else FASTER if interval.below(1.0) else WITHIN_NOISE


def speedup(interval: Interval) -> Interval:
    """A slowdown ratio turned into a speed-up (b/a): estimate and bounds inverted."""
    return Interval(1 / interval.estimate, 1 / interval.high, 1 / interval.low, interval.level)


def noise_floor(first: dict, second: dict) -> dict:
    """The A/A record: second / first measurement of one artifact at p50 and p90, with intervals
    (unwidened), and whether it strays more than NOISY_FLOOR from 1."""
    out: dict = {"row": first["id"], "first_started": first.get("started"),
                 "second_started": second.get("started")}
    for stat in QUANTILES:
        r = ratio(second, first, stat)
        out[stat] = r.to_dict() if r else None
    p90 = out.get("p90") or {}
    out["noisy"] = bool(p90) and abs(math.log(p90["estimate"])) > math.log(1 + NOISY_FLOOR)
    return out
