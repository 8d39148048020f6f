"""The benchmark's own noise floor: one artifact measured twice in the run (an A/A pair).

The artifact is loaded a second time in a second worker process of its runtime and timed in
every round with the other rows (pipeline.measure.rounds), so the pair differs only by the
process that ran it and by where in each round's order it fell. Its ratio, taken round by round,
is the noise floor every comparison of the run is widened by (see pipeline.gate.intervals); an
interval that excludes 1 says the process or the order still matters on this host. The artifact:
the first ONNX row (an exported model in ONNX Runtime on the CPU, quick to load and close to
what ships), else the first deployable row, else the first measured row.
"""
from __future__ import annotations

from pipeline.gate.intervals import noise_floor


def aa_row(rows: list[dict]) -> dict | None:
    """The row the A/A pair repeats (see the module docstring)."""
    from runtimes import formats
    ok = [r for r in rows if r["status"] == "ok"]
    for pick in (lambda r: r["format"] == "onnx" and r["runtime"] == "onnxruntime" and r["device"] == "cpu",
                 lambda r: formats.get(r["format"]).deployable, lambda r: True):
        found = next((r for r in ok if pick(r)), None)
        if found:
            return found
    return None


def index_rows(rows: list[dict]) -> None:
    """Number the measured rows in the order their first round was timed (`measured_index`)."""
    timed = sorted((r for r in rows if r.get("started") is not None), key=lambda r: r["started"])
    for i, r in enumerate(timed):
        r["measured_index"] = i


def noise_floor_record(first: dict, second: dict, seed: int, orders: list[list[str]]) -> dict:
    """The A/A record (pipeline.gate.intervals.noise_floor) with the second half's latency, the
    processes of both halves, and the round orders (seed and order, to replay them)."""
    record = noise_floor(first, second)
    record["second"] = {k: second.get(k) for k in ("p50_ms", "p90_ms", "samples_us", "samples_total",
                                                    "rounds", "rounds_id", "process")}
    record["processes"] = [first.get("process"), second.get("process")]
    record["round_seed"], record["round_orders"] = seed, orders
    return record
