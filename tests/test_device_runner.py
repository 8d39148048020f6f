"""The device runner: Python 3.8 syntax, a run from a work folder holding only runtimes/ (no torch,
pipeline, exporters, calibration or onnx importable), and the telemetry parsers."""
from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from calibration.preprocess import Preprocessing
from exporters.bundle import seal, write_bundle
from runtimes import telemetry
from runtimes.execution import open_model
from runtimes.tensorrt_build import engine_cache_key

ROOT = Path(__file__).resolve().parents[1]
LABELS = ("a", "b", "c", "d")
PRE = Preprocessing(4, (0.5,) * 3, (0.25,) * 3, labels=LABELS)
RNG = np.random.default_rng(11)
W = RNG.standard_normal((48, 4)).astype(np.float32)
B = RNG.standard_normal(4).astype(np.float32)
BLOCKED = ("torch", "pipeline", "exporters", "calibration", "onnx")
# Runs the runner as `python3 -m runtimes.device_runner` would, with the packages a device lacks
# made unimportable, then proves `runtimes` came from the work folder.
WRAPPER = """
import os, runpy, sys
BLOCKED = {blocked!r}
class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError("No module named %r (blocked: not on the device)" % name)
        return None
sys.meta_path.insert(0, Blocker())
sys.argv[0] = "device_runner"
try:
    runpy.run_module("runtimes.device_runner", run_name="__main__")
except SystemExit as done:
    import runtimes
    here = os.path.realpath(os.getcwd())
    if not os.path.realpath(runtimes.__file__).startswith(here):
        sys.exit("runtimes imported from %s, not the work folder" % runtimes.__file__)
    leaked = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    if leaked:
        sys.exit("imported %s" % leaked)
    raise
"""


# ---- Python 3.8 -------------------------------------------------------------------------------

_GENERICS = {"list", "dict", "tuple", "set", "frozenset", "type"}
_UNION_NAMES = {"None", "int", "float", "str", "bool", "bytes", "dict", "list", "tuple", "Path"}


def _py38_problems(path: Path) -> list[str]:
    """Syntax a 3.8 interpreter rejects, and 3.9+ constructs evaluated at run time."""
    src = path.read_text()
    tree = ast.parse(src, filename=str(path), feature_version=(3, 8))
    annotations = set()
    for node in ast.walk(tree):
        for ann in ([getattr(node, "returns", None), getattr(node, "annotation", None)]):
            if ann is not None:
                annotations.update(id(n) for n in ast.walk(ann))
    future = any(isinstance(n, ast.ImportFrom) and n.module == "__future__" and
                 any(a.name == "annotations" for a in n.names) for n in tree.body)
    problems = []
    for node in ast.walk(tree):
        where = f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', '?')}"
        in_annotation = id(node) in annotations
        if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) and node.value.id in _GENERICS:
            if not in_annotation or not future:
                problems.append(f"{where}: {node.value.id}[...] needs Python 3.9")
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
            sides = [s.id if isinstance(s, ast.Name) else ("None" if isinstance(s, ast.Constant) and s.value is None
                                                            else "") for s in (node.left, node.right)]
            if any(s in _UNION_NAMES for s in sides) and (not in_annotation or not future):
                problems.append(f"{where}: X | Y union needs Python 3.10")
        if isinstance(node, ast.Attribute) and node.attr in ("removeprefix", "removesuffix", "is_relative_to"):
            problems.append(f"{where}: .{node.attr} needs Python 3.9")
        if isinstance(node, ast.ImportFrom) and node.module == "functools" and any(a.name == "cache" for a in node.names):
            problems.append(f"{where}: functools.cache needs Python 3.9")
        if (isinstance(node, ast.Attribute) and node.attr == "cache" and isinstance(node.value, ast.Name)
                and node.value.id == "functools"):
            problems.append(f"{where}: functools.cache needs Python 3.9")
    return problems


