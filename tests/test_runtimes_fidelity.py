"""The benchmark_app fidelity command: output parsing, and one real run against benchmark_app."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from runtimes.fidelity_openvino import benchmark_app_command, parse_benchmark_app

ROOT = Path(__file__).resolve().parents[1]

# The end of a real benchmark_app 2026.4 run (batch 1, latency hint, 1 thread, bf16 CPU).
MICROSECONDS_RUN = """\
[Step 8/11] Querying optimal runtime parameters
[ INFO ] Model:
[ INFO ]   NETWORK_NAME: onnx_Frontend_IR
[ INFO ]   OPTIMAL_NUMBER_OF_INFER_REQUESTS: 1
[ INFO ]   NUM_STREAMS: 1
[ INFO ]   INFERENCE_NUM_THREADS: 1
[ INFO ]   PERF_COUNT: NO
[ INFO ]   INFERENCE_PRECISION_HINT: <Type: 'bfloat16'>
[ INFO ]   PERFORMANCE_HINT: LATENCY
[ INFO ]   EXECUTION_MODE_HINT: ExecutionMode.PERFORMANCE
[ INFO ]   ENABLE_CPU_PINNING: True
[ INFO ]   EXECUTION_DEVICES: ['CPU']
[Step 9/11] Creating infer requests and preparing input tensors
[Step 10/11] Measuring performance (Start inference synchronously, limits: 1000 ms duration)
[ INFO ] First inference took 1.56 ms
[Step 11/11] Dumping statistics report
[ INFO ] Execution Devices:['CPU']
[ INFO ] Count:            6998 iterations
[ INFO ] Duration:         1000.12 ms
[ INFO ] Latency:
[ INFO ]    Median:        134.73 us
[ INFO ]    Average:       137.26 us
[ INFO ]    Min:           131.79 us
[ INFO ]    Max:           3840.78 us
[ INFO ] Throughput:   6997.15 FPS
"""


def test_parse_microseconds_and_properties():
    result = parse_benchmark_app(MICROSECONDS_RUN)
    assert result.latency_ms == pytest.approx(
        {"median": 0.13473, "average": 0.13726, "min": 0.13179, "max": 3.84078})
    assert result.iterations == 6998
    assert result.properties["NUM_STREAMS"] == "1"
    assert result.properties["INFERENCE_NUM_THREADS"] == "1"
    assert result.properties["INFERENCE_PRECISION_HINT"] == "bf16"
    assert result.properties["PERFORMANCE_HINT"] == "LATENCY"
    assert result.properties["EXECUTION_MODE_HINT"] == "PERFORMANCE"


def test_parse_milliseconds_and_missing_median():
    text = MICROSECONDS_RUN.replace("134.73 us", "2.53 ms").replace("137.26 us", "2.57 ms")
    assert parse_benchmark_app(text).latency_ms["median"] == pytest.approx(2.53)
    with pytest.raises(ValueError, match="no 'Median:'"):
        parse_benchmark_app(text.replace("Median:", "Mode:"))


def test_benchmark_app_is_found():
    cmd = benchmark_app_command()
    assert cmd[0].endswith("benchmark_app") or "openvino.tools.benchmark.main" in cmd[-1]


@pytest.fixture(scope="module")
def tiny_ir(tmp_path_factory):
    """A small conv net with a dynamic batch axis, as an OpenVINO IR."""
    import openvino as ov
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, 2, 1), torch.nn.ReLU(), torch.nn.Conv2d(16, 32, 3, 2, 1),
        torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
        torch.nn.Linear(32, 10)).eval()
    out = tmp_path_factory.mktemp("fidelity")
    onnx_path = out / "net.onnx"
    torch.onnx.export(model, (torch.randn(2, 3, 64, 64),), str(onnx_path), dynamo=True,
                      dynamic_shapes=({0: torch.export.Dim("batch")},), verbose=False)
    xml = out / "net.xml"
    ov.save_model(ov.convert_model(str(onnx_path)), str(xml))
    return xml


def _fidelity(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "runtimes.fidelity", *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)


def test_fidelity_against_benchmark_app(tiny_ir, tmp_path):
    inputs = tmp_path / "x.npy"
    np.save(inputs, np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32))
    done = _fidelity(str(tiny_ir), "--threads", "1", "--seconds", "2", "--rounds", "2",
                     "--inputs", str(inputs), "--precision", "f32")
    # 0 within tolerance, 1 outside it: this model takes tens of microseconds, so the Python
    # call around infer() alone can exceed 10%; the command then says so.
    assert done.returncode in (0, 1), done.stdout + done.stderr
    out = done.stdout
    assert "input: (1, 3, 64, 64)" in out and "rounds: 2" in out
    number = r"\s+([\d.]+)"
    rounds = [tuple(map(float, m)) for m in re.findall(r"round \d" + number * 4, out)]
    assert len(rounds) == 2
    for theirs, ours, request, ratio in rounds:
        assert ratio == pytest.approx(ours / theirs, rel=0.03)  # printed rounded
        assert request <= ours  # OpenVINO's timer sits inside our timed call
    ratio = float(re.search(r"ratio \(ours / benchmark_app median\): ([\d.]+)", out).group(1))
    assert ratio == pytest.approx(float(np.median([r[3] for r in rounds])), abs=1e-3)
    for key, value in (("NUM_STREAMS", "1"), ("INFERENCE_NUM_THREADS", "1"),
                       ("INFERENCE_PRECISION_HINT", "f32"), ("PERFORMANCE_HINT", "LATENCY")):
        assert re.search(rf"{key}\s+{value}\s+{value}\n", out), key
    assert (done.returncode == 0) == (abs(ratio - 1) <= 0.10)


def test_fidelity_needs_a_shape_for_dynamic_models(tiny_ir):
    done = _fidelity(str(tiny_ir), "--seconds", "1")
    assert done.returncode == 2
    assert "pass --shape 1,3,H,W or --inputs file.npy" in done.stderr


def test_fidelity_missing_model(tmp_path):
    done = _fidelity(str(tmp_path / "nope.xml"))
    assert done.returncode == 2 and "nope.xml' does not exist" in done.stderr


def test_report_takes_the_median_of_per_round_ratios_and_refuses_differing_settings(capsys):
    from runtimes.fidelity_rounds import Comparison, Round, median_ratio, report

    # Load that doubles in the middle round slows both tools alike: every round agrees, while
    # the ratio of the medians (4.0 / 2.0 = 2.0) would not.
    rounds = [Round(1.0, 1.05), Round(4.0, 4.2), Round(2.0, 2.1)]
    assert median_ratio(rounds) == pytest.approx(1.05)
    agreed = Comparison("tool", "m.onnx", (1, 3, 8, 8), 2, rounds, {"threads": ("2", "2")})
    assert report(agreed, 0.10) == 0
    assert report(agreed, 0.04) == 1
    assert "medians disagree by 5.0% (> 4%)" in capsys.readouterr().err
    differing = Comparison("tool", "m.onnx", (1, 3, 8, 8), 2, rounds, {"threads": ("0", "2")})
    assert report(differing, 0.10) == 1
    assert "settings differ: threads" in capsys.readouterr().err
