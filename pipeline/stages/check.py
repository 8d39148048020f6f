"""check: the CI gate. Budgets from the config against report.json; a failing budget fails the run.

Prints every budget with its measured value and limit, writes JUnit XML into the store entry and
to `check.junit` (relative to the working directory) for CI systems to display, and raises
BudgetFailed when any budget fails: the CLI exits with code 5 and nothing is committed,
so a failing check is never cached as passed. A passing check is cached; its `publish` step
prints the verdicts and rewrites `check.junit` on every run, cache hits included.

With `check.baseline`, relative budgets compare every row with the baseline report's
(pipeline.gate.regression): pass, fail, inconclusive (fails only with `check.inconclusive: fail`)
or not comparable (another machine or other data; never fails); `remeasure` runs the benchmark
again first (pipeline.gate.remeasure). The baseline's identity joins
the cache key, so a new report in the store (for `last`) re-runs the check.
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
    out = {"check": cfg.check.model_dump(mode="json", exclude={"junit"})}
    if cfg.check.baseline:
        from pipeline.gate.baseline import identity
        out["baseline"] = identity(cfg.check.baseline, cfg.run.store, cfg.run.name)
    return out


def _relative(report: dict, ctx: Context) -> tuple[list, str | None]:
    """Verdicts of the relative budgets (none configured: none; no baseline: skipped, with why),
    and the baseline report's path when one was compared with."""
    from pipeline.gate.baseline import resolve
    from pipeline.gate.regression import evaluate_relative, skipped
    check = ctx.cfg.check
    if check.max_p90_regression is None and check.min_accuracy_delta is None:
        return [], None
    if not check.baseline:
        return skipped(check, "no baseline: relative budgets skipped (set check.baseline to a "
                              "report or 'last')"), None
    path = resolve(check.baseline, ctx.store_root, ctx.cfg.run.name, ctx.input("report").key)
    if path is None:
        return skipped(check, f"no baseline yet: no other report of run '{ctx.cfg.run.name}' in "
                              f"{ctx.store_root}; this report is the next run's baseline"), None
    try:
        baseline = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        from pipeline.gate.baseline import BaselineMissing
        raise BaselineMissing(f"check.baseline {path} cannot be read ({exc}); point check.baseline "
                              f"at another report or regenerate it") from None
    logger.info(f"check: baseline {path}")
    return evaluate_relative(report, baseline, check, str(path)), str(path)


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
    counts = {s: sum(v["status"] == s for v in verdicts)
              for s in ("pass", "fail", "skip", "inconclusive", "not comparable")}
    extra = "".join(f", {counts[s]} {s}" for s in ("inconclusive", "not comparable") if counts[s])
    logger.info(f"check: {counts['pass']} passed, {counts['fail']} failed, {counts['skip']} skipped{extra}"
                + (f"; JUnit XML: {ci}" if ci else ""))


def _leak_budget(cfg: Config) -> list:
    """check.max_leaked_images against the data audit (counted again from the scan cache: the
    count follows the data, which the report's key already does)."""
    limit = cfg.check.max_leaked_images
    if limit is None:
        return []
    from pipeline.data import load_splits
    from pipeline.gate.budgets import FAIL, PASS, SKIP, Verdict
    audit = load_splits(cfg.data, cfg.run.seed, cfg.run.store).audit
    if audit is None:
        return [Verdict("max_leaked_images", SKIP, limit, "", "max", note=f"data.kind "
                        f"'{cfg.data.kind.value}' is built in; the audit covers ImageFolder trees")]
    leaked = audit["leaked_val_images"]
    pairs = [f"{c['images'][-1]} = {c['images'][0]}" for c in audit["exact"]["leaks"]] + \
            [f"{p['val']} ~ {p['train']}" for p in audit["near"]["pairs"]]
    named = f": {', '.join(pairs[:5])}{' ...' if len(pairs) > 5 else ''}" if pairs else ""
    return [Verdict("max_leaked_images", PASS if leaked <= limit else FAIL, limit, "", "max", leaked,
                    note=f"{leaked} val image(s) with an exact or near copy in train, limit <= "
                         f"{limit}{named}")]


def run(ctx: Context) -> Result:
    from pipeline.gate.budgets import FAIL, PASS, SKIP, evaluate
    from pipeline.gate.junit import to_junit
    report = json.loads(ctx.input("report").path_of("report_json").read_text())
    from pipeline.config_check import Inconclusive
    from pipeline.gate.regression import INCONCLUSIVE
    relative, baseline = _relative(report, ctx)
    verdicts = evaluate(report, ctx.cfg.check) + relative + _leak_budget(ctx.cfg)
    unsure = [v.subject for v in relative if v.status == INCONCLUSIVE]
    if unsure and ctx.cfg.check.inconclusive == Inconclusive.remeasure:
        from pipeline.gate.remeasure import RemeasureNeeded
        raise RemeasureNeeded(unsure, baseline)
    h = report.get("headline")
    noisy = report.get("noisy_host") or {}
    if noisy.get("noisy"):
        logger.warning(f"check: the host was noisy while this report was measured: "
                       f"{'; '.join(noisy['reasons'])}")
    strict = ctx.cfg.check.inconclusive == Inconclusive.fail
    xml = to_junit(verdicts, h["text"] if h else "", inconclusive_fails=strict)
    (ctx.out_dir / JUNIT).write_text(xml)
    failures = [v for v in verdicts if v.status == FAIL or (strict and v.status == INCONCLUSIVE)]
    for v in verdicts:
        if v.status == INCONCLUSIVE and not strict:
            logger.warning(f"check: {v.message} (judged as check.inconclusive: warn)")
    if failures:
        # Nothing is committed, so `publish` will not run: report and hand CI its file here.
        ci = _write_ci_copy(xml, ctx.cfg.check.junit)
        _log_verdicts([v.to_dict() for v in verdicts], ci)
        raise BudgetFailed(failures, ci)
    (ctx.out_dir / VERDICTS).write_text(json.dumps([v.to_dict() for v in verdicts], indent=2))
    counts = {s: sum(v.status == s for v in verdicts) for s in (PASS, FAIL, SKIP, INCONCLUSIVE)}
    counts["not_comparable"] = sum(v.status == "not comparable" for v in verdicts)
    return Result(outputs={"junit": Artifact.of(ctx.out_dir, ctx.out_dir / JUNIT, Format.data),
                           "verdicts": Artifact.of(ctx.out_dir, ctx.out_dir / VERDICTS, Format.data)},
                  metrics={**counts, "verdicts": [v.to_dict() for v in verdicts]})


def publish(manifest: Manifest, cfg: Config) -> None:
    """After a passing check, and on every cache hit: print the verdicts and copy the JUnit XML
    to `check.junit`, so CI finds a fresh file even when nothing had to be re-evaluated."""
    ci = _write_ci_copy(manifest.path_of("junit").read_text(), cfg.check.junit)
    _log_verdicts(manifest.metrics.get("verdicts", []), ci)


STAGE = Stage(name="check", version=2, deps=("report",), params=params, run=run, publish=publish)
