"""check: the CI gate. Budgets from the config against report.json; a failing budget fails the run.

Prints every budget with its measured value and limit, writes JUnit XML into the store entry and
to `check.junit` (relative to the working directory) for CI systems to display, and raises
BudgetFailed when any budget fails: the CLI exits with code 5 and nothing is committed,
so a failing check is never cached as passed. A passing check is cached; its `publish` step
prints the verdicts and rewrites `check.junit` on every run, cache hits included.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from pipeline.artifact import Artifact, Format
from pipeline.config import Config
from pipeline.stages.base import Context, Result, Stage
from pipeline.store import Manifest
from runtimes import errors

logger = logging.getLogger(__name__)

JUNIT, VERDICTS = "junit.xml", "check.json"


class BudgetFailed(RuntimeError, errors.GateFailed):
    """One or more budgets failed; the message lists each with its measured value and limit."""

    def __init__(self, failures: list, junit: Path | None):
        self.failures = failures
        self.junit = junit
        lines = [f"{len(failures)} budget(s) failed:"] + [f"  {v.message}" for v in failures]
        if junit:
            lines.append(f"JUnit XML: {junit}")
        super().__init__("\n".join(lines))


def params(cfg: Config) -> dict:
    # Where CI wants its copy of the JUnit file does not change the verdicts.
    return {"check": cfg.check.model_dump(mode="json", exclude={"junit"})}


def _write_ci_copy(text: str, target: str) -> Path | None:
    if not target:
        return None
    path = Path(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def _log_verdicts(verdicts: list[dict], ci: Path | None) -> None:
    if not verdicts:
        logger.info("check: no budgets configured (set check.min_accuracy, check.max_accuracy_drop, "
                    "check.max_p90_ms, check.max_p90_vs_teacher or check.max_size_mb)")
    for v in verdicts:
        logger.info(f"check: {v['message']}")
    counts = {s: sum(v["status"] == s for v in verdicts) for s in ("pass", "fail", "skip")}
    logger.info(f"check: {counts['pass']} passed, {counts['fail']} failed, {counts['skip']} skipped"
                + (f"; JUnit XML: {ci}" if ci else ""))


def run(ctx: Context) -> Result:
    from pipeline.gate.budgets import FAIL, PASS, SKIP, evaluate
    from pipeline.gate.junit import to_junit
    report = json.loads(ctx.input("report").path_of("report_json").read_text())
    verdicts = evaluate(report, ctx.cfg.check)
    h = report.get("headline")
    xml = to_junit(verdicts, h["text"] if h else "")
    (ctx.out_dir / JUNIT).write_text(xml)
    failures = [v for v in verdicts if v.status == FAIL]
    if failures:
        # Nothing is committed, so `publish` will not run: report and hand CI its file here.
        ci = _write_ci_copy(xml, ctx.cfg.check.junit)
        _log_verdicts([v.to_dict() for v in verdicts], ci)
        raise BudgetFailed(failures, ci)
    (ctx.out_dir / VERDICTS).write_text(json.dumps([v.to_dict() for v in verdicts], indent=2))
    counts = {s: sum(v.status == s for v in verdicts) for s in (PASS, FAIL, SKIP)}
    return Result(outputs={"junit": Artifact.of(ctx.out_dir, ctx.out_dir / JUNIT, Format.data),
                           "verdicts": Artifact.of(ctx.out_dir, ctx.out_dir / VERDICTS, Format.data)},
                  metrics={**counts, "verdicts": [v.to_dict() for v in verdicts]})


def publish(manifest: Manifest, cfg: Config) -> None:
    """After a passing check, and on every cache hit: print the verdicts and copy the JUnit XML
    to `check.junit`, so CI finds a fresh file even when nothing had to be re-evaluated."""
    ci = _write_ci_copy(manifest.path_of("junit").read_text(), cfg.check.junit)
    _log_verdicts(manifest.metrics.get("verdicts", []), ci)


STAGE = Stage(name="check", version=1, deps=("report",), params=params, run=run, publish=publish)
