"""The `check` section's budgets against a baseline report (relative budgets), kept apart from
config.py's absolute ones: `Check` in config.py inherits these fields."""
from __future__ import annotations

from enum import Enum
from typing import Optional

from pydantic import Field

from pipeline.config_strict import Strict


class Inconclusive(str, Enum):
    """What an inconclusive verdict (the interval straddles the limit) does to the gate."""

    fail = "fail"        # counts as a failure: exit 5
    warn = "warn"        # a warning in the log and the JUnit XML; the gate passes
    remeasure = "remeasure"  # re-run the benchmark (up to remeasure_times), then warn


class RegressionBudgets(Strict):
    baseline: Optional[str] = Field(
        None, description="the report to compare with: a report.json, a folder holding one, an "
        "artifact store (its newest report), or 'last': the newest other report of this run.name "
        "in run.store. null: relative budgets are skipped with a note")
    max_p90_regression: Optional[float] = Field(
        None, ge=0, description="p90 of each row matched by id may grow at most this share over "
        "the baseline's (0.05: 5%), judged on the ratio's confidence interval")
    min_accuracy_delta: Optional[float] = Field(
        None, description="val top-1 of each row matched by id may change by at least this many "
        "points against the baseline (-0.5: lose at most half a point)")
    inconclusive: Inconclusive = Field(
        Inconclusive.warn, description="when an interval straddles a relative budget's limit: "
        "fail (exit 5), warn (logged and in the JUnit XML, the gate passes), or remeasure (run "
        "the benchmark again against the same baseline, up to remeasure_times, then warn)")
    remeasure_times: int = Field(
        2, ge=1, le=10, description="with inconclusive: remeasure, how many times the benchmark "
        "may be run again before an inconclusive verdict is only a warning")
