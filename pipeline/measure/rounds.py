"""Latency in interleaved rounds: every row measured once per round, in a fresh order each round.

On a shared or virtual machine one model's p50 can move by 2x from one second to the next, and
that drift is shared by whatever runs at the same moment. So the benchmark does not time a row
in one block: it splits each row's timed seconds over `benchmark.rounds` rounds, and in every
round times every row once, in an order shuffled with a recorded seed (no row is always first
after a cold cache, or always next to the same neighbour). A ratio between two rows is then
taken round by round, from rows measured minutes apart at most and seconds apart on average,
and its interval comes from the spread between rounds (runtimes.stats.paired_ratio), which is
the variation that repeats of the measurement would show.

A row's own p50/p90 are those of all its rounds' runs pooled; each round's p50/p90 are kept
with the row (`rounds`), so a reader can see the spread.
"""
from __future__ import annotations

import logging
import math
import secrets
from typing import Callable

import numpy as np

from runtimes.harness import LatencyStats, summarize

AA_SECOND = "A/A second process"   # the timer of the noise floor's second half
ROUND_WARMUP = 2   # untimed runs before each round after the first: the caches another model used

log = logging.getLogger(__name__)

Timer = Callable[[int, int, float], LatencyStats]
"""(warmup, min_iterations, min_seconds) -> one round's LatencyStats of one row."""


def per_round(min_iterations: int, min_seconds: float, rounds: int) -> tuple[int, float]:
    """A row's minimum runs and timed seconds in one round: the totals spread over the rounds."""
    return max(1, math.ceil(min_iterations / rounds)), min_seconds / rounds


def measure_rounds(timers: dict[str, Timer], rounds: int, warmup: int, min_iterations: int,
                   min_seconds: float, seed: int, on_round: Callable[[int], None] | None = None
                   ) -> tuple[dict[str, list[LatencyStats]], list[list[str]], dict[str, str]]:
    """Time every timer once per round, `rounds` times, in a seeded random order per round.

    Returns (each timer's rounds, the order of every round, errors): a timer that raises is
    dropped from the remaining rounds and its error kept, the others go on.
    """
    if rounds < 1:
        raise ValueError(f"benchmark rounds must be >= 1, got {rounds}")
    iterations, seconds = per_round(min_iterations, min_seconds, rounds)
    rng = np.random.default_rng(seed)
    runs: dict[str, list[LatencyStats]] = {name: [] for name in timers}
    orders: list[list[str]] = []
    errors: dict[str, str] = {}
    for r in range(rounds):
        order = [n for n in rng.permutation(list(timers)).tolist() if n not in errors]
        orders.append(order)
        for name in order:
            try:
                runs[name].append(timers[name](warmup if r == 0 else ROUND_WARMUP, iterations, seconds))
            except Exception as exc:  # one broken row must not cost the others their numbers
                errors[name] = f"{type(exc).__name__}: {exc}"
                log.warning("benchmark: %s failed in round %d: %s", name, r + 1, errors[name])
        if on_round:
            on_round(r)
    return runs, orders, errors


def pooled(stats: list[LatencyStats]) -> LatencyStats:
    """One LatencyStats over every round's runs, with the first round's start and the last's end."""
    samples = [d for s in stats for d in s.samples_ns]
    out = summarize(samples, stats[0].batch_size)
    out.samples_ns = samples
    out.started, out.finished = stats[0].started, stats[-1].finished
    out.timer = stats[0].timer
    rss = [s.peak_rss_mb for s in stats if s.peak_rss_mb is not None]
    gpu = [s.peak_gpu_mb for s in stats if s.peak_gpu_mb is not None]
    out.peak_rss_mb, out.peak_gpu_mb = (max(rss) if rss else None), (max(gpu) if gpu else None)
    return out


def round_record(stats: list[LatencyStats]) -> list[dict]:
    """Each round's p50/p90 (ms), runs and start time, in round order: what paired ratios use."""
    return [{"p50_ms": round(s.p50_ms, 5), "p90_ms": round(s.p90_ms, 5), "iterations": s.iterations,
             "started": s.started} for s in stats]


def new_seed() -> int:
    """The seed of one benchmark's round orders (recorded, so the orders can be replayed)."""
    return secrets.randbits(31)


def methodology(rounds: int, warmup: int, min_iterations: int, min_seconds: float, seed: int,
                process: str) -> str:
    iterations, seconds = per_round(min_iterations, min_seconds, rounds)
    return (f"Timed in {rounds} interleaved rounds (every row once per round, order shuffled per "
            f"round, seed {seed}): {warmup} warm-up runs before the first round and {ROUND_WARMUP} "
            f"before each later one, then timed runs until at least {iterations} runs and "
            f"{seconds:.3g} s per round; p50/p90 over all rounds' runs pooled, each round's kept in "
            f"`rounds`; ratios between rows are taken round by round (geometric mean, 95% Student-t "
            f"interval over rounds). Measured in {process}.")
