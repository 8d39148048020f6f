"""The GPU check's parts that need no GPU: the refusal on a CPU machine, the wheel list and its
size check, the install plan, the bounded child processes, the summary, and the GPU config."""
from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / ".ci"))
import gpu_check  # noqa: E402
import gpu_proc  # noqa: E402
import gpu_summary  # noqa: E402
import gpu_wheels  # noqa: E402

from pipeline.stage_order import STAGE_NAMES  # noqa: E402

PACKAGES = ("pipeline", "exporters", "runtimes", "calibration")


# ---------------------------------------------------------------- on a CPU machine

def test_no_cuda_device_is_one_line_and_exit_8(tmp_path):
    import torch
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: the check would run")
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, ".ci/gpu_check.py", "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == gpu_check.UNAVAILABLE == 8
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("gpu_check: no CUDA device: torch ")
    assert lines[0].endswith("run it on a machine with an NVIDIA GPU (README: Checking the GPU paths)")
    assert not out.exists()                    # nothing written, nothing installed


def test_out_is_required():
    with pytest.raises(SystemExit) as caught:
        gpu_check.main([])
    assert caught.value.code == 2


# ---------------------------------------------------------------- the wheel list

def _third_party_imports() -> set[str]:
    """Top-level modules the four packages import (inside functions too), outside the project
    and the standard library."""
    names = set()
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    names.update(a.name.split(".")[0] for a in node.names)
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - set(PACKAGES)


def test_every_import_is_in_the_image_carried_or_optional():
    from importlib.metadata import packages_distributions
    dists = packages_distributions()
    carried = {w.name for w in gpu_wheels.read_list()}
    allowed = carried | set(gpu_wheels.IMAGE) | set(gpu_wheels.OPTIONAL)
    missing = {}
    for module in _third_party_imports():
        names = {gpu_wheels.normalise(d) for d in dists.get(module, [module])}
        if not names & allowed:
            missing[module] = sorted(names)
    assert missing == {}
    assert {"pydantic", "pydantic-core", "torch-pruning"} <= carried


def test_the_list_pins_the_gpu_configs_weights_and_what_pydantic_needs():
    from pipeline.config_load import load_config
    from pipeline.models.packaged import PACKAGED
    wheels = {w.name: w for w in gpu_wheels.read_list()}
    cfg = load_config(ROOT / "tests" / "configs" / "gpu.yaml")
    for backbone, weights in ((cfg.finetune.backbone, cfg.finetune.weights),
                              (cfg.distill.student, cfg.distill.weights)):
        assert weights == "pretrained"
        assert wheels[gpu_wheels.normalise(PACKAGED[backbone][0])].when == "always"
    assert all(wheels[n].when == "always" for n in ("pydantic", "pydantic-core", "annotated-types",
                                                   "typing-inspection", "typing-extensions"))
    assert "openvino" not in wheels and "tensorrt" not in wheels and len(wheels) == 13
    # pydantic pins its core exactly: where this venv holds the listed pydantic, its pin is the list's
    from importlib.metadata import requires, version
    if version("pydantic") == wheels["pydantic"].version:
        assert f"pydantic-core=={wheels['pydantic-core'].version}" in requires("pydantic")


def test_list_lines_are_checked(tmp_path):
    path = tmp_path / "list.txt"
    path.write_text("# c\npydantic==2.0  always\nTqdm==4.0 if-missing  # why\n")
    assert gpu_wheels.read_list(path) == [gpu_wheels.Wheel("pydantic", "2.0", "always"),
                                          gpu_wheels.Wheel("tqdm", "4.0", "if-missing")]
    path.write_text("pydantic==2.0 sometimes\n")
    with pytest.raises(gpu_wheels.WheelError, match=r"list.txt:1: 'pydantic==2.0 sometimes' is not "):
        gpu_wheels.read_list(path)
    path.write_text("pydantic==2.0\npydantic==2.1\n")
    with pytest.raises(gpu_wheels.WheelError, match=r"list.txt:2: pydantic is listed twice"):
        gpu_wheels.read_list(path)


# ---------------------------------------------------------------- the size check

WHEELS = [gpu_wheels.Wheel("pydantic-core", "2.50.5", "always"),
          gpu_wheels.Wheel("tqdm", "4.70.1", "if-missing")]


