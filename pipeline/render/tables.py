"""The report's tables as headers and text cells, rendered by both report.md and report.html."""
from __future__ import annotations

from pipeline.measure.targets import REFERENCE_RUNTIME
from pipeline.report.headline import accuracy_change_text

MEASURED_HEADERS = ("Artifact", "Stage", "Format", "Precision", "Runtime", "Device", "Batch",
                    "Top-1 %", "Δ teacher (95% CI)", "Agree ref %", "Agree teacher %", "p50 ms", "p90 ms",
                    "p99 ms", "Mean ms", "Images/s", "Energy mJ", "Size MB", "Params M", "MACs M", "Compile s",
                    "Pareto")
NOT_MEASURED_HEADERS = ("Runtime / device", "Status", "Artifacts", "Reason")


def ms(v) -> str:
    if v is None:
        return "-"
    return f"{v:.3f}" if v < 10 else f"{v:.1f}"


def num(v, digits: int = 2, scale: float = 1.0, signed: bool = False) -> str:
    if v is None:
        return "-"
    return f"{v / scale:+.{digits}f}" if signed else f"{v / scale:.{digits}f}"


def delta_teacher(row: dict) -> str:
    """Top-1 change against the teacher, with its interval where the images were compared pairwise."""
    ci = row.get("accuracy_vs_teacher")
    delta = num(row.get("accuracy_delta_teacher"), signed=True)
    return f"{delta} [{ci['low']:+.1f}, {ci['high']:+.1f}]" if ci else delta


def artifact_label(row: dict) -> str:
    """The artifact name, marked when it is the teacher baseline or the deployed model."""
    tags = []
    if row.get("deployed"):
        tags.append("deployed")
    if row["artifact"] == "teacher" and row["runtime"] == REFERENCE_RUNTIME:
        tags.append("baseline")
    return row["artifact"] + (f" ({', '.join(tags)})" if tags else "")


def measured(report: dict) -> list[list[str]]:
    """One line per measured row: the columns of MEASURED_HEADERS."""
    lines = []
    for r in report["rows"]:
        if r["status"] != "ok":
            continue
        lines.append([
            artifact_label(r), r["stage"], r["format"], r["precision"], r["runtime"], r["device"],
            str(r["batch"]), num(r["accuracy"]), delta_teacher(r),
            num(r.get("agreement_reference"), 1), num(r.get("agreement_teacher"), 1),
            ms(r["p50_ms"]), ms(r["p90_ms"]), ms(r["p99_ms"]), ms(r["mean_ms"]),
            num(r["throughput_ips"], 1), num(r.get("energy_mj"), 1), num(r.get("size_bytes"), 2, 1e6),
            num(r.get("params"), 2, 1e6), num(r.get("macs"), 1, 1e6), num(r.get("compile_s"), 1),
            "yes" if r.get("pareto") else ""])
    return lines


def not_measured(report: dict) -> list[list[str]]:
    """Rows that could not run here or failed, grouped by runtime, device, status and reason."""
    groups: dict[tuple, list[str]] = {}
    for r in report["rows"]:
        if r["status"] == "ok":
            continue
        where = f"{r['runtime']} / {r['device']}" + (f" (batch {r['batch']})" if r["batch"] else "")
        groups.setdefault((where, r["status"], r["reason"] or ""), []).append(r["artifact"])
    return [[where, status, ", ".join(dict.fromkeys(arts)), reason]
            for (where, status, reason), arts in groups.items()]


def headline_table(h: dict) -> list[list[str]]:
    """Teacher vs deployed, with the change, for the headline."""
    size = (lambda b: num(b, 2, 1e6))
    faster = (lambda x: f"{x:.1f}x faster" if x else "")
    return [
        ["p50 latency (ms)", ms(h["teacher_p50_ms"]), ms(h["deployed_p50_ms"]), faster(h["speedup_p50"])],
        ["p90 latency (ms)", ms(h["teacher_p90_ms"]), ms(h["deployed_p90_ms"]), faster(h["speedup_p90"])],
        ["p99 latency (ms)", ms(h["teacher_p99_ms"]), ms(h["deployed_p99_ms"]), ""],
        ["val top-1 (%)", num(h["teacher_accuracy"]), num(h["deployed_accuracy"]),
         accuracy_change_text(h)],
        ["size on disk (MB)", size(h["teacher_size_bytes"]), size(h["deployed_size_bytes"]),
         f"{h['size_ratio']:.1f}x smaller" if h.get("size_ratio") else ""],
    ]


def environment_lines(env: dict) -> list[str]:
    """The environment in a few lines: CPU, flags, cores, threads, governor, GPU, versions."""
    cpu = env.get("cpu") or {}
    lines = [f"CPU: {cpu.get('model')} ({cpu.get('architecture')}), {cpu.get('physical_cores')} "
             f"physical / {cpu.get('logical_cores')} logical cores, {cpu.get('affinity_cores')} usable; "
             f"threads used: {env.get('threads')}",
             f"CPU flags: {', '.join(cpu.get('flags') or []) or 'none of interest'}; "
             f"governor: {cpu.get('scaling_governor') or 'not readable'}; "
             f"frequency: {cpu.get('frequency_mhz') or '?'} MHz"]
    for gpu in env.get("gpus") or []:
        lines.append("GPU: " + ", ".join(f"{k} {v}" for k, v in gpu.items()))
    if not env.get("gpus") and not env.get("cuda"):
        lines.append("GPU: none visible")
    jetson = env.get("jetson")
    if jetson:
        lines.append(f"Jetson: {jetson.get('l4t_release')}, power mode {jetson.get('power_mode')}")
    if env.get("thermal_c"):
        lines.append("Temperatures (°C): " + ", ".join(f"{k} {v:g}" for k, v in env["thermal_c"].items()))
    pk = env.get("packages") or {}
    lines.append("Libraries: " + ", ".join(f"{k} {v}" for k, v in pk.items() if v)
                 + f"; Python {env.get('python')}; {(env.get('os') or {}).get('platform')}")
    return lines
