"""What the earlier stages said that a reviewer should see next to the numbers.

Read defensively, key by key: a stage that did not record something simply adds nothing.
"""
from __future__ import annotations

from pipeline.measure.accuracy_interval import interval_text
from pipeline.store import Manifest


def _num(d: dict, *path):
    for key in path:
        if not isinstance(d, dict) or key not in d:
            return None
        d = d[key]
    return d


def _pct(v) -> str:
    return f"{v:.2f}%" if isinstance(v, (int, float)) else "?"


def _interval(metrics: dict) -> str:
    """', [95% CI -3.1, +0.6] on 175 val images' when distill compared the students pairwise."""
    gain = metrics.get("distill_gain")
    return f", {interval_text(gain)}" if isinstance(gain, dict) else ""


def _scalars(d: dict) -> dict:
    return {k: v for k, v in (d or {}).items() if isinstance(v, (int, float, str, bool)) or v is None}


def upstream_notes(inputs: dict[str, Manifest]) -> dict:
    """Warnings and summaries from finetune, distill, prune, quantize and export metrics."""
    notes: dict = {"warnings": []}
    ft = inputs.get("finetune")
    if ft is not None:
        m = ft.metrics
        notes["finetune"] = {"val_top1": m.get("val_top1"), "best_epoch": m.get("best_epoch"),
                             "params": m.get("params"), "macs": m.get("macs"),
                             "backbone": _num(ft.outputs.get("model").metadata if "model" in ft.outputs
                                              else {}, "spec", "name")}
        st = m.get("strategy")
        if isinstance(st, dict):
            notes["finetune"]["strategy"] = {k: st.get(k) for k in
                                             ("configured", "chosen", "kept", "reason", "candidates")}
        from pipeline.report.data_audit import audit_notes
        audit, said = audit_notes(m)
        if audit is not None:
            notes["data_audit"] = audit
            notes["warnings"] += said
        nt = m.get("negative_transfer")
        if isinstance(nt, dict):
            notes["finetune"]["negative_transfer"] = {k: nt.get(k) for k in
                                                      ("pretrained_top1", "pretrained_top1_same_budget",
                                                       "scratch_top1", "gain_points", "negative_transfer",
                                                       "budget")}
            if nt.get("warning"):
                notes["warnings"].append(nt["warning"])
    ds = inputs.get("distill")
    if ds is not None:
        m = ds.metrics
        notes["distill"] = {"val_top1": m.get("val_top1"), "student_alone_top1": m.get("student_alone_top1"),
                            "distill_gain_points": m.get("distill_gain_points"),
                            "distill_gain": m.get("distill_gain"), "teacher_gap": m.get("teacher_gap"),
                            "teacher_top1": m.get("teacher_top1"),
                            "student": _num(m, "student", "backbone")}
        choice = m.get("student_choice")
        if isinstance(choice, dict):
            notes["distill"]["student_choice"] = {k: choice.get(k) for k in ("chosen", "reason", "candidates")}
        gain = m.get("distill_gain_points")
        if isinstance(gain, (int, float)) and gain < 0:
            notes["warnings"].append(
                f"Distillation lost {-gain:.2f} points against the student trained alone "
                f"({_pct(m.get('val_top1'))} vs {_pct(m.get('student_alone_top1'))}{_interval(m)}): "
                "try a higher distill.temperature or a lower distill.alpha.")
    pr = inputs.get("prune")
    if pr is not None:
        m = pr.metrics
        search = m.get("importance_search") or {}
        notes["prune"] = {"mode": m.get("mode"), **_scalars(m.get("summary")),
                          "importance": m.get("importance"),
                          "importance_chosen_because": search.get("reason"),
                          "val_top1_before": _num(m, "before", "val_top1"),
                          "val_top1_after": _num(m, "after", "val_top1"),
                          "runtime": m.get("runtime"), "budget": m.get("budget")}
        warning = _num(m, "accuracy_budget", "warning")
        if warning:
            notes["warnings"].append(warning)
    qz = inputs.get("quantize")
    if qz is not None:
        m = qz.metrics
        notes["quantize"] = {**_scalars(m), **{k: v for k, v in m.items()
                                               if "exclud" in k or "float" in k or "fallback" in k},
                             **{k: m[k] for k in ("budget", "variants", "tried", "qat") if m.get(k)}}
        if m.get("within_budget") is False:
            notes["warnings"].append(f"INT8 not shipped: {(m.get('budget') or {}).get('text')}.")
    ex = inputs.get("export")
    if ex is not None:
        failed = ex.metrics.get("failed") or {}
        notes["export"] = {"built": sorted(ex.outputs), "unavailable": ex.metrics.get("unavailable") or {},
                           "failed": failed, "int8_across_runtimes": ex.metrics.get("int8_across_runtimes"),
                           "int8_vs_fp32": ex.metrics.get("int8_vs_fp32")}
        notes["warnings"].extend(f"{name} failed at export and is not shipped: {why}"
                                 for name, why in sorted(failed.items()))
        across = ex.metrics.get("int8_across_runtimes") or {}
        for name, agree in sorted((across.get("agreement") or {}).items()):
            if agree < 0.95:  # the INT8 parity floor: a finding about rounding, judged against FP32
                notes["warnings"].append(
                    f"{name} and onnx_int8, one Q/DQ file in two runtimes, predict alike on {agree:.1%} of "
                    f"val images on this CPU (VNNI: {'yes' if across.get('cpu_vnni') else 'no'}); each is "
                    "checked against the FP32 model instead, see its accuracy row")
    return notes