def _folder(tmp_path, sizes: dict[str, int]) -> Path:
    folder = tmp_path / "wheels"
    folder.mkdir()
    for name, size in sizes.items():
        with open(folder / name, "wb") as f:
            f.truncate(size)     # sparse: the size check reads sizes, not content
    return folder


CORE = "pydantic_core-2.50.5-cp312-cp312-manylinux2014_x86_64.whl"
TQDM = "tqdm-4.70.1-py3-none-any.whl"


def test_size_check_passes_under_the_limit_and_names_the_total_over_it(tmp_path):
    folder = _folder(tmp_path, {CORE: 40 * 2**20, TQDM: 15 * 2**20})
    found = gpu_wheels.check(folder, WHEELS)
    assert {w.name: p.name for w, p in found.items()} == {"pydantic-core": CORE, "tqdm": TQDM}
    assert gpu_wheels.total_bytes(folder) == 55 * 2**20
    (folder / "notes.txt").write_bytes(b"x" * (6 * 2**20))   # anything in the folder travels
    with pytest.raises(gpu_wheels.WheelError) as caught:
        gpu_wheels.check(folder, WHEELS)
    assert str(caught.value).startswith(f"{folder} holds 61.0 MiB, over the 60 MiB that may travel")
    assert gpu_wheels.LIMIT_BYTES == 60 * 2**20


def test_missing_and_stray_wheels_are_named_with_the_fix(tmp_path):
    folder = _folder(tmp_path, {CORE: 10})
    with pytest.raises(gpu_wheels.WheelError, match=r"lacks tqdm==4\.70\.1; run `python3 \.ci/gpu_wheels\.py download`"):
        gpu_wheels.check(folder, WHEELS)
    (folder / TQDM).write_bytes(b"")
    (folder / "tqdm-4.60.0-py3-none-any.whl").write_bytes(b"")
    with pytest.raises(gpu_wheels.WheelError, match=r"does not list: tqdm-4\.60\.0-py3-none-any\.whl; remove"):
        gpu_wheels.check(folder, WHEELS)
    with pytest.raises(gpu_wheels.WheelError, match=r"does not exist; run"):
        gpu_wheels.check(tmp_path / "nowhere", WHEELS)


def test_install_plan_keeps_what_the_image_has_for_if_missing_wheels(tmp_path):
    found = {w: tmp_path / f"{w.name}.whl" for w in WHEELS}
    plan = gpu_wheels.to_install(found, have={"pydantic-core": "2.0.0", "tqdm": "4.66.0"}.get)
    assert plan["pydantic-core"]["installed"] and plan["pydantic-core"]["image_version"] == "2.0.0"
    assert not plan["tqdm"]["installed"] and plan["tqdm"]["why"] == "the image has 4.66.0"
    plan = gpu_wheels.to_install(found, have=lambda name: None)
    assert plan["tqdm"]["installed"] and plan["tqdm"]["why"] == "the image has none"


def _wheel(folder: Path, name: str, version: str) -> Path:
    """A minimal pure-Python wheel holding module `name` (VALUE = version)."""
    path = folder / f"{name}-{version}-py3-none-any.whl"
    info = f"{name}-{version}.dist-info"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{name}.py", f"VALUE = {version!r}\n")
        z.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        z.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{info}/RECORD", "")
    return path


def test_install_puts_wheels_in_the_target_without_an_index(tmp_path):
    folder = tmp_path / "wheels"
    folder.mkdir()
    wheels = [gpu_wheels.Wheel("edgeship-probe-a", "1.0", "always"),
              gpu_wheels.Wheel("edgeship-probe-b", "2.0", "if-missing")]
    _wheel(folder, "edgeship_probe_a", "1.0")
    _wheel(folder, "edgeship_probe_b", "2.0")
    found = gpu_wheels.check(folder, wheels)
    plan = gpu_wheels.install(found, tmp_path / "site", have={"edgeship-probe-b": "1.5"}.get)
    assert [n for n, p in plan.items() if p["installed"]] == ["edgeship-probe-a"]
    assert (tmp_path / "site" / "edgeship_probe_a.py").read_text() == "VALUE = '1.0'\n"
    assert not (tmp_path / "site" / "edgeship_probe_b.py").exists()


# ---------------------------------------------------------------- child processes

