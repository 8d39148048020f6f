"""The headline: the deployed model against the fine-tuned teacher in PyTorch eager FP32.

The deployed model is the row with the lowest p90 latency on the target device (benchmark.target)
at the smallest benchmarked batch, among the deployable artifacts (ONNX, OpenVINO, TensorRT) whose
val top-1 is within benchmark.deploy_tolerance points of the teacher's. When none is, it is the
most accurate deployable row, and the headline says it missed the tolerance. Rows not faster
than the fastest beyond the noise are tied with it, and the most accurate, then highest-precision
of them ships (pipeline.report.claims). The speed-up carries its interval; "faster" is said only
when the interval excludes 1. Without deployable
rows (export not run) the student and pruned torch models stand in. Both sides come from one
benchmark run on one machine, so the speed-up is measured, never combined across runs.
"""
from __future__ import annotations

from pipeline.measure.accuracy_interval import interval_text
from pipeline.measure.artifacts import TEACHER, held_back, shippable
from pipeline.measure.targets import device_family, is_eager, is_reference
from pipeline.report.claims import pick_deployed, speedup


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def find_teacher(rows: list[dict], target: str, batch: int) -> dict | None:
    """The teacher's PyTorch eager row on the target device family at `batch`."""
    return next((r for r in rows if r["status"] == "ok" and r["artifact"] == TEACHER
                 and is_eager(r["runtime"], r["device"]) and device_family(r["device"]) == target
                 and r["batch"] == batch), None)


def deployed_candidates(rows: list[dict], target: str, batch: int) -> list[dict]:
    """Measured rows on the target at `batch` that could be shipped (exported artifacts first)."""
    here = [r for r in rows if r["status"] == "ok" and device_family(r["device"]) == target
            and r["batch"] == batch]
    deployable = [r for r in here if shippable(r)]
    return deployable or [r for r in here if r["artifact"] != TEACHER and not r.get("not_deployable")]


def headline(rows: list[dict], target: str = "cpu", tolerance: float = 1.0,
             batch: int | None = None, noise_floor: dict | None = None) -> dict | None:
    """The deployed row vs the teacher row: speed-up (p50, p90), accuracy and size change.
    None when the target has no measured teacher row or nothing to deploy."""
    measured = [r for r in rows if r["status"] == "ok" and device_family(r["device"]) == target]
    if not measured:
        return None
    batch = batch if batch is not None else min(r["batch"] for r in measured)
    teacher = find_teacher(rows, target, batch)
    options = deployed_candidates(rows, target, batch)
    if teacher is None and options and options[0].get("target"):
        return target_headline(rows, options, target, tolerance, batch)
    if teacher is None or not options:
        return None
    floor = teacher["accuracy"] - tolerance
    within = [r for r in options if r["accuracy"] >= floor]
    deployed, why = (pick_deployed(within, noise_floor) if within else
                     (max(options, key=lambda r: (r["accuracy"], -r["p90_ms"])), "the most accurate"))
    out = {"target": target, "batch": batch, "tolerance_points": tolerance,
           "within_tolerance": bool(within), "teacher": teacher["id"], "deployed": deployed["id"],
           "deployed_artifact": deployed["artifact"], "deployed_runtime": deployed["runtime"],
           "deployed_device": deployed["device"], "deployed_because": why}
    for q in ("p50_ms", "p90_ms", "p99_ms"):
        out[f"teacher_{q}"], out[f"deployed_{q}"] = teacher[q], deployed[q]
    for stat in ("p50", "p90"):
        ci = out[f"speedup_{stat}_ci"] = speedup(teacher, deployed, stat, noise_floor)
        out[f"speedup_{stat}"] = ci["estimate"] if ci else _ratio(teacher[f"{stat}_ms"], deployed[f"{stat}_ms"])
    out["teacher_accuracy"], out["deployed_accuracy"] = teacher["accuracy"], deployed["accuracy"]
    out["accuracy_change_points"] = deployed["accuracy"] - teacher["accuracy"]
    # image by image against the teacher scored here (PyTorch eager FP32, CPU); on another device
    # family the teacher row is a different measurement, so no interval is claimed for it
    out["accuracy_change_ci"] = (deployed.get("accuracy_vs_teacher")
                                 if is_reference(teacher["runtime"], teacher["device"]) else None)
    out["teacher_size_bytes"], out["deployed_size_bytes"] = teacher["size_bytes"], deployed["size_bytes"]
    out["size_change_bytes"] = ((deployed["size_bytes"] or 0) - (teacher["size_bytes"] or 0)
                                if teacher["size_bytes"] is not None and deployed["size_bytes"] is not None
                                else None)
    out["size_ratio"] = _ratio(teacher["size_bytes"], deployed["size_bytes"])
    out["not_shipped"] = held_back(rows)
    out["text"] = headline_text(out)
    return out


