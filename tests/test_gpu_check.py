"""The GPU check's parts that need no GPU: the refusal on a CPU machine, the bounded child
processes and the sweep, the GPU config, the CPU record and the selection of the GPU tests.
The wheels and the summary have their own files (test_gpu_wheels.py, test_gpu_summary.py)."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / ".ci"))
import gpu_check  # noqa: E402
import gpu_proc  # noqa: E402
import gpu_summary  # noqa: E402

from pipeline.stage_order import STAGE_NAMES  # noqa: E402


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
