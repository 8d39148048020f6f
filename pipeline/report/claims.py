"""Speed-up claims with their intervals, the deployed-model rule, and the noisy-host flag.

"Faster" is said only when the interval of the ratio excludes 1, after widening by the run's
noise floor (pipeline.gate.intervals).

The deployed model among the rows within the accuracy tolerance: take the fastest row by p90;
every row whose p90 is not slower than it beyond the noise (the ratio's interval holds 1) is
tied with it; among the tied rows the most accurate wins, then the higher precision (fp32 over
fp16 over int8: fewer kernels that can differ on another CPU), then the lower p90. So a row is
never shipped for a speed-up the machine cannot tell from noise at the cost of accuracy or
precision.
"""
from __future__ import annotations

from pipeline.gate import intervals

PRECISION_ORDER = {"fp32": 0, "fp16": 1, "bf16": 1, "int8": 2}


def pick_deployed(within: list[dict], noise_floor: dict | None) -> tuple[dict, str]:
    """(row, why) by the rule in the module docstring; `within` is non-empty."""
    fastest = min(within, key=lambda r: r["p90_ms"])
    widen = intervals.margin(noise_floor, "p90")
    tied = []
    for r in within:
        ratio = intervals.ratio(r, fastest, "p90", widen) if r is not fastest else None
        if r is fastest or (ratio is not None and not ratio.above(1.0)):
            tied.append(r)
    chosen = max(tied, key=lambda r: (r["accuracy"], -PRECISION_ORDER.get(r.get("precision"), 3),
                                      -r["p90_ms"]))
    if chosen is fastest:
        why = "the fastest at p90 within the tolerance"
        others = [r["id"] for r in tied if r is not fastest]
        if others:
            why += f"; tied within the noise with {', '.join(others)}, none more accurate or higher precision"
    else:
        ratio = intervals.ratio(chosen, fastest, "p90", widen)
        why = (f"not slower beyond the noise than the fastest, {fastest['id']} (p90 ratio "
               f"{ratio.text(2)}), and more accurate or higher precision")
    return chosen, why


def speedup(slow: dict, fast: dict, stat: str, noise_floor: dict | None) -> dict | None:
    """How many times faster `fast` is than `slow` at `stat`, with the interval and the word:
    {"estimate", "low", "high", "level", "verdict": faster | slower | within noise}, and, for rows
    timed in the same rounds, the speed-up of every round ("rounds") so the spread shows."""
    ratio = intervals.ratio(fast, slow, stat, intervals.margin(noise_floor, stat))
    if ratio is None:
        return None
    out = {**intervals.speedup(ratio).to_dict(), "verdict": intervals.claim(ratio)}
    paired = intervals.paired_rounds(slow, fast, stat)
    if paired:
        out["rounds"] = [round(s / f, 3) for s, f in zip(*paired)]
    return out


def _pairs(rows: list[dict]):
    """(kind, baseline row, candidate row): pruned vs student and int8 vs fp32 (expected faster),
    and an OpenVINO IR vs the ONNX file it was converted from, both run by OpenVINO (expected
    equal: the CPU plugin compiles both to the same graph, tests/test_export_openvino.py)."""
    ok = {(r["artifact"], r["runtime"], r["device"], r["batch"]): r for r in rows if r["status"] == "ok"}
    for (artifact, runtime, device, batch), row in ok.items():
        if artifact == "pruned" and ("student", runtime, device, batch) in ok:
            yield "pruned vs unpruned", ok[("student", runtime, device, batch)], row
        if artifact.endswith("int8"):
            fp32 = ok.get((artifact[:-4] + "fp32", runtime, device, batch))
            if fp32:
                yield "int8 vs fp32", fp32, row
        if artifact.startswith("openvino_") and runtime == "openvino":
            onnx = ok.get(("onnx_" + artifact[len("openvino_"):], runtime, device, batch))
            if onnx:
                yield "IR vs ONNX", onnx, row


def int8_note(entry: dict, cpu: dict | None) -> str | None:
    """Why an INT8 row is slower than its FP32 row, from what this CPU can do; None unless the
    interval says slower (a verdict within noise gets no explanation: there is nothing to
    explain until a re-measurement would show it again), or the claim is not int8 vs fp32."""
    p90 = entry.get("p90")
    if entry["kind"] != "int8 vs fp32" or not p90 or p90["verdict"] != intervals.SLOWER:
        return None
    flags = set((cpu or {}).get("flags") or [])
    if not (cpu or {}).get("vnni") and "avx2" in flags:
        return ("this CPU has no VNNI (avx512_vnni or avx_vnni), so INT8 multiply-accumulates "
                "take three AVX2 instructions (vpmaddubsw, vpmaddwd, vpaddd) where VNNI takes one: "
                "at best about 1.3x the FP32 FMA rate instead of 4x, which the quantize/dequantize "
                "steps and layout reorders around each layer use up. INT8 pays on CPUs with VNNI or AMX")
    if not (cpu or {}).get("vnni"):
        return "this CPU has no INT8 dot-product instructions the runtimes use (VNNI, AMX)"
    return ("this CPU has VNNI, so the instructions are not the reason: on a model this small the "
            "quantize/dequantize steps and layout reorders cost about what the INT8 arithmetic saves")


def speedup_claims(rows: list[dict], noise_floor: dict | None, cpu: dict | None = None) -> list[dict]:
    """Every pair of _pairs measured in the run, at p50 and p90; an INT8 row that is slower beyond
    the noise carries the reason (int8_note) for the CPU described by `cpu` (the environment's record)."""
    out = []
    for kind, base, row in _pairs(rows):
        entry = {"kind": kind, "baseline": base["id"], "candidate": row["id"]}
        for stat in intervals.QUANTILES:
            entry[stat] = speedup(base, row, stat, noise_floor)
        p90 = entry["p90"]
        entry["text"] = (f"{row['id']} vs {base['id']}: " + (
            "no samples" if p90 is None else f"{p90['estimate']:.2f}x at p90 "
            f"[{p90['level']:.0%} CI {p90['low']:.2f}-{p90['high']:.2f}], {p90['verdict']}"
            + (f" (rounds: {' '.join(f'{v:.2f}' for v in p90['rounds'])})" if p90.get("rounds") else "")))
        # `cpu` describes this machine; a target's rows ran on another CPU.
        note = None if row.get("target") else int8_note(entry, cpu)
        if note:
            entry["note"] = note
            entry["text"] += f": {note}"
        out.append(entry)
    return out


def int8_not_shipped(headline: dict | None, claims: list[dict]) -> str | None:
    """Why no INT8 artifact was shipped on the headline's runtime, when its INT8 row was slower
    than the FP32 one beyond the noise (the reason from int8_note); None otherwise."""
    if not headline or headline.get("deployed_artifact", "").endswith("int8"):
        return None
    suffix = f"@{headline['deployed_runtime']}/{headline['deployed_device']}/"
    for c in claims:
        if c.get("note") and suffix in c["candidate"]:
            return (f"INT8 was not shipped: {c['candidate']} is slower than FP32 at p90 beyond "
                    f"the noise: {c['note']}.")
    return None


def noisy_host(noise_floor: dict | None, host_load: dict | None) -> dict:
    """{"noisy": bool, "reasons": [...]} from the host load record and the A/A pair."""
    reasons = list((host_load or {}).get("reasons", []))
    if noise_floor and noise_floor.get("noisy"):
        reasons.append(f"{noise_floor['row']} measured twice: second/first p90 ratio "
                       f"{noise_floor['p90']['estimate']:.2f} (A/A noise floor)")
    return {"noisy": bool(reasons), "reasons": reasons}
