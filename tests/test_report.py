"""Report stage on a real benchmark: report.json rows, headline, report.md, report.html with
embedded plots; Pareto front and headline arithmetic; `edgeship compare`."""
from __future__ import annotations

import base64
import copy
import json
import re
import subprocess

import numpy as np
import pytest

import bench_fixture
from pipeline.compare.reports import compare_reports, resolve_report
from pipeline.report.headline import headline
from pipeline.report.pareto import pareto_front
from pipeline.report.upstream import upstream_notes
from pipeline.store import Manifest

ROW_KEYS = {"stage", "format", "precision", "runtime", "device", "batch", "accuracy", "agreement_reference",
            "agreement_teacher", "p50_ms", "p90_ms", "p99_ms", "mean_ms", "throughput_ips", "size_bytes",
            "params", "macs", "methodology", "threads", "pareto"}
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.getbasetemp() / "bench-store"
    manifests = bench_fixture.report(root)
    entry = manifests["report"].entry_dir
    return {"root": root, "manifests": manifests, "entry": entry,
            "report": json.loads((entry / "report.json").read_text()),
            "results": json.loads(manifests["benchmark"].path_of("results").read_text())}


def test_report_json_has_every_benchmark_row_with_the_columns(run):
    report, results = run["report"], run["results"]
    assert sorted(r["id"] for r in report["rows"]) == sorted(r["id"] for r in results["rows"])
    measured = [r for r in report["rows"] if r["status"] == "ok"]
    assert len(measured) == 9                      # 3 torch + 2 ONNX x 2 runtimes + 2 IRs, batch 1
    for row in measured:
        assert ROW_KEYS <= set(row), ROW_KEYS - set(row)
        assert row["size_mb"] == pytest.approx(row["size_bytes"] / 1e6)
    unavailable = [r for r in report["rows"] if r["status"] == "unavailable"]
    assert {r["runtime"] for r in unavailable} >= {"tensorrt"} and all(r["reason"] for r in unavailable)
    assert report["environment"]["cpu"]["model"] and report["settings"]["target"] == "cpu"


def test_headline_is_the_fastest_deployable_row_within_tolerance(run):
    report = run["report"]
    h = report["headline"]
    rows = {r["id"]: r for r in report["rows"]}
    teacher, deployed = rows[h["teacher"]], rows[h["deployed"]]
    assert teacher["artifact"] == "teacher" and teacher["runtime"] == "torch" and teacher["device"] == "cpu"
    assert deployed["format"] != "torch" and deployed["deployed"] and h["within_tolerance"]
    floor = teacher["accuracy"] - report["settings"]["deploy_tolerance"]
    rivals = [r for r in report["rows"] if r["status"] == "ok" and r["format"] != "torch"
              and r["device"] == "cpu" and r["accuracy"] >= floor]
    fastest = min(rivals, key=lambda r: r["p90_ms"])
    if deployed is not fastest and deployed["id"] != fastest["id"]:
        # Shipped over a faster-looking row only when that row is not faster beyond the noise
        # and the shipped one is at least as accurate (pipeline.report.claims).
        from pipeline.gate.intervals import margin, ratio
        tie = ratio(deployed, fastest, "p90", margin(report["noise_floor"], "p90"))
        assert tie.low <= 1.0 and deployed["accuracy"] >= fastest["accuracy"]
        assert h["deployed_because"].startswith("not slower beyond the noise than the fastest")
    assert h["speedup_p90"] == pytest.approx(teacher["p90_ms"] / deployed["p90_ms"])
    assert h["speedup_p50"] == pytest.approx(teacher["p50_ms"] / deployed["p50_ms"])
    assert h["accuracy_change_points"] == pytest.approx(deployed["accuracy"] - teacher["accuracy"])
    assert h["size_ratio"] == pytest.approx(teacher["size_bytes"] / deployed["size_bytes"])
    assert f"{h['speedup_p90']:.1f}x faster at p90" in h["text"]


def test_markdown_has_a_line_per_measured_row_and_the_reasons(run):
    md = (run["entry"] / "report.md").read_text()
    assert "| Artifact | Stage | Format | Precision | Runtime | Device | Batch | Top-1 % |" in md
    for row in run["report"]["rows"]:
        if row["status"] == "ok":
            cells = f"| {row['stage']} | {row['format']} | {row['precision']} | {row['runtime']} | {row['device']} | 1 |"
            assert cells in md, cells
    assert bench_fixture.TRT_REASON in md and "## Not measured here" in md
    assert "(deployed)" in md and "teacher (baseline)" in md
    for name in ("accuracy_vs_p90", "latency_per_stage", "size_per_stage"):
        assert f"]({name}.png)" in md
        assert (run["entry"] / f"{name}.png").read_bytes().startswith(PNG)


