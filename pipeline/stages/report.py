"""report: report.json, report.md and report.html (with plots) from the benchmark's rows.

The headline compares the deployed model with the fine-tuned teacher in PyTorch eager FP32,
both from the same benchmark run (see pipeline.report.headline for how the deployed model is
picked). Upstream stages' warnings and summaries (negative transfer, distillation, pruning,
quantization, what export could not build) are carried into the report.
"""
from __future__ import annotations

import json
import logging

from pipeline.artifact import Artifact, Format
from pipeline.config import Config
from pipeline.stages.base import Context, Result, Stage
from pipeline.store import Manifest

logger = logging.getLogger(__name__)

REPORT_JSON, REPORT_MD, REPORT_HTML = "report.json", "report.md", "report.html"


def params(cfg: Config) -> dict:
    return {"run": cfg.run.name, "target": cfg.benchmark.target,
            "deploy_tolerance": cfg.benchmark.deploy_tolerance}


def run(ctx: Context) -> Result:
    from pipeline.render import html, markdown, plots
    from pipeline.report.build import build_report
    results = json.loads(ctx.input("benchmark").path_of("results").read_text())
    report = build_report(results, ctx.inputs, ctx.cfg)
    out = ctx.out_dir
    outputs = {}
    pngs = plots.render_all(report, ctx.cfg.data.root)
    plot_files = {}
    for name, png in pngs.items():
        (out / f"{name}.png").write_bytes(png)
        plot_files[name] = f"{name}.png"
        outputs[name] = Artifact.of(out, out / f"{name}.png", Format.data)
    for fname, text in ((REPORT_JSON, json.dumps(report, indent=2, default=str)),
                        (REPORT_MD, markdown.render(report, plot_files)),
                        (REPORT_HTML, html.render(report, pngs))):
        (out / fname).write_text(text)
        outputs[fname.replace(".", "_")] = Artifact.of(out, out / fname, Format.data)

    h = report["headline"]
    keys = ("deployed", "speedup_p50", "speedup_p90", "accuracy_change_points", "teacher_accuracy",
            "deployed_accuracy", "deployed_p90_ms", "teacher_p90_ms", "size_ratio", "within_tolerance")
    metrics = {"headline": {k: h[k] for k in keys} if h else None,
               "rows": len(report["rows"]),
               "measured": sum(r["status"] == "ok" for r in report["rows"])}
    return Result(outputs=outputs, metrics=metrics)


def publish(manifest: Manifest, cfg: Config) -> None:
    """Print the warnings, the headline and where the report is: after a run and on cache hits,
    so `make report` always ends with the headline."""
    report = json.loads(manifest.path_of("report_json").read_text())
    for warning in report["upstream"].get("warnings", []):
        logger.warning(warning)
    h = report["headline"]
    logger.info(f"HEADLINE: {h['text']}" if h else
                f"HEADLINE: none: no measured teacher row or deployable row on '{cfg.benchmark.target}'")
    logger.info(f"report: {manifest.entry_dir / REPORT_MD} (and report.json, report.html)")


STAGE = Stage(name="report", version=1,
              deps=("finetune", "distill", "prune", "quantize", "export", "benchmark"),
              params=params, run=run, publish=publish)
