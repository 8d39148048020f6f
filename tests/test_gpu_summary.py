"""The GPU check's summary (.ci/gpu_summary.py) from a synthetic store, logs and JUnit XML: every
number it reports, and the failures it lists."""
from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / ".ci"))
import gpu_summary  # noqa: E402


def _manifest(store: Path, stage: str, seconds: float, files: dict[str, object] = {},
              key: str = "0123456789ab", runtimes: list[str] = ()) -> None:
    entry = store / stage / key
    entry.mkdir(parents=True)
    (entry / "manifest.json").write_text(json.dumps(
        {"stage": stage, "params": {"benchmark": {"runtimes": list(runtimes)}} if runtimes else {},
         "timings": {"started": 100.0, "finished": 100.0 + seconds, "seconds": seconds}}))
    for name, content in files.items():
        (entry / name).write_text(json.dumps(content))


ROWS = [
    {"id": "teacher@torch/cpu/b1", "artifact": "teacher", "runtime": "torch", "device": "cpu", "batch": 1,
     "status": "ok", "p50_ms": 9.0, "p90_ms": 9.5, "accuracy": 97.0},
    {"id": "teacher@torch/cuda/b1", "artifact": "teacher", "precision": "fp32", "runtime": "torch",
     "device": "cuda", "batch": 1, "status": "ok", "p50_ms": 1.25, "p90_ms": 1.5, "accuracy": 97.0,
     "agreement_reference": 1.0, "compile_s": None, "reason": None},
    {"id": "student@torch/cuda-graph/b1", "artifact": "student", "runtime": "torch", "device": "cuda-graph",
     "batch": 1, "status": "ok", "p50_ms": 0.25, "p90_ms": 0.3, "accuracy": 95.5},
    {"id": "model_fp16@tensorrt/cuda/b-", "artifact": "model_fp16", "runtime": "tensorrt", "device": "cuda",
     "batch": None, "status": "unavailable", "reason": "tensorrt is not installed"},
    {"id": "student@torch/orin/cuda/b1", "artifact": "student", "runtime": "torch", "device": "orin/cuda",
     "batch": 1, "status": "ok", "p50_ms": 3.0, "p90_ms": 3.1, "accuracy": 95.0},
]

COMPILED = {"id": "student@torch_compile/cuda/b-", "artifact": "student", "runtime": "torch_compile",
            "device": "cuda", "batch": None, "status": "failed", "reason": "ParityError: differs\nline two"}

JUNIT = """<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest">
<testcase classname="tests.test_runtimes" name="test_torch_cuda_eager_and_graph_match_cpu" time="1.0"/>
<testcase classname="tests.test_benchmark" name="test_gpu_rows_are_measured_with_cuda_events" time="2.0">
<failure message="AssertionError: assert 'wall' == 'cuda events'">def test():
&gt;   assert row["timer"] == "cuda events"
E   AssertionError</failure></testcase>
<testcase classname="tests.test_export_tensorrt" name="test_build_engine_on_gpu[fp16]" time="0.0">
<skipped type="pytest.skip" message="tensorrt is not installed: pip install 'edgeship[tensorrt]'"/></testcase>
</testsuite></testsuites>"""

LOG = """finetune   running  key 1
finetune   done     key 1  in 4.0s
distill    running  key 2
distill    done     key 2  in 2.0s
prune      running  key 3
Traceback (most recent call last):
  File "x.py", line 1, in <module>
RuntimeError: Expected all tensors to be on the same device, cuda:0 and cpu
"""


