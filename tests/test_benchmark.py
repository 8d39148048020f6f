"""The benchmark stage on real artifacts: every artifact on every runtime that can run it here,
accuracy and agreement checked against an independent scoring, unavailable pairs with reasons."""
from __future__ import annotations

import json

import numpy as np
import pytest

import bench_fixture
from pipeline.artifact import Format
from pipeline.measure.artifacts import artifact_file, candidates
from runtimes import formats
from pipeline.measure.rows import build_rows, row_id
from runtimes import onnxruntime_runtime, tensorrt_runtime, torch_runtime

CUDA_REASON = torch_runtime.unavailable("cuda")


@pytest.fixture(scope="module")
def fixture(tmp_path_factory):
    root = tmp_path_factory.getbasetemp() / "bench-store"
    manifests = bench_fixture.build(root)
    cfg = bench_fixture.config(root)
    rows, floor = build_rows(manifests, cfg, log=lambda msg: None)
    return {"manifests": manifests, "cfg": cfg, "rows": {r["id"]: r for r in rows}, "list": rows,
            "floor": floor}


def _ok(rows, rid):
    row = rows[rid]
    assert row["status"] == "ok", f"{rid}: {row.get('reason')}"
    return row


def test_artifact_file_resolves_files_and_bundles(fixture):
    export = fixture["manifests"]["export"]
    bundle = artifact_file(export, "onnx_fp32")
    assert bundle == export.path_of("onnx_fp32") / "model_fp32.onnx" and bundle.is_file()
    assert artifact_file(export, "onnx_int8") == export.path_of("onnx_int8")
    assert artifact_file(export, "openvino_fp16").suffix == ".xml"
    with pytest.raises(KeyError, match="has no output 'tensorrt_fp16'"):
        artifact_file(export, "tensorrt_fp16")


def test_candidates_name_stage_precision_and_reference(fixture):
    cands = {c.name: c for c in candidates(fixture["manifests"])}
    assert list(cands)[:3] == ["teacher", "student", "pruned"]   # torch references first
    assert cands["onnx_int8"].stage == "quantize" and cands["onnx_int8"].precision == "int8"
    assert cands["openvino_fp16"].stage == "export" and cands["openvino_fp16"].format == Format.openvino
    assert all(c.reference == n for n, c in cands.items() if c.format == Format.torch)
    assert all(c.reference == "pruned" for c in cands.values() if c.format != Format.torch)
    assert cands["tensorrt_fp16"].unavailable == bench_fixture.TRT_REASON and cands["tensorrt_fp16"].path is None


def test_every_artifact_is_measured_on_every_cpu_runtime(fixture):
    rows = fixture["rows"]
    expected = ["teacher@torch/cpu/b1", "teacher@torch/cpu/b2", "student@torch/cpu/b1",
                "student@torch/cpu/b2", "pruned@torch/cpu/b1", "onnx_fp32@onnxruntime/cpu/b1",
                "onnx_fp32@openvino/cpu/b1",
                "onnx_int8@onnxruntime/cpu/b1", "onnx_int8@openvino/cpu/b1",
                "openvino_fp32@openvino/cpu/b1", "openvino_fp16@openvino/cpu/b1"]
    bench = fixture["cfg"].benchmark
    for rid in expected:
        row = _ok(rows, rid)
        assert 0 < row["min_ms"] <= row["p50_ms"] <= row["p90_ms"] <= row["p99_ms"] <= row["max_ms"]
        assert row["iterations"] >= bench.min_iterations and row["total_s"] >= bench.min_seconds
        assert row["throughput_ips"] == pytest.approx(row["batch"] / (row["mean_ms"] / 1e3))
        assert row["threads"] == 1 and row["peak_rss_mb"] > 0 and row["timer"] == "perf_counter_ns"
        assert "warm-up" in row["methodology"] and "Threads: 1" in row["methodology"]
    # Exported artifacts carry the counts of the torch model they came from.
    assert rows["onnx_int8@openvino/cpu/b1"]["params"] == rows["student@torch/cpu/b1"]["params"] > 0
    assert rows["onnx_int8@openvino/cpu/b1"]["macs"] == rows["student@torch/cpu/b1"]["macs"] > 0


