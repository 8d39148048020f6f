"""The onnxruntime_perf_test fidelity check: output parsing, finding the tool, the settings both
tools get, the command's plumbing, and one real run where a real onnxruntime_perf_test exists."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from runtimes import onnxruntime_runtime
from runtimes.fidelity_onnxruntime import (ENV_VAR, TOOL, applied_settings, find_perf_test,
                                           flag_settings, parse_perf_test, perf_test_flags)
from runtimes.fidelity_rounds import CannotMeasure

ROOT = Path(__file__).resolve().parents[1]

# The console output of `onnxruntime_perf_test -e cpu -x 2 -y 1 -o 99 -m duration -t 2 -s
# model.onnx result.txt`, written line for line from the format of
# onnxruntime/test/perftest/performance_runner.cc in the ONNX Runtime 1.18/1.19 sources
# (PerformanceRunner::Run's summary, then DumpToFile's statistics under -s). The latencies are
# seconds printed as a C++ stream prints a double, so small ones take exponent form.
CURRENT_FORMAT = """\
Session creation time cost: 0.0412765 s
First inference time cost: 1 ms
Total inference time cost: 1.87651 s
Total inference requests: 21406
Average inference time cost: 0.0876628 ms
Total inference run time: 2.00002 s
Number of inferences per second: 10703
Avg CPU usage: 98 %
Peak working set size: 38211584 bytes
Min Latency: 8.1022e-05 s
Max Latency: 0.00124301 s
P50 Latency: 8.6112e-05 s
P90 Latency: 9.3801e-05 s
P95 Latency: 9.8711e-05 s
P99 Latency: 0.000131821 s
P999 Latency: 0.000402113 s
"""

# The older sample the tool's README shows (onnxruntime/test/perftest/README.md).
README_FORMAT = """\
Total time cost:58.8053
Total iterations:1000
Average time cost:58.8053 ms
Total run time:58.8102 s
Min Latency is 0.0559777sec
Max Latency is 0.0623472sec
P50 Latency is 0.0587108sec
P90 Latency is 0.0599845sec
"""


def test_parse_current_format_seconds_in_exponent_form():
    result = parse_perf_test(CURRENT_FORMAT)
    assert result.p50_ms == pytest.approx(0.086112)
    assert result.average_ms == pytest.approx(0.0876628)
    assert result.iterations == 21406


def test_parse_readme_format():
    result = parse_perf_test(README_FORMAT)
    assert result.p50_ms == pytest.approx(58.7108)
    assert result.average_ms == pytest.approx(58.8053)
    assert result.iterations == 1000


def test_parse_without_statistics_says_so():
    without = "\n".join(line for line in CURRENT_FORMAT.splitlines() if "Latency" not in line)
    with pytest.raises(ValueError, match="no 'P50 Latency' line; was it run with -s"):
        parse_perf_test(without)


def _executable(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o755)
    return path


def test_found_by_flag_then_env_then_path(tmp_path):
    (tmp_path / "flag").mkdir()
    flag = _executable(tmp_path / "flag" / TOOL, "#!/bin/sh\n")
    env = _executable(tmp_path / "env_tool", "#!/bin/sh\n")
    (tmp_path / "bin").mkdir()
    on_path = _executable(tmp_path / "bin" / TOOL, "#!/bin/sh\n")
    environ = {ENV_VAR: str(env), "PATH": str(tmp_path / "bin")}
    assert find_perf_test(str(flag), environ) == flag.resolve()
    assert find_perf_test(None, environ) == env.resolve()
    assert find_perf_test(None, {"PATH": str(tmp_path / "bin")}) == on_path.resolve()


def test_a_given_path_that_is_not_executable_is_an_error(tmp_path):
    plain = tmp_path / "perf_test.txt"
    plain.write_text("not a program")
    (tmp_path / "bin").mkdir()
    _executable(tmp_path / "bin" / TOOL, "#!/bin/sh\n")  # never reached: the given path wins
    with pytest.raises(CannotMeasure, match=r"--perf-test '.*perf_test.txt' is not an executable"):
        find_perf_test(str(plain), {"PATH": str(tmp_path / "bin")})
    with pytest.raises(CannotMeasure, match=rf"\${ENV_VAR} '.*missing' is not an executable"):
        find_perf_test(None, {ENV_VAR: str(tmp_path / "missing"), "PATH": str(tmp_path / "bin")})


def test_absent_tool_says_how_to_get_it(tmp_path):
    with pytest.raises(CannotMeasure) as info:
        find_perf_test(None, {"PATH": str(tmp_path)})
    message = str(info.value)
    assert message.startswith(f"{TOOL} not found (--perf-test PATH, ${ENV_VAR}, PATH)")
    assert f"v{onnxruntime_runtime.version()}" in message
    assert "./build.sh --config Release --build_shared_lib" in message
    assert f"build/Linux/Release/{TOOL}" in message and "\n" not in message


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory) -> Path:
    """A small conv net with a free batch axis, as ONNX (built with onnx.helper, no exporter)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)
               for name, shape in (("w1", (8, 3, 3, 3)), ("w2", (16, 8, 3, 3)),
                                   ("fc", (16, 10)))]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], strides=[2, 2], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], strides=[2, 2], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c2"], ["r2"]),
             helper.make_node("GlobalAveragePool", ["r2"], ["p"]),
             helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("MatMul", ["f", "fc"], ["logits"])]
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])], weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path = tmp_path_factory.mktemp("fidelity_ort") / "net.onnx"
    onnx.save(model, str(path))
    return path