ESCAPE = """
import subprocess, sys, time
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
time.sleep(float(sys.argv[1]))
"""


def test_a_step_past_its_timeout_is_killed_and_escaped_children_are_swept(tmp_path):
    token = gpu_proc.new_token()
    env = {**os.environ, gpu_proc.TOKEN_VAR: token}
    t0 = time.monotonic()
    step = gpu_proc.run_bounded("sleeper", [sys.executable, "-c", ESCAPE, "60"], 2, tmp_path / "log",
                                env, tmp_path)
    assert step.timed_out and step.rc is None and 2 <= step.seconds < 2 + gpu_proc.GRACE_S + 3
    assert time.monotonic() - t0 < 15
    assert "killed at its 2 s timeout" in (tmp_path / "log").read_text()
    escaped = gpu_proc.holders(token)
    assert len(escaped) == 1               # its own session: the group kill did not reach it
    assert gpu_proc.sweep(token) == escaped
    deadline = time.monotonic() + 5
    while gpu_proc.holders(token) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert gpu_proc.holders(token) == []


def test_a_step_that_ends_keeps_its_exit_code(tmp_path):
    step = gpu_proc.run_bounded("ok", [sys.executable, "-c", "print('hi'); raise SystemExit(3)"], 30,
                                tmp_path / "log", dict(os.environ), tmp_path)
    assert step.rc == 3 and not step.timed_out and not step.ok
    assert (tmp_path / "log").read_text() == "hi\n"
    assert step.record()["timed_out"] is False and step.record()["log"] == "log"


# ---------------------------------------------------------------- the summary

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


# ---------------------------------------------------------------- the config and the record

def test_gpu_config_validates_on_cuda_and_with_the_cpu_settings():
    from pipeline.config_load import load_config
    cfg = load_config(ROOT / "tests" / "configs" / "gpu.yaml")
    assert (cfg.run.device.value, cfg.prune.budget_device, cfg.benchmark.target) == ("cuda", "cuda", "cuda")
    assert {r.value for r in cfg.benchmark.runtimes} == {"torch", "onnxruntime", "openvino", "tensorrt"}
    compiled = load_config(ROOT / "tests" / "configs" / "gpu.yaml", list(gpu_check.PASSES[1][2][1:]))
    assert [r.value for r in compiled.benchmark.runtimes] == ["torch_compile"]
    assert gpu_check.PASSES[1][2][0] == "benchmark" and compiled.benchmark.batch_sizes == [1]
    assert cfg.data.kind.value == "digits" and cfg.benchmark.cuda
    cpu = load_config(ROOT / "tests" / "configs" / "gpu.yaml", list(gpu_check.CPU_SETTINGS))
    assert (cpu.run.device.value, cpu.prune.budget_device, cpu.benchmark.target) == ("cpu", "cpu", "cpu")


def test_the_cpu_record_covers_every_stage():
    record = gpu_summary.read_record(gpu_check.RECORD)
    assert record is not None, f"{gpu_check.RECORD}: run python .ci/gpu_check.py --record-cpu {gpu_check.RECORD}"
    assert list(record["stages"]) == [*STAGE_NAMES[:6], "benchmark[torch_compile]", *STAGE_NAMES[6:]]
    assert all(s > 0 for s in record["stages"].values())
    assert record["settings"] == list(gpu_check.CPU_SETTINGS)


def test_the_cpu_record_runs_without_what_the_gpu_image_lacks(tmp_path):
    folder = gpu_check.hiding(tmp_path / "hide", ("json", "edgeship_absent"))
    code = "import importlib.util, sys\ntry:\n    import json\nexcept ModuleNotFoundError:\n    print('hidden')\n" \
           "print(importlib.util.find_spec('json'), sys.version_info.major)"
    done = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(folder)},
                          capture_output=True, text=True, timeout=60)
    assert done.stdout.split() == ["hidden", "None", "3"], done.stderr
    assert gpu_check.NOT_ON_GPU == ("openvino", "nncf")


def test_the_gpu_tests_are_the_files_marking_tests_gpu():
    files = gpu_check.gpu_test_files()
    assert {"tests/test_cudart.py", "tests/test_runtimes.py", "tests/test_benchmark.py",
            "tests/test_export_tensorrt.py"} <= set(files)
    assert "tests/test_gpu_check.py" not in files