def test_rows_are_timed_in_interleaved_rounds_each_runtime_in_its_process(fixture):
    bench = fixture["cfg"].benchmark
    ok = [r for r in fixture["list"] if r["status"] == "ok"]
    assert {len(r["rounds"]) for r in ok} == {bench.rounds} and len({r["rounds_id"] for r in ok}) == 1
    assert all(r["process"] == r["runtime"] for r in ok)      # one worker process per runtime
    for r in ok:                                              # pooled p50 lies among the rounds' p50
        p50s = [x["p50_ms"] for x in r["rounds"]]
        assert min(p50s) <= r["p50_ms"] * 1.0001 and r["p50_ms"] <= max(p50s) * 1.0001
    floor = fixture["floor"]
    assert floor["row"] == "onnx_fp32@onnxruntime/cpu/b1"
    assert floor["processes"] == ["onnxruntime", "onnxruntime (second process)"]
    assert len(floor["second"]["rounds"]) == bench.rounds and floor["p90"]["low"] <= floor["p90"]["high"]
    orders = floor["round_orders"]
    assert len(orders) == bench.rounds and len({tuple(o) for o in orders}) > 1   # shuffled per round
    assert all(sorted(o) == sorted([r["id"] for r in ok] + ["A/A second process"]) for o in orders)


def test_sizes_are_the_model_files_on_disk(fixture):
    rows, export = fixture["rows"], fixture["manifests"]["export"]
    onnx = artifact_file(export, "onnx_fp32")
    assert rows["onnx_fp32@onnxruntime/cpu/b1"]["size_bytes"] == onnx.stat().st_size
    xml = artifact_file(export, "openvino_fp16")
    assert rows["openvino_fp16@openvino/cpu/b1"]["size_bytes"] == (
        xml.stat().st_size + xml.with_suffix(".bin").stat().st_size)
    fp32, fp16 = (rows[f"openvino_{p}@openvino/cpu/b1"]["size_bytes"] for p in ("fp32", "fp16"))
    assert fp16 < 0.7 * fp32                                 # fp16 weights are half the bytes
    assert formats.get("onnx").size_bytes(onnx) == onnx.stat().st_size


