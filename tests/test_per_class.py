"""The report's per-class view: counts per split, per-class val accuracy and confusion matrices of
the teacher and the deployed model from the predictions the benchmark rows keep, and the warning
when a class's val images are too few for the deploy tolerance; the audit's pictures."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from pipeline.render.markdown import _per_class as per_class_lines
from pipeline.report.per_class import class_accuracy, confusion, few_images_warning, per_class_view

REPO = Path(__file__).resolve().parents[1]
PHOTOS = REPO / "tests" / "data" / "flowers-mini"

TARGETS = [0, 0, 0, 0, 1, 1, 2, 2, 2, 2]
TEACHER_PREDS = [0, 0, 0, 0, 1, 1, 2, 2, 2, 1]
DEPLOYED_PREDS = [0, 0, 0, 1, 1, 0, 2, 2, 2, 1]


def _rows():
    base = {"status": "ok", "device": "cpu", "batch": 1}
    return [{**base, "id": "teacher@torch/cpu/b1", "artifact": "teacher", "runtime": "torch",
             "predictions": TEACHER_PREDS},
            {**base, "id": "onnx_int8@onnxruntime/cpu/b1", "artifact": "onnx_int8",
             "runtime": "onnxruntime", "predictions": DEPLOYED_PREDS, "deployed": True},
            {**base, "id": "old@onnxruntime/cpu/b1", "artifact": "old", "runtime": "onnxruntime"}]


def test_confusion_and_class_accuracy():
    m = confusion(TARGETS, DEPLOYED_PREDS, 3)
    assert m == [[3, 1, 0], [1, 1, 0], [0, 1, 3]]
    assert class_accuracy(m) == [75.0, 50.0, 75.0]
    assert class_accuracy([[0, 0], [1, 1]]) == [None, 50.0]


def test_view_of_teacher_and_deployed_with_the_few_images_warning():
    counts = {"train": {"a": 10, "b": 10, "c": 10}, "val": {"a": 4, "b": 2, "c": 4}}
    view = per_class_view(_rows(), {"classes": ["a", "b", "c"], "targets": TARGETS}, counts, 30.0)
    assert view["teacher"]["accuracy"] == [100.0, 100.0, 75.0]
    assert view["deployed"]["accuracy"] == [75.0, 50.0, 75.0]
    assert view["deployed"]["artifact"] == "onnx_int8"
    assert view["counts"]["val scored"] == {"a": 4, "b": 2, "c": 4}
    # b: one of 2 images is 50 points; a and c: 25 points, within a 30-point tolerance
    assert view["warning"] == (
        "1 class(es) have so few val images that one image is worth more than "
        "benchmark.deploy_tolerance (30 points) of that class's accuracy: b (2: 50.0 points each); "
        "per-class changes within the tolerance cannot be told apart; a class needs 4+ val images "
        "for that")
    assert few_images_warning({"a": 100}, 1.0) is None and few_images_warning({"a": 99}, 1.0)
    lines = per_class_lines(view)
    assert lines[0] == "## Per class"
    table = lines[2].splitlines()
    assert table[0] == ("| class | train images | val images | val scored images | teacher val "
                        "top-1 (%) (teacher) | deployed val top-1 (%) (onnx_int8) |")
    assert table[2] == "| a | 10 | 4 | 4 | 100.0 | 75.0 |"
    assert lines[4].startswith("**Warning:** 1 class(es)")


def test_results_without_predictions_give_no_view():
    assert per_class_view(_rows(), None, None, 1.0) is None
    rows = [{k: v for k, v in r.items() if k != "predictions"} for r in _rows()]
    view = per_class_view(rows, {"classes": ["a", "b", "c"], "targets": TARGETS}, None, 1.0)
    assert view["teacher"] is None and view["deployed"] is None


def test_report_renders_the_confusion_matrices_and_the_audit_pictures(tmp_path):
    from pipeline.render import html, markdown, plots
    root = tmp_path / "photos"
    shutil.copytree(PHOTOS, root)
    daisy = sorted(p.relative_to(root).as_posix() for p in (root / "train/daisy").iterdir())
    roses = sorted(p.relative_to(root).as_posix() for p in (root / "val/roses").iterdir())
    view = per_class_view(_rows(), {"classes": ["daisy", "roses", "tulips"], "targets": TARGETS}, None, 1.0)
    audit = {"images": 27, "exact": {}, "near": {"max_bits": 4, "pairs": []},
             "lookalikes": [{"val": roses[0], "train": daisy[0], "similarity": 0.9, "margin": 0.4}],
             "mislabels": {"method": "m", "count": 1, "suspects": [
                 {"path": daisy[1], "label": "daisy", "predicted": "roses", "confidence": 0.97, "margin": 0.95},
                 {"path": "train/daisy/gone.jpg", "label": "daisy", "predicted": "roses",
                  "confidence": 0.9, "margin": 0.8}]},
             "excluded": ["train/daisy/x.jpg"]}
    rows = [{**r, "device_family": "cpu", "p50_ms": 1.0, "p90_ms": 2.0, "p99_ms": 2.5, "mean_ms": 1.2,
             "throughput_ips": 900.0, "accuracy": 90.0, "methodology": "m", "accuracy_delta_teacher": None,
             "stage": "finetune", "size_bytes": 1000, "format": "torch", "precision": "fp32"}
            for r in _rows()[:2]]
    report = {"rows": rows, "headline": None, "headlines": [], "per_class": view,
              "upstream": {"data_audit": audit, "warnings": []}}
    pngs = plots.render_all(report, str(root))
    assert {"confusion", "mislabel_suspects", "near_copies"} <= set(pngs)
    assert all(png.startswith(b"\x89PNG") for png in pngs.values())
    assert "mislabel_suspects" not in plots.render_all(report)     # no tree given: no pictures
    from pipeline.report.data_audit import audit_lines
    lines = audit_lines(audit)
    assert (f"- likely mislabel: `{daisy[1]}` labelled daisy, looks roses (probability 0.97, margin 0.95)"
            in lines)
    assert "- excluded (data.exclude): `train/daisy/x.jpg`" in lines
    full = {**report, "run": "r", "generated": "now", "settings": {}, "environment": {}}
    assert "## Per class" in markdown.render(full, {k: f"{k}.png" for k in pngs})
    assert "<h2>Per class</h2>" in html.render(full, pngs)


@pytest.mark.parametrize("field", ["predictions"])
def test_benchmark_rows_keep_their_predictions(field):
    """The field the per-class view reads is written where each row is scored."""
    source = (REPO / "pipeline/measure/rows.py").read_text()
    assert f'"{field}": preds.tolist()' in source
