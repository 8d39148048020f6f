"""report.json: the benchmark rows, enriched, with the headline, the environment and upstream notes."""
from __future__ import annotations

import time

from pipeline.config import Config
from pipeline.measure.artifacts import TEACHER
from pipeline.report.claims import int8_not_shipped, noisy_host, speedup_claims
from pipeline.report.headline import headlines
from pipeline.report.pareto import mark_pareto
from pipeline.report.per_class import per_class_view
from pipeline.measure.targets import device_family, is_reference
from pipeline.report.upstream import upstream_notes
from pipeline.stage_order import STAGE_NAMES
from pipeline.store import Manifest

SCHEMA = 1
STAGE_ORDER = STAGE_NAMES[:STAGE_NAMES.index("export") + 1]   # the stages whose outputs are models
MB = 1e6   # sizes are reported in MB of 10^6 bytes, budgets too


def teacher_accuracy(rows: list[dict]) -> float | None:
    """The teacher's val top-1 in PyTorch eager FP32 on the CPU (the accuracy reference)."""
    row = next((r for r in rows if r["status"] == "ok" and r["artifact"] == TEACHER
                and is_reference(r["runtime"], r["device"])), None)
    return row["accuracy"] if row else None


def enrich(rows: list[dict]) -> list[dict]:
    """Copies of the rows with device family, size in MB, accuracy change against the teacher
    and Pareto membership added, in pipeline order (stage, then artifact, runtime, device, batch)."""
    out = [dict(r) for r in rows]
    base = teacher_accuracy(out)
    for r in out:
        r["device_family"] = device_family(r["device"])
        r["size_mb"] = r["size_bytes"] / MB if r.get("size_bytes") is not None else None
        r["accuracy_delta_teacher"] = (r["accuracy"] - base if base is not None
                                       and r.get("accuracy") is not None else None)
    mark_pareto(out)
    order = {s: i for i, s in enumerate(STAGE_ORDER)}
    return sorted(out, key=lambda r: order.get(r["stage"], len(order)))  # stable: keeps run order within


def build_report(results: dict, inputs: dict[str, Manifest], cfg: Config) -> dict:
    """The report document: rows, headlines (target first), environment, notes, settings."""
    rows = enrich(results["rows"])
    floor = results.get("noise_floor")
    heads = headlines(rows, cfg.benchmark.target, cfg.benchmark.deploy_tolerance, floor)
    primary = heads[0] if heads and heads[0]["target"] == cfg.benchmark.target else None
    noisy = noisy_host(floor, results.get("host_load"))
    claims = speedup_claims(rows, floor, (results.get("environment") or {}).get("cpu"))
    why_not_int8 = int8_not_shipped(primary, claims)
    if why_not_int8:
        primary["text"] += f" {why_not_int8}"
    for h in heads:
        if noisy["noisy"]:
            h["text"] += f" Noisy host while measuring: {'; '.join(noisy['reasons'])}."
    for r in rows:
        r["deployed"] = bool(primary) and r["id"] == primary["deployed"]
    bench = inputs.get("benchmark")
    upstream = upstream_notes(inputs)
    view = per_class_view(rows, results.get("val_labels"),
                          (upstream.get("data_audit") or {}).get("class_counts"),
                          cfg.benchmark.deploy_tolerance)
    if view and view["warning"]:
        upstream["warnings"].append(view["warning"])
    return {"schema": SCHEMA, "run": cfg.run.name,
            "generated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "benchmark_key": bench.key if bench else None,
            "headline": primary, "headlines": heads,
            "settings": {**results.get("benchmark", {}), "target": cfg.benchmark.target,
                         "deploy_tolerance": cfg.benchmark.deploy_tolerance},
            "rows": rows, "environment": results.get("environment", {}),
            "noise_floor": floor, "host_load": results.get("host_load"),
            "noisy_host": noisy,
            "speedups": claims,
            "per_class": view,
            "upstream": upstream}