def test_html_is_self_contained_with_the_plots(run):
    page = (run["entry"] / "report.html").read_text()
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    # the three plots and the confusion matrices (the fixture's digits have no audit pictures)
    assert len(images) == 4 and "<h2>Per class</h2>" in page and all(base64.b64decode(i).startswith(PNG) for i in images)
    assert "<table>" in page and 'class="deployed"' in page and "warm-up runs" in page
    assert "src=\"http" not in page and "<script" not in page


def test_report_stage_prints_the_headline_and_where_the_report_is(run, capsys, stderr_logs):
    from pipeline.runner import _execute
    from pipeline.stages.report import STAGE
    from pipeline.store import Store
    cfg = bench_fixture.config(run["root"], ["benchmark.batch_sizes=[1]"])
    inputs = {k: v for k, v in run["manifests"].items() if k != "report"}
    with Store(run["root"]) as store:
        manifest = _execute(STAGE, cfg, store, "0123456789abcdef", inputs, True)
    assert capsys.readouterr().err == ""               # the runner's publish step does the talking
    STAGE.publish(manifest, cfg)
    out = capsys.readouterr().err
    assert f"HEADLINE: {run['report']['headline']['text']}" in out
    assert f"report: {manifest.entry_dir / 'report.md'} (and report.json, report.html)" in out
    assert manifest.metrics["headline"]["deployed"] == run["report"]["headline"]["deployed"]


def test_pareto_front():
    points = [(1.0, 90.0), (2.0, 95.0), (3.0, 94.0), (0.5, 80.0), (2.0, 95.0), (5.0, 96.0), (1.0, 89.0)]
    assert pareto_front(points) == [True, True, False, True, True, True, False]
    assert pareto_front([]) == [] and pareto_front([(1.0, 1.0)]) == [True]


def _row(artifact, runtime, fmt, p50, p90, acc, size, device="cpu", batch=1):
    return {"id": f"{artifact}@{runtime}/{device}/b{batch}", "artifact": artifact, "runtime": runtime,
            "format": fmt, "device": device, "batch": batch, "status": "ok", "p50_ms": p50,
            "p90_ms": p90, "p99_ms": p90 * 1.2, "accuracy": acc, "size_bytes": size}


def test_headline_arithmetic_and_tolerance():
    rows = [_row("teacher", "torch", "torch", 8.0, 10.0, 98.0, 20_000_000),
            _row("pruned", "torch", "torch", 2.0, 2.5, 97.9, 5_000_000),
            _row("onnx_fp32", "onnxruntime", "onnx", 0.9, 1.0, 97.5, 4_000_000),
            _row("onnx_int8", "onnxruntime", "onnx", 0.4, 0.5, 96.0, 1_000_000),
            _row("teacher", "torch", "torch", 1.0, 1.0, 98.0, 20_000_000, device="cuda")]
    h = headline(rows, "cpu", tolerance=1.0)
    assert h["deployed"] == "onnx_fp32@onnxruntime/cpu/b1" and h["within_tolerance"]
    assert h["speedup_p90"] == pytest.approx(10.0) and h["speedup_p50"] == pytest.approx(8.0 / 0.9)
    assert h["accuracy_change_points"] == pytest.approx(-0.5)
    assert h["size_ratio"] == pytest.approx(5.0) and h["size_change_bytes"] == -16_000_000
    assert headline(rows, "cpu", tolerance=2.5)["deployed"] == "onnx_int8@onnxruntime/cpu/b1"
    strict = headline(rows, "cpu", tolerance=0.1)      # nothing deployable within: the most accurate
    assert strict["deployed"] == "onnx_fp32@onnxruntime/cpu/b1" and not strict["within_tolerance"]
    assert "No deployable artifact is within 0.1 points" in strict["text"]
    assert headline(rows, "cuda") is None              # a teacher but nothing to deploy there


def test_an_int8_file_outside_its_budget_is_measured_but_not_shipped():
    why = "INT8 (plain PTQ) 96.00% vs FP32 97.50%: -1.50 points; outside quantize.max_accuracy_drop 1 points"
    rows = [_row("teacher", "torch", "torch", 8.0, 10.0, 98.0, 20_000_000),
            _row("onnx_fp32", "onnxruntime", "onnx", 0.9, 1.0, 97.5, 4_000_000),
            {**_row("onnx_int8", "onnxruntime", "onnx", 0.4, 0.5, 97.5, 1_000_000), "not_deployable": why},
            {**_row("openvino_int8", "openvino", "openvino", 0.3, 0.4, 97.5, 1_000_000), "not_deployable": why}]
    h = headline(rows, "cpu", tolerance=1.0)
    assert h["deployed"] == "onnx_fp32@onnxruntime/cpu/b1"    # the faster INT8 rows are held back
    assert h["not_shipped"] == {"onnx_int8": why, "openvino_int8": why}
    assert h["text"].endswith(f" onnx_int8, openvino_int8 measured but not shipped: {why}.")