def test_the_tool_gets_the_settings_our_session_runs_with(tiny_onnx):
    flags = perf_test_flags(onnxruntime_runtime.session_settings(2))
    assert flags == ["-e", "cpu", "-x", "2", "-y", "1", "-o", "99"]  # sequential: no -P
    session = onnxruntime_runtime.load(tiny_onnx, "cpu", threads=2)
    ours = applied_settings(session)  # read back from the live session's options
    assert ours == flag_settings(flags)
    assert ours["intra_op_num_threads"] == "2" and ours["graph_optimization_level"] == "99"
    # threads=None lets ONNX Runtime choose in both tools
    auto = onnxruntime_runtime.load(tiny_onnx, "cpu", threads=None)
    assert applied_settings(auto) == flag_settings(perf_test_flags(
        onnxruntime_runtime.session_settings(None)))
    assert applied_settings(auto)["intra_op_num_threads"] == "0"


def test_every_setting_reaches_the_flags():
    other = onnxruntime_runtime.SessionSettings(
        intra_op_threads=3, inter_op_threads=2, sequential=False,
        optimization_level="ORT_ENABLE_BASIC", cpu_mem_arena=False, mem_pattern=False)
    flags = perf_test_flags(other)
    assert flags == ["-e", "cpu", "-x", "3", "-y", "2", "-o", "1", "-P", "-A", "-M"]
    assert flag_settings(flags) == {
        "provider": "cpu", "intra_op_num_threads": "3", "inter_op_num_threads": "2",
        "execution_mode": "parallel", "graph_optimization_level": "1",
        "enable_cpu_mem_arena": "False", "enable_mem_pattern": "False"}
    # an -o left out is the tool's version-dependent default, never taken as ours
    assert flag_settings(["-e", "cpu"])["graph_optimization_level"] == "default"


