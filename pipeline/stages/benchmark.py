"""benchmark: accuracy and latency of every artifact on every runtime and device, one harness.

Reads the teacher, the student, the pruned student, the int8 ONNX and every exported artifact;
writes results.json: one row per artifact x runtime x device x batch (see pipeline.measure.rows)
and the environment the numbers were taken in. Each row keeps its per-run samples; the run
measures its own noise floor (one artifact timed twice, see pipeline.measure.noise) and records
how busy the host was before, during and after (runtimes.host_load). The teacher (PyTorch eager FP32, the headline's
baseline) and the deployed candidates are measured in the same run, on the same machine.
"""
from __future__ import annotations

import json
import logging
import time

from pipeline.artifact import Artifact, Format
from pipeline.config import Config
from pipeline.stages.base import Context, Result, Stage
from pipeline.stages.common import data_params

log = logging.getLogger(__name__)

RESULTS = "results.json"
# Fields of cfg.benchmark that only pick the headline from measured rows: the report reads them.
_SELECTION_ONLY = {"target", "deploy_tolerance"}


def params(cfg: Config) -> dict:
    out = {"benchmark": cfg.benchmark.model_dump(mode="json", exclude=_SELECTION_ONLY),
           **data_params(cfg)}
    if cfg.targets:
        # Each target is asked for its device fingerprint now: a changed power mode re-measures.
        from pipeline.measure.remote_rows import target_params
        out["targets"] = target_params(cfg)
    return out


def val_labels(cfg: Config) -> dict:
    """The classes and the label of each val image the rows scored, in order: with each row's
    `predictions`, the report's per-class accuracy and confusion matrices."""
    from pipeline.data import load_splits
    val = load_splits(cfg.data, cfg.run.seed, cfg.run.store).val
    n = len(val) if cfg.benchmark.accuracy_images is None else min(cfg.benchmark.accuracy_images, len(val))
    return {"classes": list(val.classes), "targets": [int(t) for t in val.targets[:n]]}


def run(ctx: Context) -> Result:
    from runtimes.environment import describe_environment as describe
    from pipeline.measure.noise import index_rows
    from pipeline.measure.rows import build_rows, summary
    from pipeline.report.claims import noisy_host
    from runtimes.cpus import usable_cores
    from runtimes.host_load import HostLoadMonitor
    started = time.time()
    monitor = HostLoadMonitor(usable_cores=usable_cores()).start()
    try:
        rows, floor = build_rows(ctx.inputs, ctx.cfg)
    finally:
        host = monitor.stop()
    index_rows(rows)
    for reason in noisy_host(floor, host)["reasons"]:
        log.warning(f"benchmark: noisy host: {reason}")
    results = {"rows": rows, "noise_floor": floor, "host_load": host,
               "environment": describe(ctx.cfg.benchmark.threads),
               "benchmark": ctx.cfg.benchmark.model_dump(mode="json"),
               "val_labels": val_labels(ctx.cfg),
               "seconds": round(time.time() - started, 2)}
    path = ctx.out_dir / RESULTS
    path.write_text(json.dumps(results, indent=2, default=str))
    counts = summary(rows)
    log.info("benchmark: %d rows measured, %d unavailable here, %d failed, in %.0f s",
             counts["ok"], counts["unavailable"], counts["failed"], results["seconds"])
    return Result(outputs={"results": Artifact.of(ctx.out_dir, path, Format.data)},
                  metrics={**counts, "seconds": results["seconds"]})


STAGE = Stage(name="benchmark", version=3,
              deps=("finetune", "distill", "prune", "quantize", "export"), params=params, run=run,
              machine_dependent=True)