def target_headline(rows: list[dict], options: list[dict], target: str, tolerance: float,
                    batch: int) -> dict | None:
    """The headline of a configured target: its fastest artifact within `tolerance` of the
    teacher's accuracy (measured here, in PyTorch eager FP32 on the CPU). The teacher does not run
    on a target (its runner takes exported bundles), so there is no speed-up to quote there."""
    teacher = next((r for r in rows if r["status"] == "ok" and r["artifact"] == TEACHER
                    and is_reference(r["runtime"], r["device"])), None)
    if teacher is None:
        return None
    within = [r for r in options if r["accuracy"] >= teacher["accuracy"] - tolerance]
    deployed = (min(within, key=lambda r: r["p90_ms"]) if within
                else max(options, key=lambda r: (r["accuracy"], -r["p90_ms"])))
    out = {"target": target, "batch": batch, "tolerance_points": tolerance,
           "within_tolerance": bool(within), "teacher": teacher["id"], "deployed": deployed["id"],
           "deployed_artifact": deployed["artifact"], "deployed_runtime": deployed["runtime"],
           "deployed_device": deployed["device"], "remote": True,
           "speedup_p50": None, "speedup_p90": None, "size_ratio": None, "size_change_bytes": None,
           "teacher_accuracy": teacher["accuracy"], "deployed_accuracy": deployed["accuracy"],
           "accuracy_change_points": deployed["accuracy"] - teacher["accuracy"],
           "teacher_size_bytes": teacher["size_bytes"], "deployed_size_bytes": deployed["size_bytes"],
           "deployed_energy_mj": deployed.get("energy_mj")}
    for q in ("p50_ms", "p90_ms", "p99_ms"):
        out[f"teacher_{q}"], out[f"deployed_{q}"] = None, deployed[q]
    energy = (f", {deployed['energy_mj']:.1f} mJ per batch" if deployed.get("energy_mj") is not None
              else "")
    miss = "" if within else (f" No artifact there is within {tolerance:g} points of the teacher; "
                              "this is the most accurate one.")
    out["text"] = (f"On target {target}: {deployed['artifact']} on {deployed['runtime']}/"
                   f"{deployed['device']} (batch {batch}) at p90 {deployed['p90_ms']:.3f} ms "
                   f"(p50 {deployed['p50_ms']:.3f} ms){energy}; val top-1 {deployed['accuracy']:.2f}% "
                   f"vs the teacher's {teacher['accuracy']:.2f}% ({out['accuracy_change_points']:+.2f} "
                   f"points). The teacher is not run on the target, so no speed-up is quoted.{miss}")
    return out


def headline_text(h: dict) -> str:
    """One paragraph an engineer can paste into a PR."""
    miss = "" if h["within_tolerance"] else (
        f" No deployable artifact is within {h['tolerance_points']:g} points of the teacher; "
        "this is the most accurate one.")
    size = ""
    if h["size_ratio"]:
        size = (f" {h['deployed_size_bytes'] / 1e6:.2f} MB vs {h['teacher_size_bytes'] / 1e6:.2f} MB "
                f"on disk ({h['size_ratio']:.1f}x smaller).")
    return (f"Deployed model {h['deployed_artifact']} on {h['deployed_runtime']}/{h['deployed_device']} "
            f"(batch {h['batch']}): {_speed(h)} ({h['deployed_p90_ms']:.3f} "
            f"vs {h['teacher_p90_ms']:.3f} ms) and {h['speedup_p50']:.1f}x at p50 than the fine-tuned "
            f"teacher in PyTorch eager FP32 on {h['target']}, measured in the same run; val top-1 "
            f"{h['deployed_accuracy']:.2f}% vs {h['teacher_accuracy']:.2f}% "
            f"({accuracy_change_text(h)}).{size}{miss}{_tie(h)}{not_shipped_text(h)}")


def not_shipped_text(h: dict) -> str:
    """" onnx_int8, openvino_int8 were measured but not shipped: <why>." (empty when none)."""
    held = h.get("not_shipped") or {}
    return "".join(f" {', '.join(sorted(n for n in held if held[n] == why))} measured but not shipped: {why}."
                   for why in sorted(set(held.values())))


def accuracy_change_text(h: dict) -> str:
    """"-2.86 points [95% CI -5.1, -0.6] on 175 val images, 6 right only for the teacher and 1 only
    for the deployed model" when the rows were compared image by image."""
    ci = h.get("accuracy_change_ci")
    if not ci:
        return f"{h['accuracy_change_points']:+.2f} points"
    return (f"{h['accuracy_change_points']:+.2f} points {interval_text(ci)}, {ci['b_only']} right only "
            f"for the teacher and {ci['a_only']} only for the deployed model")


def _tie(h: dict) -> str:
    why = h.get("deployed_because") or ""
    return f" Shipped instead of a faster-looking row: {why}." if why.startswith("not slower") else ""


def _speed(h: dict) -> str:
    """"3.1x faster at p90 [95% CI 2.8-3.4x]"; without an interval excluding 1, not "faster"."""
    ci = h.get("speedup_p90_ci")
    if not ci:
        return f"{h['speedup_p90']:.1f}x faster at p90"
    bounds = f"[{ci['level']:.0%} CI {ci['low']:.2f}-{ci['high']:.2f}x]"
    if ci["verdict"] == "faster":
        return f"{h['speedup_p90']:.1f}x faster at p90 {bounds}"
    return f"not faster beyond the noise at p90 ({h['speedup_p90']:.2f}x {bounds})"


def headlines(rows: list[dict], target: str, tolerance: float,
              noise_floor: dict | None = None) -> list[dict]:
    """The configured target's headline first, then one for every other device family measured
    (a GPU machine gets a CPU and a CUDA headline; each configured target gets its own)."""
    families = [target] + sorted({device_family(r["device"]) for r in rows
                                  if r["status"] == "ok"} - {target})
    return [h for h in (headline(rows, f, tolerance, noise_floor=noise_floor) for f in families) if h]