def test_test_case_folder_carries_external_weights_and_our_tensor(tiny_onnx, tmp_path):
    """perf_test opens the linked model in the scratch folder; exports keep weights in an
    external .data file that ONNX Runtime looks for beside that path."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, numpy_helper

    from runtimes.fidelity_onnxruntime import write_test_case

    source = tmp_path / "export" / "model_fp32.onnx"
    source.parent.mkdir()
    onnx.save(onnx.load(str(tiny_onnx)), str(source), save_as_external_data=True,
              all_tensors_to_one_file=True, location="model_fp32.onnx.data", size_threshold=0)
    batch = np.random.default_rng(2).standard_normal((1, 3, 32, 32)).astype(np.float32)
    case = write_test_case(source, batch, "x", tmp_path / "case")
    assert sorted(p.name for p in case.parent.iterdir()) == [
        "model.onnx", "model_fp32.onnx.data", "test_data_set_0"]
    stored = TensorProto()
    stored.ParseFromString((case.parent / "test_data_set_0" / "input_0.pb").read_bytes())
    assert stored.name == "x"
    np.testing.assert_array_equal(numpy_helper.to_array(stored), batch)
    linked = ort.InferenceSession(str(case), providers=["CPUExecutionProvider"])
    original = ort.InferenceSession(str(source), providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(linked.run(None, {"x": batch})[0],
                                  original.run(None, {"x": batch})[0])


def _fidelity(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "runtimes.fidelity", *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=180, env=env)


def _env_without_tool(tmp_path: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k != ENV_VAR}
    env["PATH"] = str(Path(sys.executable).parent)  # python only, no onnxruntime_perf_test
    return env


def test_command_without_the_tool_exits_2_with_one_line(tiny_onnx, tmp_path):
    done = _fidelity(str(tiny_onnx), "--shape", "1,3,32,32", env=_env_without_tool(tmp_path))
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{TOOL} not found"), done.stderr
    assert "--build_shared_lib" in lines[0]


def test_command_refuses_precision_for_onnx(tiny_onnx, tmp_path):
    done = _fidelity(str(tiny_onnx), "--precision", "bf16", env=_env_without_tool(tmp_path))
    assert done.returncode == 2 and "--precision applies to OpenVINO IR only" in done.stderr


# A stand-in for onnxruntime_perf_test, NOT the real tool: an executable that records its
# arguments and the input file it was handed, then prints CURRENT_FORMAT with a P50 of 5 s.
FAKE = """#!{python}
import json, shutil, sys
from pathlib import Path
model = Path(sys.argv[-2])
record = Path({record!r})
calls = json.loads(record.read_text()) if record.exists() else []
calls.append(sys.argv[1:])
record.write_text(json.dumps(calls))
shutil.copy(model.parent / "test_data_set_0" / "input_0.pb", record.with_name("seen_input.pb"))
sys.stdout.write({output!r})
"""


def test_command_plumbing_with_a_stand_in_tool(tiny_onnx, tmp_path):
    from onnx import TensorProto, numpy_helper

    record = tmp_path / "calls.json"
    output = CURRENT_FORMAT.replace("P50 Latency: 8.6112e-05 s", "P50 Latency: 5 s")
    fake = _executable(tmp_path / "fake_perf_test", FAKE.format(
        python=sys.executable, record=str(record), output=output))
    images = np.random.default_rng(1).standard_normal((4, 3, 32, 32)).astype(np.float32)
    np.save(tmp_path / "x.npy", images)
    done = _fidelity(str(tiny_onnx), "--perf-test", str(fake), "--inputs", str(tmp_path / "x.npy"),
                     "--threads", "1", "--seconds", "2", "--rounds", "2",
                     env=_env_without_tool(tmp_path))
    # Our few-microsecond median against a claimed 5 s: far outside tolerance, so exit 1.
    assert done.returncode == 1, done.stdout + done.stderr
    calls = json.loads(record.read_text())
    assert len(calls) == 2
    for argv in calls:
        assert argv[:8] == ["-e", "cpu", "-x", "1", "-y", "1", "-o", "99"]
        assert argv[8:13] == ["-m", "duration", "-t", "1", "-s"]
        assert argv[-2].endswith("model.onnx") and argv[-1].endswith("perf_test_results.txt")
    seen = TensorProto()
    seen.ParseFromString((tmp_path / "seen_input.pb").read_bytes())
    assert seen.name == "x"
    np.testing.assert_array_equal(numpy_helper.to_array(seen), images[:1])  # the same tensor
    out = done.stdout
    assert "input: (1, 3, 32, 32)" in out and "threads: 1" in out
    row = r"round \d\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\n"  # no inner column for ONNX Runtime
    rounds = [tuple(map(float, m)) for m in re.findall(row, out)]
    assert len(rounds) == 2 and all(theirs == 5000.0 for theirs, _, _ in rounds)
    for theirs, ours, ratio in rounds:
        assert 0 < ours < 1000 and ratio == pytest.approx(ours / theirs, abs=1e-3)
    for key, value in (("intra_op_num_threads", "1"), ("inter_op_num_threads", "1"),
                       ("execution_mode", "sequential"), ("graph_optimization_level", "99")):
        assert re.search(rf"{key}\s+{value}\s+{value}\n", out), key
    assert "ratio (ours / onnxruntime_perf_test median): 0.000" in out
    assert "medians disagree by 100.0%" in done.stderr


def _real_perf_test() -> Path | None:
    try:
        return find_perf_test()
    except CannotMeasure:
        return None


@pytest.mark.skipif(_real_perf_test() is None,
                    reason=f"no real {TOOL} here (not in the onnxruntime wheel; set ${ENV_VAR} "
                           f"or put it on PATH)")
def test_fidelity_against_real_perf_test(tiny_onnx, tmp_path):
    done = _fidelity(str(tiny_onnx), "--perf-test", str(_real_perf_test()), "--shape",
                     "1,3,32,32", "--threads", "1", "--seconds", "2", "--rounds", "2")
    # 0 within tolerance, 1 outside: this model takes microseconds, so the Python call around
    # run() alone can exceed 10%; either way both medians must be real and settings equal.
    assert done.returncode in (0, 1), done.stdout + done.stderr
    rounds = re.findall(r"round \d\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\n", done.stdout)
    assert len(rounds) == 2 and all(float(theirs) > 0 for theirs, _, _ in rounds)
    assert "settings differ" not in done.stderr
    ratio = float(re.search(r"median\): ([\d.]+)", done.stdout).group(1))
    assert (done.returncode == 0) == (abs(ratio - 1) <= 0.10)
