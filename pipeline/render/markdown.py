"""report.md: the tables an engineer reads in a pull request."""
from __future__ import annotations

from pipeline.measure.accuracy_interval import describe
from pipeline.render import tables

PLOTS = {"accuracy_vs_p90": "Accuracy vs p90 latency (Pareto front marked)",
         "latency_per_stage": "Latency per stage", "size_per_stage": "Size per stage",
         "confusion": "Confusion matrices on val (teacher and deployed)",
         "mislabel_suspects": "Likely mislabels (data audit)",
         "near_copies": "Near copies and look-alikes beside their training image (data audit)"}


def _per_class(view: dict | None) -> list[str]:
    """The per-class counts and accuracies as one table, then the warning."""
    if not view:
        return []
    from pipeline.report.per_class import per_class_table
    out = ["## Per class", "", md_table(*per_class_table(view)), ""]
    if view.get("warning"):
        out += [f"**Warning:** {view['warning']}.", ""]     # also among the report's warnings
    return out


def md_table(headers, lines) -> str:
    def esc(cell) -> str:
        return str(cell).replace("|", "\\|").replace("\n", " ")
    out = ["| " + " | ".join(esc(h) for h in headers) + " |",
           "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(esc(c) for c in line) + " |" for line in lines]
    return "\n".join(out)


def _headline(report: dict) -> list[str]:
    out = ["## Headline", ""]
    if not report["headlines"]:
        return out + ["No headline: the target device has no measured teacher row or nothing to "
                      "deploy (see the tables below).", ""]
    for h in report["headlines"]:
        out += [f"**{h['target']}**: {h['text']}", "",
                md_table(("", "teacher (PyTorch eager FP32)", f"deployed: {h['deployed']}", "change"),
                         tables.headline_table(h)), ""]
    return out


def _speedups(report: dict) -> list[str]:
    """Each measured pair (pruned vs unpruned, int8 vs fp32, IR vs ONNX) with its interval."""
    claims = report.get("speedups") or []
    if not claims:
        return []
    return (["## Speed-ups, with their intervals", "",
             "\"faster\" only when the interval (widened by the run's A/A noise floor) excludes 1. "
             "Rows are measured one after another; to compare two model files closely, time them "
             "in alternating rounds: `python -m runtimes.side_by_side A B`.", ""]
            + [f"- {c['kind']}: {c['text']}" for c in claims] + [""])


def _value(v) -> str:
    """Floats from training logs (98.44444394111633) to the digits a reader needs."""
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, list):
        return ", ".join(map(str, v)) or "none"
    return str(v)


def _notes(up: dict) -> list[str]:
    out = []
    for w in up.get("warnings", []):
        out.append(f"- **Warning:** {w}")
    ft = up.get("finetune") or {}
    st = ft.get("strategy")
    if st:
        scored = ", ".join(f"{c['strategy']} {tables.num(c.get('val_top1'))}%"
                           for c in st.get("candidates") or [])
        why = f" because {st['reason']}" if st.get("reason") else ""
        out.append(f"- Transfer strategy: {st.get('configured')} ran {st.get('chosen')}{why}; scored on "
                   f"val: {scored or 'nothing'}; kept: {st.get('kept')}.")
    nt = ft.get("negative_transfer")
    if nt:
        budget = f", scratch given {nt['budget']}" if nt.get("budget") else ""
        pretrained = nt.get("pretrained_top1_same_budget", nt.get("pretrained_top1"))
        out.append(f"- Negative-transfer check: pretrained {tables.num(pretrained)}% vs from scratch "
                   f"{tables.num(nt.get('scratch_top1'))}% at equal training time{budget} "
                   f"({'NEGATIVE TRANSFER' if nt.get('negative_transfer') else 'pretraining helps'}).")
    ds = up.get("distill") or {}
    choice = ds.get("student_choice")
    if choice:
        probed = ", ".join(f"{c['backbone']} {tables.num(c['probe_val_top1'])}%"
                           for c in choice.get("candidates") or [] if "probe_val_top1" in c)
        out.append(f"- Student: auto chose {choice.get('chosen')} because {choice.get('reason')}; "
                   f"frozen-feature probes on val: {probed or 'none'}.")
    if ds.get("student_alone_top1") is not None:
        gain = (describe(ds["distill_gain"], "distilled", "alone") if ds.get("distill_gain")
                else f"{tables.num(ds.get('distill_gain_points'), signed=True)} points")
        gap = (f" (distilled {describe(ds['teacher_gap'], 'distilled', 'the teacher')})"
               if ds.get("teacher_gap") else "")
        out.append(f"- Distillation: student alone {tables.num(ds['student_alone_top1'])}%, distilled "
                   f"{tables.num(ds.get('val_top1'))}% ({gain}), teacher "
                   f"{tables.num(ds.get('teacher_top1'))}%{gap}.")
    pr = up.get("prune") or {}
    if pr:
        parts = [f"{k.replace('_', ' ')} {_value(v)}" for k, v in pr.items()
                 if k not in ("runtime", "budget") and v is not None]
        out.append("- Pruning: " + "; ".join(parts) + ".")
    qz = up.get("quantize") or {}
    if qz:
        out.append("- Quantization: " + "; ".join(f"{k.replace('_', ' ')} {_value(v)}"
                                                   for k, v in qz.items() if v not in (None, {})) + ".")
    ex = up.get("export") or {}
    for name, reason in (ex.get("unavailable") or {}).items():
        out.append(f"- Not built here: {name}: {reason}")
    return (["## Pipeline notes", "", *out, ""] if out else [])


def _methodology(report: dict) -> list[str]:
    out = ["## How each row was measured", "",
           "Latency: one harness for every runtime (`runtimes.harness.measure`); accuracy: val top-1 "
           "in the runtime and on the device of the row; agreement: share of val images whose top-1 "
           "equals that of the FP32 PyTorch model the artifact descends from (`Agree ref`) and of the "
           "teacher. Sizes are MB of 10^6 bytes of the model's graph and weight files; exported "
           "artifacts carry the params and MACs of the torch model they were exported from.", "",
           "<details><summary>Per row</summary>", ""]
    for r in report["rows"]:
        if r["status"] == "ok":
            out.append(f"- `{r['id']}`: {r['methodology']}")
    return out + ["", "</details>", ""]


def render(report: dict, plot_files: dict[str, str] | None = None) -> str:
    """The whole report.md. `plot_files` maps plot names to file names beside it."""
    out = [f"# edgeship report: {report['run']}", "",
           f"Generated {report['generated']}; benchmark entry {report.get('benchmark_key')}; "
           f"target {report['settings'].get('target')}, deploy tolerance "
           f"{report['settings'].get('deploy_tolerance')} points.", ""]
    out += _headline(report)
    out += ["## Measured", "", md_table(tables.MEASURED_HEADERS, tables.measured(report)), ""]
    missing = tables.not_measured(report)
    if missing:
        out += ["## Not measured here", "", md_table(tables.NOT_MEASURED_HEADERS, missing), ""]
    for name, fname in (plot_files or {}).items():
        out += [f"![{PLOTS.get(name, name)}]({fname})", ""]
    out += _speedups(report)
    out += _notes(report.get("upstream") or {})
    from pipeline.report.data_audit import audit_lines
    out += _per_class(report.get("per_class"))
    out += audit_lines((report.get("upstream") or {}).get("data_audit"))
    out += ["## Environment", "", *[f"- {line}" for line in tables.environment_lines(report["environment"])], ""]
    out += _methodology(report)
    return "\n".join(out)