def test_upstream_warnings_and_summaries_are_read_by_key():
    from pipeline.measure.accuracy_interval import paired_difference
    from pipeline.render.markdown import _notes

    def manifest(stage, metrics):
        return Manifest(stage, 1, "k", {}, {}, {}, metrics)
    alone = np.arange(200) % 25 != 0                 # 96.0% of 200 images: one more than distilled
    distilled = alone.copy()
    distilled[1] = False
    gain, gap = paired_difference(distilled, alone), paired_difference(distilled, alone | (np.arange(200) == 0))
    warning = "NEGATIVE TRANSFER: efficientnet_lite0 trained from scratch reaches 97.00% ..."
    notes = upstream_notes({
        "finetune": manifest("finetune", {"val_top1": 95.0, "negative_transfer": {
            "pretrained_top1": 95.0, "scratch_top1": 97.0, "negative_transfer": True, "warning": warning}}),
        "distill": manifest("distill", {"val_top1": 96.0, "student_alone_top1": 96.5,
                                        "distill_gain_points": -0.5, "distill_gain": gain,
                                        "teacher_gap": gap, "student_choice": {
                                            "chosen": "efficientnet_lite1", "reason": "the fewest MACs ...",
                                            "candidates": [{"backbone": "efficientnet_lite0", "probe_val_top1": 88.0},
                                                           {"backbone": "efficientnet_lite1", "probe_val_top1": 92.0},
                                                           {"backbone": "efficientnet_lite2", "left_out": "..."}]}}),
        "prune": manifest("prune", {"mode": "ratio", "summary": {"macs_removed": 0.5}, "after": {"val_top1": 95.5}}),
        "quantize": manifest("quantize", {"int8_top1": 95.1, "float_layers": ["conv_head"], "steps": [{}]}),
    })
    assert notes["warnings"][0] == warning and "Distillation lost 0.50 points" in notes["warnings"][1]
    assert f"[95% CI {gain['low']:+.1f}, {gain['high']:+.1f}] on 200 val images" in notes["warnings"][1]
    [line] = [x for x in _notes(notes) if x.startswith("- Distillation")]
    assert (f"(-0.50 points [95% CI {gain['low']:+.1f}, {gain['high']:+.1f}] on 200 val images, within "
            "the noise (0 images right only for distilled, 1 only for alone))") in line
    assert f"(distilled {gap['points']:+.2f} points [95% CI" in line and "2 only for the teacher)" in line
    [line] = [x for x in _notes(notes) if x.startswith("- Student")]
    assert line == ("- Student: auto chose efficientnet_lite1 because the fewest MACs ...; frozen-feature "
                    "probes on val: efficientnet_lite0 88.00%, efficientnet_lite1 92.00%.")
    assert notes["prune"]["macs_removed"] == 0.5 and notes["prune"]["val_top1_after"] == 95.5
    assert notes["quantize"] == {"int8_top1": 95.1, "float_layers": ["conv_head"]}
    assert upstream_notes({}) == {"warnings": []}


def test_compare_shows_deltas_and_rows_only_on_one_side(run, tmp_path):
    a = run["entry"] / "report.json"
    changed = copy.deepcopy(run["report"])
    rows = [r for r in changed["rows"] if r["status"] == "ok"]
    target = next(r for r in rows if r["id"] == "onnx_int8@openvino/cpu/b1")
    target["accuracy"] -= 1.5
    target["p90_ms"] *= 1.25
    dropped = changed["rows"].pop(changed["rows"].index(next(r for r in rows if r["runtime"] == "onnxruntime")))
    changed["rows"].append({**target, "id": "onnx_int8@openvino/cpu/b8", "batch": 8})
    changed["environment"]["packages"]["openvino"] = "9999.0"
    b = tmp_path / "b" / "report.json"
    b.parent.mkdir()
    b.write_text(json.dumps(changed))
    text = compare_reports(a, b.parent)
    line = next(ln for ln in text.splitlines() if ln.startswith("| onnx_int8@openvino/cpu/b1 |"))
    assert "| -1.50 |" in line and "| +25.0% |" in line and line.endswith("| = |")
    assert f"Only in A:\n- {dropped['id']} (ok)" in text
    assert "Only in B:\n- onnx_int8@openvino/cpu/b8 (ok)" in text
    assert "- openvino: " in text and "-> 9999.0" in text
    same = compare_reports(a, a)
    assert "Rows measured in both: no change." in same and "Only in" not in same


def test_compare_finds_reports_in_stores_and_the_cli_prints_it(run, cli):
    from pipeline.store import Store
    newest = Store(run["root"]).entries("report")[0]
    assert resolve_report(run["root"]) == newest.entry_dir / "report.json"   # a store: its newest report
    assert resolve_report(run["entry"]) == run["entry"] / "report.json"
    with pytest.raises(FileNotFoundError, match="run `edgeship run report`"):
        resolve_report(run["root"] / "nowhere")
    done = subprocess.run(cli("compare", str(run["entry"]), str(run["root"])), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("A: ") and "Headline (cpu, batch 1):" in done.stdout
