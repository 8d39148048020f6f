"""`check.inconclusive: remeasure`: when a relative latency verdict is inconclusive, measure again.

The check stage raises RemeasureNeeded instead of passing or failing; run_gated then runs the
benchmark again (forced), so the report and the check are rebuilt from the new samples, and
compares them with the same baseline report as the first attempt (pinned, since `last` would
now find the attempt just superseded). After `check.remeasure_times` new measurements a verdict
that is still inconclusive is a warning, as with `inconclusive: warn`. Nothing inconclusive is
ever committed as a pass before that: the stage raises, so no check entry is written.
"""
from __future__ import annotations

import logging

from pipeline.config import Config
from pipeline.config_check import Inconclusive
from runtimes import errors

logger = logging.getLogger(__name__)


class RemeasureNeeded(RuntimeError, errors.GateFailed):
    """Inconclusive relative verdicts under `inconclusive: remeasure`; run_gated measures again.
    Outside run_gated it is a gate failure (exit 5) whose message says how to act on it."""

    def __init__(self, subjects: list[str], baseline: str):
        self.subjects, self.baseline = subjects, baseline
        super().__init__(f"{len(subjects)} latency verdict(s) inconclusive against {baseline} "
                         f"({', '.join(subjects)}); run `edgeship run check` to re-measure")


def _with_check(cfg: Config, **changes) -> Config:
    return cfg.model_copy(update={"check": cfg.check.model_copy(update=changes)})


def run_gated(cfg: Config, target: str | None, force: frozenset[str], run):
    """`run(cfg, target, force)` (the runner), repeated with a forced benchmark while the check
    asks for a new measurement; returns the last run's outcomes."""
    attempt = 0
    while True:
        try:
            return run(cfg, target, force)
        except RemeasureNeeded as exc:
            attempt += 1
            cfg = _with_check(cfg, baseline=exc.baseline)
            if attempt > cfg.check.remeasure_times:
                logger.warning(f"check: still inconclusive after {cfg.check.remeasure_times} "
                               f"re-measurement(s): {', '.join(exc.subjects)}; judging as "
                               f"inconclusive: warn")
                # Every stage asked for has run and the last measurement is in the store:
                # judge it without running anything again.
                cfg, force = _with_check(cfg, inconclusive=Inconclusive.warn), frozenset()
                continue
            logger.warning(f"check: inconclusive against the baseline: {', '.join(exc.subjects)}; "
                           f"re-measuring ({attempt} of {cfg.check.remeasure_times})")
            force = frozenset({"benchmark"})   # stages forced by the caller have run once