def test_accuracy_matches_an_independent_scoring(fixture):
    """The row's top-1 equals ONNX Runtime's own scoring of the same val images."""
    from pipeline.data import load_splits
    rows, export = fixture["rows"], fixture["manifests"]["export"]
    row = _ok(rows, "onnx_int8@onnxruntime/cpu/b1")
    pre = export.outputs["onnx_int8"].preprocessing
    val = load_splits(fixture["cfg"].data).val
    n = fixture["cfg"].benchmark.accuracy_images
    import onnxruntime as ort
    session = ort.InferenceSession(str(artifact_file(export, "onnx_int8")), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    preds = [session.run(None, {name: pre(val.image(i))[None]})[0].argmax() for i in range(n)]
    expected = 100.0 * np.mean(np.asarray(preds) == np.asarray(val.targets[:n]))
    assert row["accuracy"] == pytest.approx(expected) and row["accuracy_images"] == n


def test_accuracy_and_agreement_across_runtimes(fixture):
    rows = fixture["rows"]
    student = _ok(rows, "pruned@torch/cpu/b1")
    assert student["accuracy"] > 70                          # far above chance (10 classes)
    assert student["agreement_reference"] == 100.0 and student["reference"] == "pruned"
    assert _ok(rows, "teacher@torch/cpu/b1")["agreement_teacher"] == 100.0
    for rid, floor in (("onnx_fp32@onnxruntime/cpu/b1", 99.0), ("onnx_fp32@openvino/cpu/b1", 99.0),
                       ("openvino_fp32@openvino/cpu/b1", 99.0), ("openvino_fp16@openvino/cpu/b1", 95.0)):
        row = _ok(rows, rid)
        assert row["agreement_reference"] >= floor, rid    # fp32/fp16 reproduce the torch student
        assert abs(row["accuracy"] - student["accuracy"]) <= 1.0, rid
        assert row["agreement_teacher"] < 95.0              # a different network than the teacher
    for rid in ("onnx_int8@onnxruntime/cpu/b1", "onnx_int8@openvino/cpu/b1"):
        assert _ok(rows, rid)["agreement_reference"] >= 80.0, rid
    teacher = _ok(rows, "teacher@torch/cpu/b1")
    assert teacher["accuracy_vs_teacher"] is None                    # the teacher is the reference
    for row in (r for r in rows.values() if r["status"] == "ok" and not r["id"].startswith("teacher@torch/cpu/")):
        vs = row["accuracy_vs_teacher"]                               # image by image vs the teacher
        assert vs["points"] == pytest.approx(row["accuracy"] - teacher["accuracy"], abs=1e-3), row["id"]
        assert vs["low"] <= vs["points"] <= vs["high"] and vs["images"] == row["accuracy_images"]


def test_openvino_precision_is_pinned_and_recorded(fixture):
    rows = fixture["rows"]
    for rid in ("openvino_fp32@openvino/cpu/b1", "onnx_int8@openvino/cpu/b1", "openvino_fp16@openvino/cpu/b1"):
        settings = rows[rid]["settings"]
        assert settings["requested_inference_precision"] in ("f32", "f16")
        assert settings["inference_precision_hint"] in ("f32", "f16"), settings
        assert settings["inference_num_threads"] == "1"
    assert rows["openvino_fp32@openvino/cpu/b1"]["settings"]["inference_precision_hint"] == "f32"


def test_fixed_batch_artifacts_say_how_to_get_other_batches(fixture):
    row = fixture["rows"]["onnx_fp32@onnxruntime/cpu/b2"]
    assert row["status"] == "unavailable"
    assert row["reason"] == "exported with a fixed batch of 1; set export.dynamic_batch: true to measure batch 2"


def test_tensorrt_not_built_here_is_a_row_with_the_export_reason(fixture):
    row = fixture["rows"][row_id("tensorrt_fp16", "tensorrt", "cuda", None)]
    assert row["status"] == "unavailable" and row["reason"] == bench_fixture.TRT_REASON
    assert row["stage"] == "export" and row["precision"] == "fp16"


@pytest.mark.skipif(CUDA_REASON is None, reason="a CUDA device is present: the GPU rows are measured")
def test_gpu_rows_say_why_they_are_unavailable(fixture):
    rows = fixture["rows"]
    for rid in ("teacher@torch/cuda/b-", "student@torch/cuda-graph/b-"):
        assert rows[rid]["status"] == "unavailable" and rows[rid]["reason"] == CUDA_REASON
    ort_reason = onnxruntime_runtime.unavailable("cuda")
    if ort_reason:
        assert rows["onnx_int8@onnxruntime/cuda/b-"]["reason"] == ort_reason
    assert tensorrt_runtime.unavailable("cuda") is not None


@pytest.mark.gpu
@pytest.mark.skipif(CUDA_REASON is not None, reason=f"needs a CUDA device: {CUDA_REASON}")
def test_gpu_rows_are_measured_with_cuda_events(fixture):
    rows = fixture["rows"]
    for rid in ("pruned@torch/cuda/b1", "pruned@torch/cuda-graph/b1"):
        row = _ok(rows, rid)
        assert row["timer"] == "cuda_events" and row["peak_gpu_mb"] > 0
        assert row["agreement_reference"] >= 99.0
    if onnxruntime_runtime.unavailable("cuda") is None:
        assert _ok(rows, "onnx_fp32@onnxruntime/cuda/b1")["agreement_reference"] >= 99.0


def test_benchmark_stage_writes_results_with_the_environment(fixture, tmp_path):
    from pipeline.stages.base import Context
    from pipeline.stages.benchmark import RESULTS, STAGE
    cfg = fixture["cfg"].model_copy(deep=True)
    cfg.benchmark.batch_sizes = [1]
    cfg.benchmark.runtimes = ["onnxruntime"]
    result = STAGE.run(Context(cfg, fixture["manifests"], tmp_path, tmp_path))
    data = json.loads((tmp_path / RESULTS).read_text())
    assert result.outputs["results"].format == Format.data
    assert {r["runtime"] for r in data["rows"]} == {"onnxruntime"}
    assert result.metrics["ok"] == 2 and result.metrics["ok"] + result.metrics["unavailable"] == len(data["rows"])
    env = data["environment"]
    assert env["threads"] == 1 and env["cpu"]["model"] and "onnxruntime" in env["packages"]
    assert STAGE.machine_dependent and STAGE.deps == ("finetune", "distill", "prune", "quantize", "export")


def test_environment_fingerprint_is_stable_and_machine_specific():
    from runtimes.environment import describe_environment, fingerprint, machine_fingerprint
    a, b = machine_fingerprint(), machine_fingerprint()
    assert a == b and a == fingerprint(describe_environment())
    a["cpu"]["model"] = "changed"                        # callers get a copy, not the cache
    assert machine_fingerprint()["cpu"]["model"] != "changed"