def test_summary_reads_every_number_from_the_run(tmp_path):
    store, logs = tmp_path / "runs", tmp_path / "out"
    logs.mkdir()
    _manifest(store, "finetune", 4.0)
    _manifest(store, "distill", 2.5)
    _manifest(store, "benchmark", 10.0, {"results.json": {"rows": ROWS}}, "b2", ["torch", "tensorrt"])
    _manifest(store, "benchmark", 30.0, {"results.json": {"rows": [COMPILED]}}, "b1", ["torch_compile"])
    _manifest(store, "report", 0.5, {"report.json": {"headline": {"target": "cuda", "text": "x is 3.0x faster"}}})
    (logs / gpu_summary.TESTS_XML).write_text(JUNIT)
    (logs / gpu_summary.PIPELINE_LOG).write_text(LOG)
    record = {"recorded": "2025-01-01", "machine": "a 2-core CPU",
              "stages": {"finetune": 48.0, "distill": 5.0, "benchmark[torch_compile]": 60.0}}
    steps = {"pipeline": {"rc": 1, "log": gpu_summary.PIPELINE_LOG}, "torch_compile": {"rc": 0, "log": "tc.log"},
             "gpu_tests": {"rc": 1, "log": gpu_summary.TESTS_LOG}}
    s = gpu_summary.build({"gpus": [{"name": "H100"}]}, steps, store, logs, record, Path("rec.json"),
                          seconds=12.5)
    assert s["stages"] == [
        {"stage": "finetune", "cuda_s": 4.0, "cpu_s": 48.0, "cpu_over_cuda": 12.0},
        {"stage": "distill", "cuda_s": 2.5, "cpu_s": 5.0, "cpu_over_cuda": 2.0},
        {"stage": "benchmark", "cuda_s": 10.0, "cpu_s": None, "cpu_over_cuda": None},
        {"stage": "benchmark[torch_compile]", "cuda_s": 30.0, "cpu_s": 60.0, "cpu_over_cuda": 2.0},
        {"stage": "report", "cuda_s": 0.5, "cpu_s": None, "cpu_over_cuda": None}]
    assert s["cpu_record"] == {"path": "rec.json", "recorded": "2025-01-01", "machine": "a 2-core CPU"}
    assert [r["id"] for r in s["cuda_rows"]] == [ROWS[i]["id"] for i in (1, 2, 3)] + [COMPILED["id"]]
    assert (s["cuda_rows"][0]["p50_ms"], s["cuda_rows"][0]["p90_ms"], s["cuda_rows"][0]["accuracy"]) == (1.25, 1.5, 97.0)
    assert s["cuda_rows"][2]["reason"] == "tensorrt is not installed"
    assert s["rows"] == {"ok": 4, "unavailable": 1, "failed": 1}
    assert s["headline"]["text"] == "x is 3.0x faster"
    assert s["gpu_tests"]["passed"] == 1 and s["gpu_tests"]["failed"] == 1 and s["gpu_tests"]["skipped"] == 1
    assert s["gpu_tests"]["skips"][0]["reason"].startswith("tensorrt is not installed")
    assert [(f["where"], f["what"]) for f in s["failures"]] == [
        ("pipeline", "exit 1 in prune"), ("benchmark", "student@torch_compile/cuda/b-"),
        ("gpu tests", "tests.test_benchmark::test_gpu_rows_are_measured_with_cuda_events")]
    assert s["failures"][0]["lines"][0] == "Traceback (most recent call last):"
    assert s["failures"][0]["lines"][-1].startswith("RuntimeError: Expected all tensors")
    assert s["failures"][1]["lines"] == ["ParityError: differs", "line two"]
    assert s["failures"][2]["lines"][0] == "AssertionError: assert 'wall' == 'cuda events'"
    assert s["seconds"] == 12.5
    path = gpu_summary.write(s, logs)
    assert json.loads(path.read_text()) == json.loads(json.dumps(s))


def test_a_timed_out_step_is_a_failure_even_without_its_files(tmp_path):
    (tmp_path / gpu_summary.TESTS_LOG).write_text("collected 9 items\n[gpu_check: gpu tests killed at its 120 s timeout]\n")
    s = gpu_summary.build({}, {"pipeline": {"rc": 0, "log": "p.log"}, "torch_compile": {"rc": None, "skipped": "x"},
                               "gpu_tests": {"rc": None}}, tmp_path / "none",
                          tmp_path, None, Path("rec.json"))
    assert s["failures"] == [{"where": "gpu tests", "what": "timed out",
                              "lines": ["collected 9 items", "[gpu_check: gpu tests killed at its 120 s timeout]"]}]
    assert s["stages"] == [] and s["cuda_rows"] == [] and s["gpu_tests"] == {"ran": False}
    assert s["cpu_record"] == "none at rec.json: CPU times not compared"


def test_cuda_devices_are_this_machines_cuda_only():
    assert [gpu_summary.is_cuda(d) for d in ("cuda", "cuda:1", "cuda-graph", "cpu", "gpu.0", "orin/cuda")] == \
        [True, True, True, False, False, False]