def _device_files() -> list[Path]:
    """Every runtimes/ module the runner imports, found by importing it in a fresh interpreter
    (with the modules it imports only when a row needs them: each runtime, the statistics)."""
    code = ("import sys, runtimes.device_runner, runtimes.tensorrt_build, runtimes.telemetry, "
            "runtimes.openvino_runtime, runtimes.onnxruntime_runtime, runtimes.stats;"
            "print('\\n'.join(sorted(m.__file__ for n, m in sys.modules.items() "
            "if n.split('.')[0] == 'runtimes' and getattr(m, '__file__', None))))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return [Path(p) for p in out.stdout.split()]


def test_every_file_the_device_needs_is_python38():
    files = _device_files()
    names = {p.name for p in files}
    assert {"device_runner.py", "bundle_check.py", "parity.py", "telemetry.py", "tensorrt_build.py",
            "harness.py", "execution.py", "onnxruntime_runtime.py", "environment.py", "tensorrt_runtime.py",
            "tensorrt_buffers.py", "cudart.py", "openvino_runtime.py", "stats.py"} <= names
    problems = [p for f in files for p in _py38_problems(f)]
    assert not problems, "\n".join(problems)


def test_the_py38_check_catches_what_it_should(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    bad = tmp_path / "bad.py"
    bad.write_text("import os\nX = list[int]\nY = int | None\nZ = 'a'.removeprefix('a')\n"
                   "def f(a: int | None) -> dict[str, int]:\n    return {}\n")
    found = _py38_problems(bad)
    assert len(found) == 5, found  # no __future__ import: the annotations are evaluated too
    bad.write_text("match = 1\nmatch match:\n    case 1:\n        pass\n")
    with pytest.raises(SyntaxError):
        _py38_problems(bad)


# ---- the runner on a device copy --------------------------------------------------------------

def _model(path: Path) -> Path:
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["input"], ["flat"]), helper.make_node("Gemm", ["flat", "W", "B"], ["logits"])],
        "linear", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 4, 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])],
        [numpy_helper.from_array(W, "W"), numpy_helper.from_array(B, "B")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    return path


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A work folder as the SSH transport lays it out: runtimes/ copy, bundles, val, request."""
    root = tmp_path_factory.mktemp("device")
    work = root / "work"
    shutil.copytree(ROOT / "runtimes", work / "runtimes", ignore=shutil.ignore_patterns("__pycache__"))
    golden_in = RNG.standard_normal((16, 3, 4, 4)).astype(np.float32)
    golden_out = golden_in.reshape(16, -1) @ W + B
    src = _model(root / "model.onnx")
    good = write_bundle(src, work / "bundles" / "abc" / "onnx_fp32", PRE, "fp32", {"onnx": "1" * 64},
                        golden_in, golden_out, runtime="onnxruntime")
    tampered = work / "bundles" / "def" / "onnx_fp32"
    shutil.copytree(good, tampered)
    model = tampered / "model.onnx"
    model.write_bytes(model.read_bytes()[:-4] + b"\x00\x00\x00\x00")
    images = RNG.standard_normal((40, 3, 4, 4)).astype(np.float32)
    # Labels agree with the model on some images only, so accuracy is neither 0 nor 100.
    labels = (images.reshape(40, -1) @ W + B).argmax(axis=1)
    labels[::3] = (labels[::3] + 1) % 4
    (work / "val").mkdir()
    np.savez(work / "val" / "abc.npz", images=images, labels=labels.astype(np.int64))
    item = {"name": "onnx_fp32", "bundle": "bundles/abc/onnx_fp32", "model_sha256": seal(good),
            "runtime": "onnxruntime", "device": "cpu", "precision": "fp32", "val": "val/abc.npz"}
    request = {"version": 1, "batch_sizes": [1, 4], "warmup": 2, "min_iterations": 5, "min_seconds": 0.05,
               "threads": 1, "telemetry": True,
               "tensorrt": {"engine_cache": "engines", "timing_cache": "engines/timing.cache",
                            "optimization_level": 3, "workspace_mb": 256},
               "items": [item,
                         dict(item, name="tampered", bundle="bundles/def/onnx_fp32"),
                         dict(item, name="trt", runtime="tensorrt", device="cuda")]}
    (work / "request.json").write_text(json.dumps(request))
    return work


def _run_device(work: Path, request: str = "request.json"):
    cmd = [sys.executable, "-c", WRAPPER.format(blocked=BLOCKED), "--request", request, "--out", "out/result.json"]
    return subprocess.run(cmd, cwd=work, capture_output=True, text=True, timeout=300,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(work)})


@pytest.fixture(scope="module")
def result(work):
    proc = _run_device(work)
    assert proc.returncode == 0, proc.stderr
    return json.loads((work / "out" / "result.json").read_text())


def test_runner_scores_times_and_checks_the_bundle(result, work):
    assert result["version"] == 1 and result["runner_python"] == ".".join(map(str, sys.version_info[:3]))
    ok = result["items"][0]
    assert ok["status"] == "ok" and ok["reason"] is None, ok["reason"]
    assert ok["runtime"] == "onnxruntime" and ok["runtime_version"] and ok["device"] == "cpu"
    assert ok["bundle_check"]["passed"] is True and ok["bundle_check"]["n_samples"] == 16
    assert ok["bundle_check"]["max_abs_diff"] < 1e-3
    with np.load(work / "val" / "abc.npz") as val:
        local = open_model(work / "bundles/abc/onnx_fp32/model.onnx", "onnx").run(val["images"])
        expected = float(np.mean(local.argmax(axis=1) == val["labels"]) * 100.0)
    assert 0 < expected < 100 and ok["accuracy"] == expected and ok["accuracy_images"] == 40
    assert ok["load_s"] > 0 and ok["first_inference_ms"] > 0 and ok["build"] is None
    assert [r["batch"] for r in ok["rows"]] == [1, 4]
    for row in ok["rows"]:
        assert 0 < row["p50_ms"] <= row["p90_ms"] <= row["p99_ms"] and row["iterations"] >= 5
        assert row["batch_size"] == row["batch"]
        assert set(row) >= {"energy_mj", "mean_power_w", "idle_power_w", "throttled", "telemetry_summary"}
        assert row["energy_mj"] is None  # no power rails off a Jetson


def test_tampered_bundle_fails_alone_and_missing_runtime_is_unavailable(result):
    tampered, trt = result["items"][1], result["items"][2]
    assert tampered["status"] == "failed" and tampered["rows"] == [] and tampered["accuracy"] is None
    assert tampered["reason"].startswith("BundleError: bundle file bundles/def/onnx_fp32/model.onnx has sha256 ")
    assert tampered["reason"].endswith("the file was changed or damaged; re-copy the bundle")
    assert trt["status"] == "unavailable" and trt["rows"] == []
    assert "tensorrt is not installed: pip install 'edgeship[tensorrt]'" in trt["reason"]


def test_result_records_the_device(result):
    env = result["environment"]
    assert len(result["fingerprint"]) == 64 and int(result["fingerprint"], 16) >= 0
    assert len(env["load_average"]["before"]) == 3 and len(env["load_average"]["after"]) == 3
    assert env["cpu"]["model"] and "thermal_c" in env and env["packages"]["onnxruntime"]
    assert env["packages"]["torch"] is None or env["cuda"] is None  # torch was not importable there


def test_bad_request_exits_2_with_one_line(work):
    (work / "bad.json").write_text(json.dumps({"version": 1, "items": [{"name": "x"}]}))
    proc = _run_device(work, "bad.json")
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("device_runner: request bad.json: items[0] lacks string field(s) "
                                   "bundle, runtime, val")
    (work / "bad.json").write_text(json.dumps({"version": 2, "items": []}))
    proc = _run_device(work, "bad.json")
    assert proc.returncode == 2 and "'version' must be 1, got 2" in proc.stderr


# ---- telemetry --------------------------------------------------------------------------------

JP4_NANO = ("RAM 1766/3964MB (lfb 197x4MB) SWAP 0/2048MB (cached 0MB) CPU [24%@1224,15%@1224,13%@1224,10%@1224] "
            "EMC_FREQ 0%@1600 GR3D_FREQ 0%@921 PLL@21C CPU@25C PMIC@100C GPU@23.5C AO@33.5C thermal@24.5C "
            "POM_5V_IN 2545/2547 POM_5V_GPU 0/0 POM_5V_CPU 549/529")
JP4_AGX_XAVIER = ("RAM 2441/15817MB (lfb 2931x4MB) SWAP 0/7908MB (cached 0MB) CPU [2%@1190,1%@1190,off,off,off,off,"
                  "off,off] EMC_FREQ 0%@2133 GR3D_FREQ 0%@1377 APE 150 MTS fg 0% bg 0% AO@35.5C GPU@36C "
                  "Tdiode@38.25C PMIC@100C AUX@35C CPU@37C thermal@36.4C Tboard@35C GPU 0/0 CPU 155/155 "
                  "SOC 1243/1243 CV 0/0 VDDRQ 310/310 SYS5V 1946/1946")
JP5_XAVIER_NX = ("12-23-2023 10:00:01 RAM 2000/7600MB (lfb 400x4MB) SWAP 0/3800MB (cached 0MB) CPU [10%@1190,"
                 "5%@1190,off,off,off,off] EMC_FREQ 0%@1600 GR3D_FREQ 0%@[510] VIC_FREQ 115 APE 150 AUX@30C "
                 "CPU@32.5C thermal@31.5C AO@31C GPU@30.5C iwlwifi@-256C PMIC@50C VDD_IN 5001mW/5001mW "
                 "VDD_CPU_GPU_CV 798mW/798mW VDD_SOC 1515mW/1515mW")
JP6_ORIN_NANO = ("12-23-2024 22:54:11 RAM 3162/7620MB (lfb 4x2MB) SWAP 0/3810MB (cached 0MB) CPU [1%@729,0%@729,"
                 "0%@729,0%@729,off,off] EMC_FREQ 0%@2133 GR3D_FREQ 1%@[305,0] cpu@62.843C soc2@61.968C "
                 "soc0@60.625C gpu@61.687C tj@62.843C soc1@61.687C VDD_IN 3913mW/3922mW VDD_CPU_GPU_CV 598mW/598mW "
                 "VDD_SOC 1238mW/1237mW")


@pytest.mark.parametrize("line, rails, input_mw, temps, gpu, emc, cpu", [
    (JP4_NANO, {"POM_5V_IN": 2545, "POM_5V_GPU": 0, "POM_5V_CPU": 549}, 2545,
     {"PLL": 21, "CPU": 25, "GPU": 23.5, "AO": 33.5, "thermal": 24.5}, 921, 1600, 1224),
    (JP4_AGX_XAVIER, {"GPU": 0, "CPU": 155, "SOC": 1243, "CV": 0, "VDDRQ": 310, "SYS5V": 1946}, 3654,
     {"AO": 35.5, "GPU": 36, "Tdiode": 38.25, "AUX": 35, "CPU": 37, "thermal": 36.4, "Tboard": 35}, 1377, 2133, 1190),
    (JP5_XAVIER_NX, {"VDD_IN": 5001, "VDD_CPU_GPU_CV": 798, "VDD_SOC": 1515}, 5001,
     {"AUX": 30, "CPU": 32.5, "thermal": 31.5, "AO": 31, "GPU": 30.5}, 510, 1600, 1190),
    (JP6_ORIN_NANO, {"VDD_IN": 3913, "VDD_CPU_GPU_CV": 598, "VDD_SOC": 1238}, 3913,
     {"cpu": 62.843, "soc2": 61.968, "soc0": 60.625, "gpu": 61.687, "tj": 62.843, "soc1": 61.687}, 305, 2133, 729),
], ids=["jp4-nano", "jp4-agx-xavier", "jp5-xavier-nx", "jp6-orin-nano"])
def test_tegrastats_lines_of_each_jetpack(line, rails, input_mw, temps, gpu, emc, cpu):
    s = telemetry.parse_tegrastats(line, t=1.5)
    assert s.t == 1.5 and s.power_mw == rails and s.input_power_mw() == input_mw
    assert s.temps_c == temps  # PMIC's constant and absent sensors (-256C) left out
    assert (s.gpu_mhz, s.emc_mhz, s.cpu_mhz) == (gpu, emc, cpu)
    assert telemetry.parse_tegrastats("") is None and telemetry.parse_tegrastats("tegrastats: started") is None


def _trace(start: float, n: int, mw, gpu_mhz=1300, temp=50.0) -> list:
    lines = [f"RAM 1/2MB CPU [5%@1500] GR3D_FREQ 90%@[{gpu_mhz if isinstance(gpu_mhz, int) else gpu_mhz[i]}] "
             f"gpu@{temp}C VDD_IN {int(mw[i])}mW/{int(mw[i])}mW VDD_SOC 900mW/900mW" for i in range(n)]
    return [telemetry.parse_tegrastats(line, start + 0.1 * i) for i, line in enumerate(lines)]


def test_energy_of_a_synthetic_trace_within_one_percent():
    noise = np.random.default_rng(3)
    idle = _trace(0.0, 10, 2000 + noise.normal(0, 30, 10))
    run = _trace(1.0, 30, 6500 + noise.normal(0, 30, 30))
    # 30 samples at 100 ms: 3.0 s for 300 inferences, 4.5 W above idle -> 45 mJ per inference.
    out = telemetry.summarize(idle, run, run_seconds=3.0, inferences=300)
    assert out["energy_mj"] == pytest.approx(45.0, rel=0.01)
    assert out["mean_power_w"] == pytest.approx(6.5, rel=0.01) and out["idle_power_w"] == pytest.approx(2.0, rel=0.01)
    assert out["throttled"] is False and out["telemetry_summary"]["samples"] == 30
    assert out["telemetry_summary"]["gpu_mhz"] == {"first": 1300, "min": 1300, "max": 1300}
    assert telemetry.summarize([], run, 3.0, 300)["energy_mj"] is None  # no idle reading, no energy


def test_clock_drop_and_heat_are_flagged_as_throttling():
    drop = [1300] * 10 + [600] * 3 + [1300] * 5
    out = telemetry.summarize([], _trace(0.0, 18, [5000] * 18, gpu_mhz=drop), 1.8, 100)
    assert out["throttled"] is True
    assert out["telemetry_summary"]["throttle_reason"] == "GPU clock fell to 600 MHz from 1300 MHz"
    blip = [1300] * 10 + [600] + [1300] * 5           # one low sample is DVFS noise, not throttling
    assert telemetry.summarize([], _trace(0.0, 16, [5000] * 16, gpu_mhz=blip), 1.6, 100)["throttled"] is False
    hot = telemetry.summarize([], _trace(0.0, 5, [5000] * 5, temp=97.5), 0.5, 10, temp_limit_c=95.0)
    assert hot["throttled"] is True and "gpu reached 97.5 C" in hot["telemetry_summary"]["throttle_reason"]
    assert telemetry.summarize([], [], 1.0, 10)["throttled"] is None


def test_jetson_release_and_power_mode_parsing():
    text = "# R35 (release), REVISION: 4.1, GCID: 33958178, BOARD: t186ref, EABI: aarch64, DATE: Tue Aug  1 19:57:35 UTC 2023"
    assert telemetry.parse_l4t_release(text) == "R35.4.1"
    assert telemetry.parse_l4t_release("# R32 (release), REVISION: 7.1, GCID: 29818004") == "R32.7.1"
    assert telemetry.parse_l4t_release(None) is None
    assert telemetry.parse_power_mode("NV Power Mode: MAXN\n0") == "MAXN (0)"
    assert telemetry.parse_power_mode("NVPM WARN: fan mode is not set!\nNV Power Mode: 15W\n2") == "15W (2)"


def test_engine_key_holds_the_l4t_release():
    args = dict(onnx_sha256="ab" * 32, trt_version="8.5.2", gpu_name="Orin", compute_capability=(8, 7),
                precision="int8", options={"optimization_level": 3})
    plain = engine_cache_key(**args)
    assert engine_cache_key(**args, l4t_release=None) == plain
    assert len({plain, engine_cache_key(**args, l4t_release="R35.4.1"),
                engine_cache_key(**args, l4t_release="R36.3.0")}) == 3


def test_device_engine_build_is_cached_by_key(tmp_path, monkeypatch):
    from runtimes import tensorrt_build
    builds = []

    def fake_build(onnx_path, engine_path, precision, level, workspace, timing, opt, top):
        builds.append((precision, level, workspace, timing, opt, top))
        Path(engine_path).write_bytes(b"engine built from " + Path(onnx_path).read_bytes())

    monkeypatch.setattr(tensorrt_build, "build_engine", fake_build)
    monkeypatch.setattr(tensorrt_build, "gpu_target", lambda: {"tensorrt": "10.3.0", "gpu": "Orin",
                                                               "compute_capability": "8.7"})
    monkeypatch.setattr(telemetry, "l4t_release", lambda: "R36.3.0")
    onnx_file = tmp_path / "m.onnx"
    onnx_file.write_bytes(b"onnx")
    settings = {"engine_cache": str(tmp_path / "engines"), "timing_cache": str(tmp_path / "engines/t.cache"),
                "optimization_level": 4, "workspace_mb": 512}
    first = tensorrt_build.build_on_device(onnx_file, "ab" * 32, "int8", tmp_path / "a.engine", settings, 4, 4, True)
    again = tensorrt_build.build_on_device(onnx_file, "ab" * 32, "int8", tmp_path / "b.engine", settings, 4, 4, True)
    assert (first["cache"], again["cache"]) == ("miss", "hit") and first["key"] == again["key"]
    assert builds == [("int8", 4, 512, tmp_path / "engines/t.cache", 4, 4)]
    assert (tmp_path / "b.engine").read_bytes() == b"engine built from onnx"
    assert first["l4t_release"] == "R36.3.0" and first["options"]["max_batch_size"] == 4
    other = tensorrt_build.build_on_device(onnx_file, "ab" * 32, "int8", tmp_path / "c.engine",
                                           dict(settings, workspace_mb=1024), 4, 4, True)
    assert other["cache"] == "miss" and other["key"] != first["key"] and len(builds) == 2


def test_tensorrt_reason_on_a_device_without_torch_is_the_runtime_s_own(result):
    from runtimes import tensorrt_runtime
    trt = result["items"][2]
    # Without torch the runner adds nothing: the reason names what is missing (here TensorRT
    # itself; past that, libcudart or a GPU: tests/test_cudart.py checks those words).
    assert trt["status"] == "unavailable" and trt["reason"] == tensorrt_runtime.unavailable("cuda")
    assert "torch" not in trt["reason"]
