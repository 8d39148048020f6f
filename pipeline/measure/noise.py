"""The benchmark's own noise floor: one artifact measured twice in the run (an A/A pair).

The pair's first half is that artifact's ordinary row; the second is measured after every other
row, so the two bracket the whole benchmark and differ only by what the host did in between.
Their ratio (and its interval) is the noise floor every comparison of the run is widened by
(see pipeline.gate.intervals). The artifact: the first measured ONNX row (an exported model in
ONNX Runtime on the CPU, quick to load and close to what ships), else the first measured
deployable row, else the first measured row.
"""
from __future__ import annotations

import logging

from pipeline.config import Config
from pipeline.gate.intervals import noise_floor
from pipeline.store import Manifest

log = logging.getLogger(__name__)


def aa_row(rows: list[dict]) -> dict | None:
    """The row the A/A pair repeats (see the module docstring)."""
    from runtimes import formats
    ok = [r for r in rows if r["status"] == "ok" and r.get("samples_us")]
    for pick in (lambda r: r["format"] == "onnx" and r["runtime"] == "onnxruntime" and r["device"] == "cpu",
                 lambda r: formats.get(r["format"]).deployable, lambda r: True):
        found = next((r for r in ok if pick(r)), None)
        if found:
            return found
    return None


def index_rows(rows: list[dict]) -> None:
    """Number the measured rows in the order they were timed (`measured_index`)."""
    timed = sorted((r for r in rows if r.get("started") is not None), key=lambda r: r["started"])
    for i, r in enumerate(timed):
        r["measured_index"] = i


def measure_again(row: dict, inputs: dict[str, Manifest], cfg: Config) -> dict:
    """A second measurement of `row`'s artifact, runtime, device and batch, as the benchmark
    measured the first (same harness settings): a row-like dict with samples."""
    from pipeline.data import load_splits
    from pipeline.measure.artifacts import candidates
    from pipeline.measure.rows import TorchModels, _open
    from pipeline.measure.scoring import ValImages
    from pipeline.measure.targets import targets_for
    from runtimes.harness import measure
    bench = cfg.benchmark
    cands = candidates(inputs)
    cand = next(c for c in cands if c.name == row["artifact"])
    target = next(t for t in targets_for(cand.format, bench)
                  if t.runtime == row["runtime"] and t.device == row["device"])
    val = ValImages(load_splits(cfg.data, cfg.run.seed).val, bench.accuracy_images)
    loaded = _open(cand, target, cfg, TorchModels(cands, val, bench.threads))
    stats = measure(loaded.session, val.batch(cand.preprocessing, row["batch"]), bench.warmup,
                    bench.min_iterations, bench.min_seconds,
                    cuda_events=hasattr(loaded.session, "cuda_stream"))
    return {"id": row["id"], "p50_ms": stats.p50_ms, "p90_ms": stats.p90_ms, **stats.sample_record()}


def measure_noise_floor(rows: list[dict], inputs: dict[str, Manifest], cfg: Config) -> dict | None:
    """The A/A record (pipeline.gate.intervals.noise_floor) plus the second measurement's
    p50/p90; None when no row was measured. A failure to re-measure is logged, not raised."""
    first = aa_row(rows)
    if first is None:
        return None
    try:
        second = measure_again(first, inputs, cfg)
    except Exception as exc:  # the benchmark's rows stand without their noise floor
        log.warning(f"benchmark: could not measure {first['id']} a second time for the noise "
                    f"floor ({type(exc).__name__}: {exc}); comparisons carry no noise margin")
        return None
    record = noise_floor(first, second)
    record["second"] = {k: second[k] for k in ("p50_ms", "p90_ms", "samples_us", "samples_total")}
    return record
